"""The scrape jobs of the HA tiers appear exactly where the inventory has their hosts:
prometheus.yml as the role renders it for an HA-shaped inventory and for the single-node one
(render/), checked by promtool on the Prometheus host of this scenario."""

import pathlib

import pytest
import yaml
from rendering import run_render_playbook

testinfra_hosts = ["mon-prom"]

RENDER_DIR = pathlib.Path(__file__).resolve().parent.parent / "render"
SINGLE_NODE_JOBS = {
    "prometheus",
    "alertmanager",
    "node",
    "nginx",
    "pgbouncer",
    "postgres",
    "redis",
    "koinonia-app",
}


def render(inventory, tmp_path):
    """prometheus.yml rendered by the role's template for the monitoring host of `inventory`."""
    out = tmp_path / f"{inventory}-prometheus.yml"
    run_render_playbook(
        RENDER_DIR / "prometheus.yml", RENDER_DIR / f"{inventory}.yml", montest_rendered=out
    )
    return out.read_text()


def jobs(config_text):
    """{job name: [(target, instance)]} of a prometheus.yml."""
    config = yaml.safe_load(config_text)
    return {
        job["job_name"]: sorted(
            (target, static["labels"]["instance"])
            for static in job["static_configs"]
            for target in static["targets"]
        )
        for job in config["scrape_configs"]
    }


@pytest.fixture(scope="module")
def ha_config(tmp_path_factory):
    return render("ha", tmp_path_factory.mktemp("ha"))


def test_patroni_is_scraped_on_its_rest_api_on_every_database_node(ha_config):
    assert jobs(ha_config)["patroni"] == [
        ("10.20.2.11:8008", "ha-db1"),
        ("10.20.2.12:8008", "ha-db2"),
    ]


def test_etcd_is_scraped_on_its_client_port_on_every_member(ha_config):
    assert jobs(ha_config)["etcd"] == [
        ("10.20.2.11:2379", "ha-db1"),
        ("10.20.2.12:2379", "ha-db2"),
        ("10.20.2.13:2379", "ha-witness"),
    ]


def test_every_replicated_redis_node_has_its_redis_and_its_sentinel_scraped(ha_config):
    scraped = jobs(ha_config)
    nodes = [(f"10.20.3.1{n}", f"ha-redis{n}") for n in (1, 2, 3)]
    assert scraped["redis"] == [(f"{a}:9121", h) for a, h in nodes]
    assert scraped["redis-sentinel"] == [(f"{a}:9355", h) for a, h in nodes]


def test_ha_config_loads_every_rule_file_and_passes_promtool(host, ha_config):
    config = yaml.safe_load(ha_config)
    assert "/etc/prometheus/rules/koinonia-patroni.yml" in config["rule_files"]
    assert "/etc/prometheus/rules/koinonia-etcd.yml" in config["rule_files"]
    assert "/etc/prometheus/rules/koinonia-redis_sentinel.yml" in config["rule_files"]
    # On this scenario's Prometheus host, where the role installed the same rule files.
    path = "/tmp/ha-prometheus.yml"
    host.run("rm -f %s", path)
    written = host.run("printf %%s %s > %s", ha_config, path)
    assert written.rc == 0, written.stderr
    checked = host.run("promtool check config %s 2>&1", path)
    assert checked.rc == 0, checked.stdout
    assert "FAILED" not in checked.stdout


def test_single_node_inventory_gets_no_ha_job(tmp_path):
    scraped = jobs(render("single", tmp_path))
    assert set(scraped) == SINGLE_NODE_JOBS
    assert scraped["redis"] == [("10.0.3.10:9121", "redis-1")]


def test_this_scenarios_prometheus_scrapes_no_ha_job_but_the_sentinel(host):
    # mon-target is no Patroni node nor etcd member; its Redis has a Sentinel (prepare.yml).
    config = yaml.safe_load(host.file("/etc/prometheus/prometheus.yml").content_string)
    names = {job["job_name"] for job in config["scrape_configs"]}
    assert names == SINGLE_NODE_JOBS | {"redis-sentinel"}
