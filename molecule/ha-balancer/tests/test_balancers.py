"""Two balancers, one virtual address: configured as the role promises, and answering."""

import os
import subprocess

from conftest import (
    BALANCERS,
    OTHER,
    PREFERRED,
    ROLE_DIR,
    SCENARIO_DIR,
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


def test_a_wrong_value_fails_the_play_with_keepalived_own_message_and_nothing_changes():
    # 300 s passes the role's own checks; keepalived allows at most 255. The role's check runs
    # on Ansible's candidate file, which keepalived would skip (and pass) were it executable.
    before = docker("exec", OTHER, "sha256sum", "/etc/keepalived/keepalived.conf").stdout
    pid = docker("exec", OTHER, "systemctl", "show", "-P", "MainPID", "keepalived").stdout
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROLE_DIR.parent), ANSIBLE_NOCOLOR="1")
    run = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            str(SCENARIO_DIR / "wrong_value.yml"),
            "--tags",
            "keepalived_config",
            "-e",
            "keepalived_advert_interval=300",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0, output[-3000:]
    assert "Advert interval (300) not valid" in output, output[-3000:]
    assert docker("exec", OTHER, "sha256sum", "/etc/keepalived/keepalived.conf").stdout == before
    assert docker("exec", OTHER, "systemctl", "show", "-P", "MainPID", "keepalived").stdout == pid


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
