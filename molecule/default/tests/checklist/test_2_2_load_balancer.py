"""Checklist phase 2.2, Load Balancer Setup: NGINX in front of the three app servers."""

import json
import re

import pytest

from .conftest import (
    APPS,
    HTTP_PORT,
    PLATFORMS,
    all_up,
    app_direct,
    curl,
    https,
    plain_http,
    upstream_status,
)


def test_2_2_install_nginx_t_syntax_is_ok(lb):
    res = lb.run("nginx -t")
    assert res.rc == 0, res.stderr
    assert "syntax is ok" in res.stderr
    assert "test is successful" in res.stderr


def test_2_2_install_nginx_is_running_and_enabled(lb):
    nginx = lb.service("nginx")
    assert nginx.is_running
    assert nginx.is_enabled


def test_2_2_http_redirects_to_https_with_301():
    # From the controller, through the published port 80.
    r = plain_http("GET", "/api/members?page=2")
    assert r.status == 301, r
    assert r.headers["location"].startswith("https://")
    assert r.headers["location"].endswith("/api/members?page=2")


def test_2_2_http_redirect_keeps_host_and_path_inside(lb):
    status, headers, _ = curl(lb, "http://localhost/health/detailed?x=1")
    assert status == 301
    assert headers["location"] == "https://localhost/health/detailed?x=1"


def test_2_2_https_health_200_through_the_balancer():
    r = https("GET", "/health")
    assert r.status == 200, r
    body = r.json()
    assert body["status"] == "ok"


def test_2_2_nginx_status_answers_on_8080_from_inside(lb):
    out = lb.check_output(
        "curl -s --max-time 5 -w '\\n%{http_code}' http://127.0.0.1:8080/nginx_status"
    )
    body, status = out.rsplit("\n", 1)
    assert status == "200"
    assert re.search(r"^Active connections: \d+", body, re.M), body
    assert "server accepts handled requests" in body


@pytest.mark.parametrize("path", ["/nginx_status", "/upstream_status"])
def test_2_2_status_pages_refused_on_the_public_listener(path):
    r = https("GET", path)
    assert r.status == 404, r
    assert b"Active connections" not in r.body
    assert b"peers" not in r.body
    assert r.json()["error"]["code"] == "not_found"


def test_2_2_status_port_is_not_the_public_one(lb):
    # The public listeners answer the status paths with a redirect (80) or 404 (443); only the
    # internal port serves them, and it is not published to the host (molecule.yml).
    assert plain_http("GET", "/nginx_status").status == 301
    published = {spec.split(":")[-1] for p in PLATFORMS for spec in p.get("published_ports", [])}
    assert "8080" not in published
    assert str(HTTP_PORT) != "8080"


@pytest.mark.parametrize("app", APPS)
def test_2_2_step2_each_backend_health_from_nginx(lb, app):
    # "curl http://backend-N.internal:3000/health (from NGINX)" -> {"status":"ok",...}
    status, body = app_direct(lb, app, "/health")
    assert status == 200
    assert body["status"] == "ok"


def test_2_2_all_three_backends_registered_and_healthy(lb):
    peers = upstream_status(lb)
    assert sorted(peers) == sorted(APPS)
    assert all_up(lb), json.dumps(peers, indent=1)
    for peer in peers.values():
        assert peer["address"].endswith(":3000")
        assert peer["consecutive_failures"] == 0
        assert peer["last_check"] is not None
