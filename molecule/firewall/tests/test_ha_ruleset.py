"""The HA tiers' rules as the role renders them for an HA-shaped inventory (render/ha.yml:
Patroni, etcd, HAProxy, a pgBackRest repository, replicated Redis, two balancers sharing a
virtual address), and none of them for the single-node topology (render/single.yml); Redis's
and Sentinel's rules follow the redis role's ports, TLS ones included (render/tls.yml: TLS
only); nft on fw-app accepts every rendered ruleset. test_firewall.py sends real packets
through some."""

import pathlib
import re

import pytest
import yaml
from rendering import run_render_playbook

testinfra_hosts = ["fw-app"]

RENDER_DIR = pathlib.Path(__file__).resolve().parent.parent / "render"
ADDRESSES = {
    "ha-lb1": "10.30.0.11",
    "ha-lb2": "10.30.0.12",
    "ha-app1": "10.30.1.11",
    "ha-app2": "10.30.1.12",
    "ha-db1": "10.30.2.11",
    "ha-db2": "10.30.2.12",
    "ha-witness": "10.30.2.13",
    "ha-redis1": "10.30.3.11",
    "ha-redis2": "10.30.3.12",
    "ha-redis3": "10.30.3.13",
    "ha-mon": "10.30.4.10",
}
ETCD = ("ha-db1", "ha-db2", "ha-witness")
PATRONI = ("ha-db1", "ha-db2")
APP_SERVERS = ("ha-app1", "ha-app2")
REDIS = ("ha-redis1", "ha-redis2", "ha-redis3")
BALANCERS = ("ha-lb1", "ha-lb2")


REDIS_ROLE_DEFAULTS = yaml.safe_load(
    (RENDER_DIR.parents[2] / "roles" / "redis" / "defaults" / "main.yml").read_text()
)
REDIS_PORT_VARIABLES = (
    "redis_port",
    "redis_tls_port",
    "redis_sentinel_port",
    "redis_sentinel_tls_port",
)
TLS_APP_SERVERS = ("tls-app1", "tls-app2")
TLS_REDIS = ("tls-redis1", "tls-redis2", "tls-redis3")
TLS_ADDRESSES = {
    "tls-app1": "10.40.1.11",
    "tls-app2": "10.40.1.12",
    "tls-redis1": "10.40.3.11",
    "tls-redis2": "10.40.3.12",
    "tls-redis3": "10.40.3.13",
}


def render(inventory, out_dir, **extra_vars):
    """{host: its koinonia.nft} as the role renders them for every host of `inventory`."""
    run_render_playbook(
        RENDER_DIR / "ruleset.yml",
        RENDER_DIR / f"{inventory}.yml",
        montest_out_dir=out_dir,
        **extra_vars,
    )
    return {path.stem: path.read_text() for path in pathlib.Path(out_dir).glob("*.nft")}


def sources(ruleset, match):
    """The source addresses every accept rule for `match` (e.g. "tcp dport 2379") lets in."""
    found = re.findall(
        r"^\s*ip6? saddr \{ ([^}]*) \} " + re.escape(match) + " accept", ruleset, re.M
    )
    return {address for line in found for address in line.split(", ")}


def addresses(*hosts):
    return {ADDRESSES[h] for h in hosts}


@pytest.fixture(scope="module")
def ha(tmp_path_factory):
    rulesets = render("ha", tmp_path_factory.mktemp("ha"))
    assert set(rulesets) == set(ADDRESSES)
    return rulesets


def test_etcd_client_port_takes_the_members_the_patroni_nodes_and_prometheus(ha):
    for member in ETCD:
        assert sources(ha[member], "tcp dport 2379") == addresses(*ETCD, *PATRONI, "ha-mon")


def test_etcd_peer_port_takes_the_members_only_and_is_closed_elsewhere(ha):
    for member in ETCD:
        assert sources(ha[member], "tcp dport 2380") == addresses(*ETCD)
    for other in set(ADDRESSES) - set(ETCD):
        assert "dport 2380" not in ha[other]
        assert "dport 2379" not in ha[other]


def test_patroni_rest_api_takes_haproxy_the_members_and_prometheus(ha):
    for node in PATRONI:
        assert sources(ha[node], "tcp dport 8008") == addresses("ha-witness", *PATRONI, "ha-mon")
    assert "dport 8008" not in ha["ha-witness"]


def test_postgresql_on_patroni_nodes_takes_only_the_patroni_nodes_and_haproxy(ha):
    # HAProxy's direct write port (the migrations) leads to the leader's PostgreSQL.
    for node in PATRONI:
        assert sources(ha[node], "tcp dport 5432") == addresses(*PATRONI, "ha-witness")


def test_pgbouncer_on_patroni_nodes_takes_the_app_servers_and_haproxy(ha):
    for node in PATRONI:
        assert sources(ha[node], "tcp dport 6432") == addresses(*APP_SERVERS, "ha-witness")


def test_haproxy_ports_take_the_app_servers(ha):
    assert sources(ha["ha-witness"], "tcp dport { 5000, 5001, 5002 }") == addresses(*APP_SERVERS)


def test_pgbackrest_tls_servers_take_the_database_nodes_and_the_repository(ha):
    assert sources(ha["ha-witness"], "tcp dport 8432") == addresses(*PATRONI)
    for node in PATRONI:
        assert sources(ha[node], "tcp dport 8432") == addresses("ha-witness")


def test_replicated_redis_opens_redis_and_sentinel_to_the_nodes_and_the_app_servers(ha):
    for node in REDIS:
        assert sources(ha[node], "tcp dport 6379") == addresses(*REDIS, *APP_SERVERS)
        assert sources(ha[node], "tcp dport 26379") == addresses(*REDIS, *APP_SERVERS)
        assert sources(ha[node], "tcp dport 9355") == addresses("ha-mon")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    rulesets = render("tls", tmp_path_factory.mktemp("tls"))
    assert set(rulesets) == {*TLS_ADDRESSES, "tls-mon"}
    return rulesets


def test_tls_only_redis_opens_its_tls_ports_and_none_of_the_dead_plain_ones(tls):
    for node in TLS_REDIS:
        # The app servers' rule and the replication rule (TLS: tls-replication) share 6380.
        assert sources(tls[node], "tcp dport 6380") == {
            TLS_ADDRESSES[h] for h in TLS_REDIS + TLS_APP_SERVERS
        }
        assert sources(tls[node], "tcp dport 26380") == {
            TLS_ADDRESSES[h] for h in TLS_REDIS + TLS_APP_SERVERS
        }
        assert sources(tls[node], "tcp dport 9355") == {"10.40.4.10"}
        assert "6379" not in tls[node], node
    for other in ("tls-app1", "tls-app2", "tls-mon"):
        assert "6380" not in tls[other], other


def test_redis_with_both_ports_lets_the_nodes_in_on_tls_only_and_the_app_servers_on_both(tmp_path):
    both = render("ha", tmp_path, redis_tls_port=6380, redis_sentinel_tls_port=26380)
    for node in REDIS:
        assert sources(both[node], "tcp dport { 6379, 6380 }") == addresses(*APP_SERVERS)
        assert sources(both[node], "tcp dport 6380") == addresses(*REDIS)
        assert sources(both[node], "tcp dport 6379") == set()
        assert sources(both[node], "tcp dport { 26379, 26380 }") == addresses(*REDIS, *APP_SERVERS)


def test_plain_text_rulesets_are_the_same_with_the_redis_roles_default_ports(ha, tmp_path):
    # The firewall's own fallbacks (a play without the redis role) and the redis role's
    # defaults give one ruleset, byte for byte.
    ports = {name: REDIS_ROLE_DEFAULTS[name] for name in REDIS_PORT_VARIABLES}
    assert render("ha", tmp_path, **ports) == ha


def assert_valid_for_nft(host, rulesets: dict[str, str], prefix: str) -> None:
    """Each ruleset written to the container and checked by its own nft (-c: parsed and
    validated against the kernel, nothing loaded)."""
    for name, ruleset in sorted(rulesets.items()):
        path = f"/tmp/{prefix}-{name}.nft"
        written = host.run("printf %%s %s > %s", ruleset, path)
        assert written.rc == 0, written.stderr
        checked = host.run("nft -c -f %s", path)
        assert checked.rc == 0, f"{name}: {checked.stderr}"


def test_every_rendered_tls_ruleset_is_valid_for_nft(host, tls):
    assert_valid_for_nft(host, tls, "tls")


def test_vrrp_is_accepted_only_between_the_balancers(ha):
    for balancer in BALANCERS:
        assert sources(ha[balancer], "meta l4proto 112") == addresses(*BALANCERS)
    for other in set(ADDRESSES) - set(BALANCERS):
        assert "l4proto 112" not in ha[other]


def test_every_rendered_ha_ruleset_is_valid_for_nft(host, ha):
    assert_valid_for_nft(host, ha, "ha")


def test_single_node_topology_gets_none_of_the_ha_rules(tmp_path):
    rulesets = render("single", tmp_path)
    assert set(rulesets) == {"lb-1", "backend-1", "backend-2", "db-1", "redis-1", "mon-1"}
    for name, ruleset in rulesets.items():
        for ha_match in ("2379", "2380", "8008", "8432", "26379", "9355", "5000", "l4proto 112"):
            assert ha_match not in ruleset, f"{name}: {ha_match}"
    assert sources(rulesets["redis-1"], "tcp dport 6379") == {"10.0.1.11", "10.0.1.12"}
    assert sources(rulesets["db-1"], "tcp dport 5432") == {"10.0.1.11", "10.0.1.12", "10.0.2.10"}
