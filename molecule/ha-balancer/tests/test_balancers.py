"""Two balancers, one virtual address: configured as the role promises, and answering."""

from conftest import (
    BALANCERS,
    OTHER,
    PREFERRED,
    VIRTUAL_ADDRESS,
    answers_over_tls,
    config_test_command,
    docker,
    holders,
    vrrp_state_metric,
)


def test_keepalived_runs_enabled_on_both_balancers():
    for name in BALANCERS:
        assert (
            docker("exec", name, "systemctl", "is-active", "keepalived", check=False).stdout.strip()
            == "active"
        )
        assert (
            docker(
                "exec", name, "systemctl", "is-enabled", "keepalived", check=False
            ).stdout.strip()
            == "enabled"
        )


def test_the_written_configuration_passes_the_roles_config_test():
    for name in BALANCERS:
        result = docker(
            "exec", name, *config_test_command(name, "/etc/keepalived/keepalived.conf"), check=False
        )
        assert result.returncode == 0, result.stderr


def test_the_roles_config_test_refuses_a_wrong_value_with_keepalived_own_message():
    # On Debian 12 the check runs with SIGTERM ignored: it must still give a verdict.
    for name in BALANCERS:
        docker(
            "exec",
            name,
            "sh",
            "-c",
            "sed 's/^    priority .*/    priority 999/' /etc/keepalived/keepalived.conf"
            " > /root/keepalived-wrong-priority.conf",
        )
        result = docker(
            "exec",
            name,
            *config_test_command(name, "/root/keepalived-wrong-priority.conf"),
            check=False,
        )
        docker("exec", name, "rm", "/root/keepalived-wrong-priority.conf")
        # 143: killed by SIGTERM, no verdict.
        assert result.returncode not in (0, 143), (result.returncode, result.stderr)
        assert "999" in result.stdout + result.stderr


def test_adverts_go_unicast_to_the_other_balancer():
    for name, peer in ((BALANCERS[0], BALANCERS[1]), (BALANCERS[1], BALANCERS[0])):
        conf = docker("exec", name, "cat", "/etc/keepalived/keepalived.conf").stdout
        peer_ip = docker(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", peer
        ).stdout.strip()
        own_ip = docker(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name
        ).stdout.strip()
        assert f"unicast_src_ip {own_ip}" in conf
        peers = conf.split("unicast_peer {")[1].split("}")[0].split()
        assert peers == [peer_ip]


def test_check_scripts_do_not_run_as_root():
    conf = docker("exec", PREFERRED, "cat", "/etc/keepalived/keepalived.conf").stdout
    assert "enable_script_security" in conf
    assert "script_user keepalived_script" in conf
    assert docker("exec", PREFERRED, "id", "-u", "keepalived_script").stdout.strip() != "0"


def test_the_preferred_balancer_alone_holds_the_virtual_address(healthy):
    assert holders() == [PREFERRED]


def test_the_virtual_address_answers_over_tls_from_the_client(healthy, client):
    assert answers_over_tls(client) == "200 HTTPS", VIRTUAL_ADDRESS
    plain = client.run(
        "curl --silent --max-time 3 --output /dev/null --write-out '%%{http_code}' http://%s/",
        VIRTUAL_ADDRESS,
    )
    assert plain.stdout.strip() == "301"


def test_each_balancer_reports_its_vrrp_state_for_node_exporter(healthy):
    # 2 master, 1 backup (roles/monitoring's LoadBalancerVirtualAddressNotHeldOnce reads them).
    assert vrrp_state_metric(PREFERRED) == 2
    assert vrrp_state_metric(OTHER) == 1
