#!/usr/bin/env python3
"""Every role's meta/argument_specs.yml, checked option by option (part of `make test`).

scripts/test-collection.sh proves, once per role, that a role run by FQCN validates its
arguments before it touches a host. This script proves the specs themselves, for every
option of every entry point, with Ansible's own validator (ArgumentSpecValidator, the
engine behind a role's argument validation), in a second:

1. a wrong value is refused with a message naming the option: a value outside `choices`,
   a word for an int or a bool, a mapping for a list, a word for a dict;
2. the defaults in defaults/main.yml pass the spec (those that are not Jinja templates);
3. every variable in defaults/main.yml is declared in an entry point, and every optional
   option of `main` has a default or a commented example there (an operator finds every
   knob in defaults/main.yml);
4. every option has a description and an explicit type (so a dropped `type: int` cannot
   silently turn an option into an unchecked string).
"""

from __future__ import annotations

import pathlib
import sys

import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

ROOT = pathlib.Path(__file__).resolve().parent.parent
WRONG = {
    "int": "not-a-number",
    "float": "not-a-number",
    "bool": "maybe",
    "list": {"not": "a list"},
    "dict": "not-a-dict",
}


def wrong_value(option: dict):
    kind = option.get("type", "str")
    if "choices" in option:
        return {"int": 987654, "list": ["not-one-of-the-choices"]}.get(
            kind, "not-one-of-the-choices"
        )
    return WRONG.get(kind)


def check_role(role_dir: pathlib.Path) -> tuple[int, list[str]]:
    role = role_dir.name
    specs = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text())
    specs = specs["argument_specs"]
    defaults_text = (role_dir / "defaults" / "main.yml").read_text()
    defaults = yaml.safe_load(defaults_text) or {}
    problems, cases = [], 0

    declared = {name for entry in specs.values() for name in (entry.get("options") or {})}
    for name in sorted(set(defaults) - declared):
        problems.append(f"{role}: {name} is in defaults/main.yml but in no argument spec")
    for name, option in specs["main"]["options"].items():
        if option.get("required") or name in defaults:
            continue
        if f"# {name}:" not in defaults_text:
            problems.append(f"{role}: optional {name} has no default or example in defaults")

    for entry_name, entry in specs.items():
        for name, option in (entry.get("options") or {}).items():
            where = f"{role} ({entry_name}): {name}"
            if not option.get("description"):
                problems.append(f"{where} has no description")
            if "type" not in option:
                problems.append(f"{where} has no explicit type")
            value = wrong_value(option)
            if value is not None:
                cases += 1
                result = ArgumentSpecValidator({name: option}).validate({name: value})
                if not any(name in message for message in result.error_messages):
                    problems.append(f"{where} accepted the wrong value {value!r}")
            default = defaults.get(name)
            if name in defaults and "{{" not in str(default):
                result = ArgumentSpecValidator({name: option}).validate({name: default})
                if result.error_messages:
                    problems.append(f"{where}: its default fails the spec: {result.error_messages}")
    return cases, problems


def main() -> int:
    total, problems = 0, []
    roles = sorted(p.parent.parent for p in ROOT.glob("roles/*/meta/argument_specs.yml"))
    for role_dir in roles:
        cases, found = check_role(role_dir)
        total += cases
        problems += found
        print(f"{role_dir.name}: {cases} wrong values refused, naming the option")
    if problems:
        print("\n".join(["argument specs: FAILED", *problems]), file=sys.stderr)
        return 1
    print(f"argument specs: ok ({len(roles)} roles, {total} wrong values refused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
