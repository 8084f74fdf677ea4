"""The Prometheus server: internal address only, validated configuration, every target up,
every alert rule loaded, and an alert raised end to end from a real series."""

import time

from conftest import api, internal_ip, listeners

testinfra_hosts = ["mon-prom"]

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
    "LoadBalancerPanicRouting",
    "LoadBalancerVirtualAddressNotHeldOnce",
    "LoadBalancerVrrpFault",
    "KoinoniaHttp5xxRateHigh",
    "KoinoniaCronCycleRunTwice",
    "KoinoniaQueueJobsFailing",
    "RedisMemoryNearMaxmemory",
    "RedisMemoryAtMaxmemory",
    "PatroniNoLeader",
    "PatroniLeaderLockMissing",
    "PatroniPostgresNotRunning",
    "PatroniReplicaLagging",
    "EtcdNoLeader",
    "EtcdMemberDown",
    "EtcdMajorityLost",
    "RedisMasterWithoutReplica",
    "RedisReplicaLinkDown",
    "RedisMoreThanOneMaster",
    "RedisSentinelNotMonitoring",
    "RedisSentinelMasterDown",
    "RedisSentinelsDisagreeOnMaster",
    "RedisSentinelPeerDown",
    "PgBackRestArchivingFailing",
    "PgBackRestBackupTooOld",
    "PgBackRestRepositoryUnreadable",
    "AlertmanagerNotificationsFailing",
    "PrometheusCannotNotifyAlertmanager",
}
TARGETS = {
    ("prometheus", "mon-prom"),
    ("alertmanager", "mon-prom"),
    ("node", "mon-prom"),
    ("node", "mon-target"),
    ("nginx", "mon-target"),
    ("pgbouncer", "mon-target"),
    ("postgres", "mon-target"),
    ("redis", "mon-target"),
    ("redis-sentinel", "mon-target"),
    ("koinonia-app", "mon-target"),
}


def test_prometheus_listens_on_the_internal_address_only(host):
    assert host.service("prometheus").is_running
    assert host.service("prometheus").is_enabled
    assert listeners(host, 9090) == [f"{internal_ip(host)}:9090"]


def test_prometheus_config_and_rules_validate(host):
    out = host.check_output("promtool check config /etc/prometheus/prometheus.yml 2>&1")
    assert "SUCCESS: /etc/prometheus/prometheus.yml is valid prometheus config file syntax" in out
    assert "FAILED" not in out
    assert "Managed by Ansible" in host.file("/etc/prometheus/prometheus.yml").content_string


def test_every_target_is_scraped_and_up(host):
    deadline = time.time() + 60
    while True:
        targets = api(host, "/api/v1/targets?state=active")["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
        if (set(health) == TARGETS and set(health.values()) == {"up"}) or time.time() > deadline:
            break
        time.sleep(3)
    assert set(health) == TARGETS
    assert health == dict.fromkeys(TARGETS, "up"), [t["lastError"] for t in targets]


def test_every_alert_rule_is_loaded(host):
    groups = api(host, "/api/v1/rules?type=alert")["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert names == ALERTS
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"])


def test_down_upstream_raises_its_alert_end_to_end(host):
    """canned /upstream_status (app2 down) -> collector -> node exporter -> Prometheus -> rule.
    Nothing else fires: every other rule sees healthy series."""
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
