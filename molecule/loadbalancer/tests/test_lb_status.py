"""Checklist 2.2: status pages on the internal port 8080 only; /metrics not public."""

import json

import pytest
from conftest import BASE, curl

testinfra_hosts = ["lb-nginx"]


def test_nginx_status_answers_on_internal_port(host):
    out = host.check_output("curl -s http://127.0.0.1:8080/nginx_status")
    assert "Active connections:" in out
    assert "server accepts handled requests" in out


def test_upstream_status_lists_each_peer_as_json(host):
    data = json.loads(host.check_output("curl -s http://127.0.0.1:8080/upstream_status"))
    assert data["checker"] == {
        "path": "/health/ready",
        "interval": 1,
        "timeout": 1,
        "rise": 2,
        "fall": 3,
    }
    names = sorted(p["name"] for p in data["peers"])
    assert names == ["lb-app1", "lb-app2"]
    for peer in data["peers"]:
        assert peer["status"] in ("up", "down")
        assert peer["address"].endswith(":3000")
        for key in ("consecutive_failures", "consecutive_successes", "last_check", "last_result"):
            assert key in peer


@pytest.mark.parametrize("path", ["/nginx_status", "/upstream_status", "/metrics", "/metrics/"])
def test_status_and_metrics_are_not_on_the_public_listener(host, path):
    status, headers, body = curl(host, BASE + path)
    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"
    assert "x-served-by" not in headers  # never reached an app server


def test_status_port_refuses_addresses_outside_the_allow_list():
    import testinfra

    app = testinfra.get_host("docker://lb-app1")
    out = app.check_output(
        'python3 -c "import urllib.request,urllib.error\n'
        "try:\n urllib.request.urlopen('http://lb-nginx:8080/nginx_status', timeout=5)\n"
        ' print(200)\nexcept urllib.error.HTTPError as e:\n print(e.code)"'
    )
    assert out.strip() == "403"
