"""The exporters on the target host: internal address only, each sees its service,
credentials kept out of reach, the upstream collector turns /upstream_status into metrics."""

import pytest
from conftest import get, internal_ip, listeners

testinfra_hosts = ["mon-target"]

EXPORTERS = {
    # port: (unit, a line its metrics must contain)
    9100: ("prometheus-node-exporter", "koinonia_lb_upstream_status_up 1"),
    9113: ("prometheus-nginx-exporter", "nginx_up 1"),
    9121: ("prometheus-redis-exporter", "redis_up 1"),
    9127: ("koinonia-pgbouncer-exporter", "pgbouncer_up 1.0"),
    9187: ("prometheus-postgres-exporter", "pg_up 1"),
}


@pytest.mark.parametrize("port", sorted(EXPORTERS))
def test_exporter_runs_and_listens_on_the_internal_address_only(host, port):
    unit, _ = EXPORTERS[port]
    assert host.service(unit).is_running
    assert host.service(unit).is_enabled
    assert listeners(host, port) == [f"{internal_ip(host)}:{port}"]


@pytest.mark.parametrize("port", sorted(EXPORTERS))
def test_exporter_sees_its_service(host, port):
    _, expected = EXPORTERS[port]
    lines = get(host, f"http://{internal_ip(host)}:{port}/metrics").splitlines()
    assert expected in lines


def test_redis_exporter_reads_maxmemory_with_its_acl_user(host):
    text = get(host, f"http://{internal_ip(host)}:9121/metrics")
    assert "redis_memory_max_bytes 6.7108864e+07" in text.splitlines()


def test_pgbouncer_exporter_reports_pool_size_and_client_limit(host):
    lines = get(host, f"http://{internal_ip(host)}:9127/metrics").splitlines()
    assert 'pgbouncer_databases_pool_size{database="koinonia"} 20.0' in lines
    assert "pgbouncer_config_max_client_connections 100.0" in lines


@pytest.mark.parametrize(
    "path",
    [
        "/etc/default/prometheus-redis-exporter",
        "/etc/default/prometheus-postgres-exporter",
        "/etc/default/koinonia-pgbouncer-exporter",
    ],
)
def test_credential_files_are_not_world_readable(host, path):
    f = host.file(path)
    # root, or prometheus where the package's postinst insists (postgres exporter).
    assert f.user in ("root", "prometheus")
    assert f.mode == 0o640
    assert "Managed by Ansible" in f.content_string


def test_passwords_are_not_on_command_lines(host):
    assert "montest-" not in host.check_output("ps -eo args")


def test_upstream_collector_reports_the_down_peer(host):
    lines = get(host, f"http://{internal_ip(host)}:9100/metrics").splitlines()
    peer = (
        'koinonia_lb_upstream_peer_up{{address="10.9.0.{}:3000",peer="app{}",'
        'upstream="koinonia_app"}}'
    )
    assert peer.format(1, 1) + " 1" in lines
    assert peer.format(2, 2) + " 0" in lines
