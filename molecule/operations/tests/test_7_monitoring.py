"""Prometheus on op-mon scrapes every exporter of the deployed stack: the data roles created
the exporters' users (Redis ACL, pg_monitor role, PgBouncer stats user), the firewall lets
only the monitoring host in, and every target is up."""

import json

from conftest import APPS, DB, LB, PLATFORMS, REDIS, docker_host
from stackclient import wait_for

MON = next(p["name"] for p in PLATFORMS if "monitoring" in p["groups"])
EXPECTED = (
    {
        ("prometheus", MON),
        ("alertmanager", MON),
        ("nginx", LB),
        ("pgbouncer", DB),
        ("postgres", DB),
        ("redis", REDIS),
    }
    | {("node", p["name"]) for p in PLATFORMS}
    | {("koinonia-app", app) for app in APPS}
    | {("koinonia-worker", app) for app in APPS}
)


def targets(mon) -> dict[tuple[str, str], dict]:
    ip = mon.check_output("ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'")
    body = json.loads(
        mon.check_output(f"curl -s --max-time 10 'http://{ip}:9090/api/v1/targets?state=active'")
    )
    return {(t["labels"]["job"], t["labels"]["instance"]): t for t in body["data"]["activeTargets"]}


def test_7_prometheus_scrapes_every_exporter_of_the_stack_and_all_are_up():
    mon = docker_host(MON)

    def all_up():
        found = targets(mon)
        return set(found) == EXPECTED and all(t["health"] == "up" for t in found.values())

    try:
        wait_for(all_up, 120, step=3, what="every target up")
    finally:
        found = targets(mon)
        print({k: (t["health"], t["lastError"]) for k, t in sorted(found.items())})
    assert set(found) == EXPECTED


def test_7_alert_rules_load_and_validate_on_the_server():
    mon = docker_host(MON)
    out = mon.check_output("promtool check config /etc/prometheus/prometheus.yml 2>&1")
    assert "SUCCESS" in out and "FAILED" not in out, out
