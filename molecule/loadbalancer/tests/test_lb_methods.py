"""Methods the API does not route are answered by NGINX: 405, Allow and the JSON error shape
(not NGINX's HTML page), with the security headers; the routed ones reach the app."""

import json

import pytest
from conftest import BASE, curl

testinfra_hosts = ["lb-nginx"]

ALLOWED = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


@pytest.mark.parametrize("protocol", ["--http1.1", "--http2"])
@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "LOCK", "BREW"])
def test_unrouted_method_answers_405_with_allow_and_the_json_error_shape(host, method, protocol):
    status, headers, body = curl(host, protocol, "-X", method, BASE + "/api/echo")
    assert status == 405, body
    assert headers["allow"] == ALLOWED
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "method_not_allowed"
    assert error["message"] and error["details"] == {}
    assert headers["strict-transport-security"].startswith("max-age=")
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert "x-served-by" not in headers  # answered by the balancer, never by an app server


def test_405_is_the_same_on_every_path(host):
    for path in ("/", "/api/auth/login", "/api/webhooks/sms/inbound", "/docs", "/metrics"):
        status, headers, body = curl(host, "-X", "TRACE", BASE + path)
        assert status == 405, path
        assert headers["allow"] == ALLOWED, path
        assert json.loads(body)["error"]["code"] == "method_not_allowed", path


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_routed_methods_reach_the_app(host, method):
    status, headers, body = curl(host, "-X", method, BASE + "/api/echo")
    assert status == 200, body
    assert json.loads(body)["method"] == method
    assert headers["x-served-by"] in ("lb-app1", "lb-app2")


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND"])
def test_plain_http_port_answers_an_unrouted_method_the_same_way(host, method):
    status, headers, body = curl(host, "-X", method, "http://localhost/api/echo")
    assert status == 405, body
    assert headers["allow"] == ALLOWED
    assert json.loads(body)["error"]["code"] == "method_not_allowed"


def test_plain_http_port_still_redirects_what_the_api_routes(host):
    status, headers, _body = curl(host, "http://localhost/api/echo?x=1")
    assert status == 301
    assert headers["location"] == "https://localhost/api/echo?x=1"
