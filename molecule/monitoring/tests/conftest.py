"""Shared helpers of the monitoring scenario's tests (run inside the containers)."""

import json
import pathlib
import sys

import testinfra

# The helpers shared by the scenarios (debian.py: what each release packages).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))


def internal_ip(host):
    return host.check_output("ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'")


def get(host, url):
    """GET url from inside the container (python3 is in the base image; curl is not)."""
    return host.check_output(
        "python3 -c 'import sys, urllib.request; "
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' %s",
        url,
    )


def api(host, path):
    body = json.loads(get(host, f"http://{internal_ip(host)}:9090{path}"))
    assert body["status"] == "success", body
    return body["data"]


def listeners(host, port):
    out = host.check_output("ss -Hltn 'sport = :%s'", str(port))
    return sorted(line.split()[3] for line in out.splitlines() if line.strip())


def container(name):
    """Another host of the scenario, for a test of one host that acts on the other."""
    return testinfra.get_host(f"docker://{name}")


def received(host, path):
    """What a test receiver (prepare.yml) has recorded so far: one JSON document a line."""
    if not host.file(path).exists:
        return []
    return [json.loads(line) for line in host.file(path).content_string.splitlines() if line]
