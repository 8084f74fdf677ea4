"""The docs page is the one response whose Content-Security-Policy is the app's (it allows
exactly the page's own scripts and style sheet); everything else keeps default-src 'none'."""

from conftest import BASE

testinfra_hosts = ["lb-nginx"]

DEFAULT_CSP = "default-src 'none'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
# What the stand-in app server sends with /docs (files/lbtest_app.py).
APP_DOCS_CSP = "default-src 'none'; script-src 'nonce-lbtest'; style-src 'nonce-lbtest'"


def _raw_headers(host, path):
    """(status, [(lower-cased name, value)]) of one GET, every header line as sent."""
    out = host.check_output(f"curl -sk --http1.1 -D - -o /dev/null {BASE}{path}")
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        name, value = line.split(":", 1)
        headers.append((name.strip().lower(), value.strip()))
    return status, headers


def _values(headers, name):
    return [value for key, value in headers if key == name]


def test_docs_page_carries_the_apps_policy_once(host):
    status, headers = _raw_headers(host, "/docs")
    assert status == 200
    assert _values(headers, "content-security-policy") == [APP_DOCS_CSP]
    # The other security headers are the balancer's, as everywhere.
    assert _values(headers, "x-frame-options") == ["SAMEORIGIN"]
    assert _values(headers, "x-content-type-options") == ["nosniff"]
    assert len(_values(headers, "strict-transport-security")) == 1


def test_docs_page_without_a_policy_from_the_app_gets_the_default(host):
    status, headers = _raw_headers(host, "/docs?no-csp")
    assert status == 200
    assert _values(headers, "content-security-policy") == [DEFAULT_CSP]


def test_everything_else_keeps_default_src_none(host):
    for path in ("/docs/static/swagger-ui-bundle.js", "/docs/", "/api/echo", "/health"):
        _status, headers = _raw_headers(host, path)
        assert _values(headers, "content-security-policy") == [DEFAULT_CSP], path
