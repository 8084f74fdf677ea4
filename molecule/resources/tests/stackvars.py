"""The inventory variables of a scenario built on the shared stack base, as the converge
sees them: molecule/resources/stack/inventory.yml (every group's vars), then the
scenario's own group_vars/<group>.yml on top (a group_vars file wins over an inventory's
group vars, so an override here is an override there). Values are the raw strings of the
files: the tests read only literal ones (passwords, health check knobs)."""

from __future__ import annotations

import pathlib

import yaml

STACK_INVENTORY = pathlib.Path(__file__).resolve().parents[1] / "stack" / "inventory.yml"


def _inventory_group_vars(node: dict, name: str, out: dict[str, dict]) -> None:
    out.setdefault(name, {}).update(node.get("vars") or {})
    for child, child_node in (node.get("children") or {}).items():
        _inventory_group_vars(child_node or {}, child, out)


def stack_group_vars(scenario_dir: pathlib.Path) -> dict[str, dict]:
    """{group: {variable: value}} for the scenario in scenario_dir."""
    group_vars: dict[str, dict] = {}
    _inventory_group_vars(yaml.safe_load(STACK_INVENTORY.read_text())["all"], "all", group_vars)
    overrides = scenario_dir / "group_vars"
    if overrides.is_dir():
        for path in sorted(overrides.glob("*.yml")):
            group_vars.setdefault(path.stem, {}).update(yaml.safe_load(path.read_text()) or {})
    return group_vars
