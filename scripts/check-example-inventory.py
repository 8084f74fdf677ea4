#!/usr/bin/env python3
"""The example production inventory resolves to what each database topology needs.

`inventories/production` documents two topologies: the single node it deploys as written,
and the high-availability one commented at the end of `hosts.yml`. Nothing deploys the
example, so this renders both with Ansible (the real templating, the example vault) and
checks where the app, its migrations, PgBouncer, Patroni and HAProxy point. It also runs
`playbooks/check_topology.yml`, the first play of site.yml, against each, and against an
inventory naming both topologies, which it must refuse.

`inventories/local-ha` (`make up HA=1`) gets the same checks, and the app must find Redis
through every Sentinel; its containers' addresses and published ports (read by
scripts/up.sh) must stay in its subnet and on the host's loopback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "inventories" / "production"
LOCAL_HA = ROOT / "inventories" / "local-ha"
# Published in inventories/production/README.md on purpose: the vault holds example values.
EXAMPLE_VAULT_PASSWORD = "koinonia-example-vault-password"  # noqa: S105
HA_MARKER = "# --- High-availability database topology"

CHECKS = """
- name: Where the app servers point
  hosts: app_servers
  gather_facts: false
  tasks:
    - name: Check the app's database endpoints
      ansible.builtin.assert:
        that:
          - app_pgbouncer_host == expected.app_host
          - app_pgbouncer_port | int == expected.app_port
          - app_postgresql_host == expected.app_host
          - app_postgresql_port | int == expected.migration_port
        fail_msg: >-
          app -> {{ app_pgbouncer_host }}:{{ app_pgbouncer_port }}, migrations ->
          {{ app_postgresql_host }}:{{ app_postgresql_port }}; expected {{ expected }}
    - name: Check that the app asks every Redis node's Sentinel for the master
      ansible.builtin.assert:
        that: >-
          app_redis_sentinels | map('regex_replace', ':[0-9]+$', '') | sort
          == groups['redis'] | sort
        fail_msg: "Sentinels {{ app_redis_sentinels }}; the redis group {{ groups['redis'] }}"
      when: app_redis_sentinels | default([]) | length > 0
- name: Where PgBouncer points
  hosts: pgbouncer
  gather_facts: false
  tasks:
    - name: Check PgBouncer's server
      ansible.builtin.assert:
        that: pgbouncer_databases[0].host == expected.pgbouncer_server
        fail_msg: "PgBouncer -> {{ pgbouncer_databases[0].host }}; expected {{ expected }}"
- name: The Patroni nodes admit the HAProxy hosts for migrations
  hosts: patroni
  gather_facts: false
  tasks:
    - name: Check the direct client addresses
      ansible.builtin.assert:
        that: >-
          patroni_direct_client_addresses | sort == groups['haproxy']
          | map('extract', hostvars, expected.address_var) | map('regex_replace', '$', '/32') | sort
- name: HAProxy routes to every Patroni node
  hosts: haproxy
  gather_facts: false
  tasks:
    - name: Check HAProxy's servers
      ansible.builtin.assert:
        that: >-
          haproxy_postgresql_servers | map(attribute='address') | sort
          == groups['patroni'] | map('extract', hostvars, expected.address_var) | sort
"""


def ha_hosts(single: str) -> str:
    """hosts.yml with `databases` and its `pgbouncer` replaced by the commented HA block."""
    head, block = single.split(HA_MARKER)
    inventory = yaml.safe_load(head)
    children = inventory["all"]["children"]
    del children["databases"], children["pgbouncer"]
    # The block: prose, an empty comment line, then the groups as commented YAML.
    commented = block.splitlines()[1:]
    groups = commented[commented.index("    #") + 1 :]
    ha_groups = yaml.safe_load("\n".join(line.removeprefix("    # ") for line in groups))
    if not ha_groups or not {"etcd", "patroni", "pgbouncer", "haproxy"} <= set(ha_groups):
        sys.exit(f"hosts.yml: the commented HA block after {HA_MARKER!r} did not parse")
    children.update(ha_groups)
    return yaml.safe_dump(inventory)


def check_local_ha_containers() -> None:
    """What scripts/up.sh makes from inventories/local-ha: addresses and ports."""
    inventory = yaml.safe_load((LOCAL_HA / "hosts.yml").read_text())["all"]
    subnet = ipaddress.ip_network(inventory["vars"]["koinonia_local_subnet"])
    hosts: dict[str, dict] = {}

    def collect(group: dict) -> None:
        for name, hostvars in (group.get("hosts") or {}).items():
            hosts.setdefault(name, {}).update(hostvars or {})
        for child in (group.get("children") or {}).values():
            collect(child or {})

    collect(inventory)
    balancers = yaml.safe_load((LOCAL_HA / "group_vars" / "loadbalancers.yml").read_text())
    addresses = {name: hostvars.get("koinonia_local_address") for name, hostvars in hosts.items()}
    addresses["the virtual address"] = balancers["keepalived_virtual_address"]
    problems = [f"{name}: no address" for name, address in addresses.items() if not address]
    problems += [
        f"{name}: {address} is outside {subnet}"
        for name, address in addresses.items()
        if address and ipaddress.ip_address(address) not in subnet
    ]
    if len(set(addresses.values())) != len(addresses):
        problems.append(f"two hosts share an address: {addresses}")
    ports = [
        port
        for hostvars in hosts.values()
        for port in hostvars.get("koinonia_local_published_ports", [])
    ]
    problems += [f"{port}: beyond 127.0.0.1" for port in ports if not port.startswith("127.0.0.1:")]
    if len({port.split(":")[1] for port in ports}) != len(ports):
        problems.append(f"a host port is published twice: {ports}")
    if problems:
        sys.exit("inventories/local-ha: " + "; ".join(problems))
    print(f"local high availability: {len(hosts)} containers in {subnet}, ports {', '.join(ports)}")


def ansible_playbook(inventory: Path, playbook: Path, vault: Path, extra: str) -> str:
    result = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            str(inventory),
            "--vault-password-file",
            str(vault),
            "-e",
            extra,
            str(playbook),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "0"},
    )
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-3000:] + result.stderr[-2000:])
    return result.stdout


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="koinonia-inventory-") as tmp:
        work = Path(tmp)
        vault = work / "vault-pass"
        vault.write_text(EXAMPLE_VAULT_PASSWORD + "\n")
        vault.chmod(0o600)
        checks = work / "checks.yml"
        checks.write_text(CHECKS)
        topology = ROOT / "playbooks" / "check_topology.yml"

        single = (EXAMPLE / "hosts.yml").read_text()
        ha_dir = work / "ha"
        shutil.copytree(EXAMPLE, ha_dir)
        (ha_dir / "hosts.yml").write_text(ha_hosts(single))
        both_dir = work / "both"
        shutil.copytree(ha_dir, both_dir)
        both = yaml.safe_load((ha_dir / "hosts.yml").read_text())
        both["all"]["children"]["databases"] = {"hosts": {"db-1.example.internal": None}}
        (both_dir / "hosts.yml").write_text(yaml.safe_dump(both))

        single_db = yaml.safe_load(single)["all"]["children"]["databases"]["hosts"]
        single_address = next(iter(single_db.values()))["ansible_host"]
        cases = {
            "single node": (
                EXAMPLE / "hosts.yml",
                {
                    "app_host": single_address,
                    "app_port": 6432,
                    "migration_port": 5432,
                    "pgbouncer_server": single_address,
                    "address_var": "ansible_host",
                },
            ),
            "high availability": (
                ha_dir / "hosts.yml",
                {
                    "app_host": "127.0.0.1",
                    "app_port": 5000,
                    "migration_port": 5002,
                    "pgbouncer_server": "127.0.0.1",
                    "address_var": "ansible_host",
                },
            ),
            "local high availability (make up HA=1)": (
                LOCAL_HA / "hosts.yml",
                {
                    "app_host": "127.0.0.1",
                    "app_port": 5000,
                    "migration_port": 5002,
                    "pgbouncer_server": "127.0.0.1",
                    "address_var": "koinonia_local_address",
                },
            ),
        }
        check_local_ha_containers()
        for name, (inventory, expected) in cases.items():
            extra = yaml.safe_dump({"expected": expected}, default_flow_style=True).strip()
            ansible_playbook(inventory, topology, vault, "{}")
            out = ansible_playbook(inventory, work / "checks.yml", vault, extra)
            asserted = len(re.findall(r"^ok: \[", out, flags=re.M))
            print(f"{name}: topology accepted, {asserted} endpoint checks passed")

        try:
            ansible_playbook(both_dir / "hosts.yml", topology, vault, "{}")
        except RuntimeError as refused:
            if "must name one database topology" not in str(refused):
                raise
            print("both topologies at once: refused by check_topology.yml")
        else:
            sys.exit("an inventory naming both topologies was accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
