"""Shared helpers of the app scenario's Testinfra tests.

Test-only credentials and settings live in one place, molecule.yml's inventory; the tests
read them from there instead of repeating them.
"""

import json
import os
import pathlib
import shlex
import sys

import pytest
import testinfra
import yaml

# The helpers shared by the scenarios (sandbox.py: systemd-analyze security).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
APP_SERVERS = ["app-1", "app-2"]
DATA_HOST = "app-data"


@pytest.fixture(scope="session")
def group_vars():
    molecule_yml = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
    return molecule_yml["provisioner"]["inventory"]["group_vars"]


@pytest.fixture(scope="session")
def cfg(group_vars):
    return group_vars["all"]


def get_host(name):
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


# Runs on an app server (no curl there): one HTTP request with urllib, printed as JSON.
_HTTP = r"""
import json, sys, urllib.request, urllib.error
method, url, body, token = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
req.add_header("Content-Type", "application/json")
if token:
    req.add_header("Authorization", "Bearer " + token)
try:
    with urllib.request.urlopen(req, timeout=15) as resp:
        status, text, headers = resp.status, resp.read().decode(), dict(resp.headers)
except urllib.error.HTTPError as exc:
    status, text, headers = exc.code, exc.read().decode(), dict(exc.headers)
except OSError as exc:  # refused, reset, timed out: no HTTP answer at all
    status, text, headers = 0, repr(exc), {}
try:
    parsed = json.loads(text)
except ValueError:
    parsed = text
print(json.dumps({"status": status, "body": parsed, "headers": headers}))
"""


def http(host, method, path, body=None, token=None, port=3000):
    """(status, parsed body) of METHOD http://127.0.0.1:port/path, sent from `host`.

    status is 0 when no HTTP answer came (connection refused, reset, timeout).
    """
    args = [
        "python3",
        "-c",
        _HTTP,
        method,
        f"http://127.0.0.1:{port}{path}",
        json.dumps(body) if body is not None else "",
        token or "",
    ]
    result = host.run(" ".join(shlex.quote(a) for a in args))
    assert result.rc == 0, result.stderr
    answer = json.loads(result.stdout)
    return answer["status"], answer["body"]


def env_file(host):
    """The KOINONIA_* settings of /etc/koinonia/koinonia.env as a dict."""
    content = host.file("/etc/koinonia/koinonia.env").content_string
    settings = {}
    for line in content.splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        settings[name] = value.strip('"')
    return settings


def main_pid(host, unit):
    return int(host.check_output(f"systemctl show -p MainPID --value {unit}"))
