"""The exporters on the target host: internal address only, each sees its service,
credentials kept out of reach, the upstream collector turns /upstream_status into metrics."""

import pytest
from conftest import get, internal_ip, listeners
from debian import debian_major
from prometheus_client.parser import text_string_to_metric_families

testinfra_hosts = ["mon-target"]

EXPORTERS = {
    # port: (unit, a metric that is 1 when the exporter reaches its service)
    9100: ("prometheus-node-exporter", "koinonia_lb_upstream_status_up"),
    9113: ("prometheus-nginx-exporter", "nginx_up"),
    9121: ("prometheus-redis-exporter", "redis_up"),
    9127: ("{pgbouncer}", "pgbouncer_up"),
    9187: ("prometheus-postgres-exporter", "pg_up"),
    9355: ("koinonia-redis-sentinel-exporter", "redis_sentinel_masters"),
}
# Debian 13 packages a PgBouncer exporter that works (the prometheus-community one); Debian
# 12's fails on its PgBouncer 1.18, so the role runs its own there.
PGBOUNCER_EXPORTER = {"12": "koinonia-pgbouncer-exporter", "13": "prometheus-pgbouncer-exporter"}


def exporter_unit(host, port):
    return EXPORTERS[port][0].format(pgbouncer=PGBOUNCER_EXPORTER[debian_major(host)])


def samples(host, port):
    """{(name, sorted label items): value} of an exporter's /metrics."""
    text = get(host, f"http://{internal_ip(host)}:{port}/metrics")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics, metric, **labels):
    """The value of the one sample of that metric whose labels include these."""
    found = [
        v
        for (n, items), v in metrics.items()
        if n == metric and labels.items() <= dict(items).items()
    ]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples"
    return found[0]


@pytest.mark.parametrize("port", sorted(EXPORTERS))
def test_exporter_runs_and_listens_on_the_internal_address_only(host, port):
    unit = exporter_unit(host, port)
    assert host.service(unit).is_running
    assert host.service(unit).is_enabled
    assert listeners(host, port) == [f"{internal_ip(host)}:{port}"]


@pytest.mark.parametrize("port", sorted(EXPORTERS))
def test_exporter_sees_its_service(host, port):
    assert value(samples(host, port), EXPORTERS[port][1]) == 1


def test_redis_exporter_reads_maxmemory_with_its_acl_user(host):
    text = get(host, f"http://{internal_ip(host)}:9121/metrics")
    assert "redis_memory_max_bytes 6.7108864e+07" in text.splitlines()


def test_pgbouncer_exporter_reports_what_the_alert_rules_read(host):
    # The PgBouncer series roles/monitoring/files/rules/pgbouncer.yml uses, by name (the
    # pools' appear once a client has used the pool: the stack scenarios see them).
    metrics = samples(host, 9127)
    assert value(metrics, "pgbouncer_databases_pool_size", name="koinonia") == 20
    assert value(metrics, "pgbouncer_config_max_client_connections") == 100
    assert value(metrics, "pgbouncer_used_clients") >= 1  # the exporter's own connection
    for metric in (
        "pgbouncer_stats_queries_duration_seconds_total",
        "pgbouncer_stats_queries_pooled_total",
    ):
        assert value(metrics, metric, database="pgbouncer") >= 0  # the exporter's own queries


@pytest.mark.parametrize(
    "path",
    [
        "/etc/default/prometheus-redis-exporter",
        "/etc/default/koinonia-redis-sentinel-exporter",
        "/etc/default/prometheus-postgres-exporter",
        "/etc/default/{pgbouncer}",
    ],
)
def test_credential_files_are_not_world_readable(host, path):
    f = host.file(path.format(pgbouncer=PGBOUNCER_EXPORTER[debian_major(host)]))
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
    assert 'koinonia_lb_upstream_panic{upstream="koinonia_app"} 0' in lines


def test_upstream_collector_reports_panic_routing(host):
    # The deployed collector, once, on a status page as the balancer shows it in panic
    # (test_lb_panic.py): no peer up, both still answering and in rotation.
    status = (
        '{"upstream": "koinonia_app", "peers_up": 0, "peers_total": 2, "panic": true,'
        ' "panic_since": 1765000000.5, "panic_when_all_down": true, "peers": ['
        '{"name": "app1", "address": "10.9.0.1:3000", "status": "down", "answering": true},'
        '{"name": "app2", "address": "10.9.0.2:3000", "status": "down", "answering": true}]}'
    )
    host.check_output("printf %%s %s > /tmp/panic-status.json", status)
    host.check_output(
        "/usr/local/lib/koinonia-monitoring/koinonia-upstream-status --once"
        " --url file:///tmp/panic-status.json --output /tmp/panic.prom"
    )
    lines = host.file("/tmp/panic.prom").content_string.splitlines()
    assert 'koinonia_lb_upstream_panic{upstream="koinonia_app"} 1' in lines
    assert 'koinonia_lb_upstream_peers_up{upstream="koinonia_app"} 0' in lines
