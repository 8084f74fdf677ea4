"""The monitoring role: exporters on internal addresses only, Prometheus scraping every
target, the alert rules loaded, and an alert raised end to end from a real series."""

import json
import time

import pytest

testinfra_hosts = ["mon-prom", "mon-target"]

EXPORTERS = {
    # port: (unit, what its metrics must contain on mon-target)
    9100: ("prometheus-node-exporter", "node_textfile_mtime_seconds"),
    9113: ("prometheus-nginx-exporter", "nginx_up 1"),
    9121: ("prometheus-redis-exporter", "redis_up 1"),
    9127: ("koinonia-pgbouncer-exporter", "pgbouncer_up 1.0"),
    9187: ("prometheus-postgres-exporter", "pg_up 1"),
}
ALERTS = {
    "MonitoringTargetDown",
    "ExporterCannotReachService",
    "PgBouncerPoolNearCapacity",
    "PgBouncerClientsWaiting",
    "PgBouncerClientConnectionsNearLimit",
    "DatabaseLatencyHigh",
    "LoadBalancerUpstreamDown",
    "LoadBalancerNoUpstreamUp",
    "LoadBalancerUpstreamStatusUnknown",
    "KoinoniaHttp5xxRateHigh",
    "KoinoniaCronCycleRunTwice",
    "KoinoniaQueueJobsFailing",
    "RedisMemoryNearMaxmemory",
    "RedisMemoryAtMaxmemory",
}


def internal_ip(host):
    return host.check_output("ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'")


def get(host, url):
    """GET url from inside the container (python3 is in the base image; curl is not)."""
    return host.check_output(
        "python3 -c 'import sys, urllib.request; "
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' %s",
        url,
    )


def api(host, path):
    body = json.loads(get(host, f"http://{internal_ip(host)}:9090{path}"))
    assert body["status"] == "success", body
    return body["data"]


def listeners(host, port):
    out = host.check_output("ss -Hltn 'sport = :%s'", str(port))
    return sorted(line.split()[3] for line in out.splitlines() if line.strip())


@pytest.mark.parametrize("port", sorted(EXPORTERS))
def test_exporter_runs_and_listens_on_the_internal_address_only(host, port):
    if host.backend.hostname != "mon-target":
        pytest.skip("exporters of the target")
    unit, _ = EXPORTERS[port]
    assert host.service(unit).is_running
    assert host.service(unit).is_enabled
    assert listeners(host, port) == [f"{internal_ip(host)}:{port}"]


@pytest.mark.parametrize("port", sorted(EXPORTERS))
def test_exporter_sees_its_service(host, port):
    if host.backend.hostname != "mon-target":
        pytest.skip("exporters of the target")
    _, expected = EXPORTERS[port]
    assert expected in get(host, f"http://{internal_ip(host)}:{port}/metrics").splitlines() or (
        expected in get(host, f"http://{internal_ip(host)}:{port}/metrics")
    )


@pytest.mark.parametrize(
    "path",
    [
        "/etc/default/prometheus-redis-exporter",
        "/etc/default/prometheus-postgres-exporter",
        "/etc/default/koinonia-pgbouncer-exporter",
    ],
)
def test_credential_files_are_not_world_readable(host, path):
    if host.backend.hostname != "mon-target":
        pytest.skip("exporters of the target")
    f = host.file(path)
    # root, or prometheus where the package's postinst insists (postgres exporter).
    assert f.user in ("root", "prometheus")
    assert f.mode == 0o640
    assert "Managed by Ansible" in f.content_string


def test_upstream_collector_reports_the_down_peer(host):
    if host.backend.hostname != "mon-target":
        pytest.skip("collector of the load balancer")
    text = get(host, f"http://{internal_ip(host)}:9100/metrics")
    assert 'koinonia_lb_upstream_peer_up{address="10.9.0.2:3000",peer="app2",upstream="koinonia_app"} 0' in text
    assert 'koinonia_lb_upstream_peer_up{address="10.9.0.1:3000",peer="app1",upstream="koinonia_app"} 1' in text
    assert "koinonia_lb_upstream_status_up 1" in text


def test_prometheus_listens_on_the_internal_address_only(host):
    if host.backend.hostname != "mon-prom":
        pytest.skip("the server")
    assert host.service("prometheus").is_running
    assert listeners(host, 9090) == [f"{internal_ip(host)}:9090"]


def test_prometheus_config_and_rules_validate(host):
    if host.backend.hostname != "mon-prom":
        pytest.skip("the server")
    out = host.check_output("promtool check config /etc/prometheus/prometheus.yml 2>&1")
    assert "SUCCESS" in out
    assert "Managed by Ansible" in host.file("/etc/prometheus/prometheus.yml").content_string


def test_every_target_is_scraped_and_up(host):
    if host.backend.hostname != "mon-prom":
        pytest.skip("the server")
    expected = {
        ("prometheus", "mon-prom"),
        ("node", "mon-prom"),
        ("node", "mon-target"),
        ("nginx", "mon-target"),
        ("pgbouncer", "mon-target"),
        ("postgres", "mon-target"),
        ("redis", "mon-target"),
        ("koinonia-app", "mon-target"),
    }
    deadline = time.time() + 60
    while True:
        targets = api(host, "/api/v1/targets?state=active")["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
        if set(health) == expected and set(health.values()) == {"up"} or time.time() > deadline:
            break
        time.sleep(3)
    assert set(health) == expected
    assert health == dict.fromkeys(expected, "up"), [t["lastError"] for t in targets]


def test_every_alert_rule_is_loaded(host):
    if host.backend.hostname != "mon-prom":
        pytest.skip("the server")
    groups = api(host, "/api/v1/rules?type=alert")["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert names == ALERTS
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"])


def test_down_upstream_raises_its_alert_end_to_end(host):
    """stand-in /upstream_status (app2 down) -> collector -> node exporter -> Prometheus -> rule."""
    if host.backend.hostname != "mon-prom":
        pytest.skip("the server")
    deadline = time.time() + 90
    while True:
        alerts = api(host, "/api/v1/alerts")["alerts"]
        down = [a for a in alerts if a["labels"]["alertname"] == "LoadBalancerUpstreamDown"]
        if any(a["state"] == "firing" for a in down) or time.time() > deadline:
            break
        time.sleep(5)
    assert [(a["labels"]["peer"], a["state"]) for a in down] == [("app2", "firing")]
    firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
    assert firing == {"LoadBalancerUpstreamDown"}, alerts
