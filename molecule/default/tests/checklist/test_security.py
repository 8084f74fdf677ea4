"""Checklist "Security Validation": TLS 1.2/1.3 only (Mozilla intermediate), the certificate
names the server, HSTS for a year and the other security headers on every response (errors
included), server_tokens hidden, the app servers' /metrics not public."""

import pytest

from .conftest import APPS, app_direct, https, plain_http

SERVER_NAME = "ck-lb"  # nginx_server_name defaults to the balancer's inventory name


def _s_client(lb, *flags):
    return lb.run(
        "echo | timeout 15 openssl s_client -connect 127.0.0.1:443 "
        f"-servername {SERVER_NAME} " + " ".join(flags)
    )


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_security_tls_1_0_and_1_1_handshakes_refused(lb, flag):
    # Debian's OpenSSL will not even offer TLS 1.0/1.1 at its default security level: lower
    # it, so the client really tries and the refusal is the server's.
    res = _s_client(lb, flag, "-cipher 'DEFAULT:@SECLEVEL=0'")
    assert res.rc != 0, res.stdout
    assert (
        "alert protocol version" in res.stderr
        or "unsupported protocol" in res.stderr
        or "wrong version number" in res.stderr
    ), res.stderr
    assert "BEGIN CERTIFICATE" not in res.stdout


@pytest.mark.parametrize("flag,proto", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_security_tls_1_2_and_1_3_handshakes_accepted(lb, flag, proto):
    res = _s_client(lb, flag)
    assert res.rc == 0, res.stderr
    assert f"Protocol  : {proto}" in res.stdout or f"New, {proto}" in res.stdout, res.stdout


def test_security_tls_1_2_refuses_weak_ciphers(lb):
    for weak in ["AES128-SHA", "ECDHE-RSA-AES128-SHA", "DHE-RSA-AES128-GCM-SHA256", "DES-CBC3-SHA"]:
        res = _s_client(lb, "-tls1_2", f"-cipher '{weak}:@SECLEVEL=0'")
        assert res.rc != 0, weak


def test_security_certificate_names_the_server(lb):
    text = lb.check_output(
        f"echo | timeout 15 openssl s_client -connect 127.0.0.1:443 -servername {SERVER_NAME} "
        "2>/dev/null | openssl x509 -noout -subject -ext subjectAltName"
    )
    assert f"DNS:{SERVER_NAME}" in text, text


@pytest.mark.parametrize(
    "path,status",
    [
        ("/health", 200),  # proxied from an app server
        ("/api/members", 401),  # an app error
        ("/no-such-page", 404),  # the app's 404
        ("/metrics", 404),  # answered by NGINX itself
    ],
)
def test_security_headers_on_every_response(path, status):
    r = https("GET", path)
    assert r.status == status, r
    h = r.headers
    assert h["strict-transport-security"] == "max-age=31536000"
    assert h["x-frame-options"] == "SAMEORIGIN"
    assert h["x-content-type-options"] == "nosniff"
    assert "default-src" in h["content-security-policy"]
    assert h["referrer-policy"]


def test_security_server_tokens_hidden():
    for r in (https("GET", "/health"), https("GET", "/metrics"), plain_http("GET", "/")):
        assert r.headers["server"] == "nginx", r.headers
        assert "x-powered-by" not in r.headers
    body = plain_http("GET", "/").body.decode()
    assert "nginx/" not in body


def test_security_metrics_not_public_but_served_internally(lb):
    r = https("GET", "/metrics")
    assert r.status == 404
    assert b"# HELP" not in r.body
    status, body = app_direct(lb, APPS[0], "/metrics")
    assert status == 200
    assert "# HELP" in body
