"""Commands in a scenario's containers through `docker exec`, for the tests that run while
a container is being killed or restarted (Testinfra's backends would raise instead)."""

from __future__ import annotations

import subprocess


def docker_exec(host, *argv, env=None, check=True, timeout=60, stdin=None):
    """stdout of ARGV in container HOST, stripped. ENV is passed with `docker exec -e`, so a
    password travels in the environment, not in the command's arguments."""
    env_args = [arg for name, value in (env or {}).items() for arg in ("-e", f"{name}={value}")]
    result = subprocess.run(
        ["docker", "exec", *(["-i"] if stdin is not None else []), *env_args, host, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{host}: {argv} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout.strip()
