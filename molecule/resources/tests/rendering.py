"""A role's template rendered for a whole inventory on the controller, by a small playbook of
the scenario (its render/ directory), with nothing connecting to the inventory's hosts: how
the firewall and monitoring scenarios check what an HA-shaped inventory would get."""

import os
import pathlib
import subprocess


def render_playbook_run(
    playbook: pathlib.Path, inventory: pathlib.Path, **extra_vars
) -> subprocess.CompletedProcess:
    """ansible-playbook `playbook` over `inventory`, with `extra_vars` as -e name=value; its
    exit status and output, whatever they are (a test of a refusal reads them)."""
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    cmd = ["ansible-playbook", "-i", str(inventory)]
    for name, value in extra_vars.items():
        cmd += ["-e", f"{name}={value}"]
    cmd.append(str(playbook))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def run_render_playbook(playbook: pathlib.Path, inventory: pathlib.Path, **extra_vars) -> None:
    """ansible-playbook `playbook` over `inventory`, with `extra_vars` as -e name=value."""
    run = render_playbook_run(playbook, inventory, **extra_vars)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
