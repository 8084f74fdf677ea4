"""Security validation: TLS 1.2/1.3 only, HTTP->HTTPS, HSTS and the other headers, no version."""

import http.client
import ssl

import pytest
from conftest import BASE, curl

testinfra_hosts = ["lb-nginx"]


def _handshake(host, flag):
    return host.run(
        f"echo | timeout 10 openssl s_client -connect 127.0.0.1:443 "
        f"-servername lb.koinonia.test {flag}"
    )


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_tls_1_0_and_1_1_handshakes_are_refused(host, flag):
    # Debian's OpenSSL refuses to offer these at its default security level; lower it so
    # the client really tries and the server is what refuses.
    res = host.run(
        f"echo | timeout 10 openssl s_client -connect 127.0.0.1:443 "
        f"-servername lb.koinonia.test {flag} -cipher 'DEFAULT:@SECLEVEL=0'"
    )
    assert res.rc != 0
    assert (
        "Cipher is (NONE)" in res.stdout
        or "no protocols available" in res.stderr
        or "alert" in res.stderr
    )


@pytest.mark.parametrize("flag,proto", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls_1_2_and_1_3_handshakes_are_accepted(host, flag, proto):
    res = _handshake(host, flag)
    assert res.rc == 0, res.stderr
    assert f"Protocol  : {proto}" in res.stdout or f"New, {proto}" in res.stdout


def test_tls_1_2_offers_only_ecdhe_aead_ciphers(host):
    for weak in [
        "AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES128-SHA256",
        "DHE-RSA-AES128-GCM-SHA256",
    ]:
        res = host.run(
            f"echo | timeout 10 openssl s_client -connect 127.0.0.1:443 -tls1_2 -cipher {weak}"
        )
        assert res.rc != 0, weak
    res = host.run(
        "echo | timeout 10 openssl s_client -connect 127.0.0.1:443 -tls1_2 "
        "-cipher ECDHE-ECDSA-AES128-GCM-SHA256"
    )
    assert res.rc == 0, res.stderr


def test_http_redirects_to_https_with_301(host):
    status, headers, _ = curl(host, "http://localhost/api/members?page=2")
    assert status == 301
    assert headers["location"] == "https://localhost/api/members?page=2"


def test_https_health_through_the_balancer_from_the_published_port():
    """From the controller: 127.0.0.1:18443 -> lb-nginx:443 -> an app server's /health."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", 18443, context=ctx, timeout=10)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("X-Served-By") in ("lb-app1", "lb-app2")


@pytest.mark.parametrize("path", ["/health", "/api/anything", "/metrics"])
def test_security_headers_on_every_response(host, path):
    status, headers, _ = curl(host, BASE + path)
    assert status in (200, 404)
    assert headers["strict-transport-security"] == "max-age=31536000"
    assert headers["x-frame-options"] == "SAMEORIGIN"
    assert headers["x-content-type-options"] == "nosniff"
    assert "default-src" in headers["content-security-policy"]
    assert headers["referrer-policy"]


def test_server_header_hides_the_version(host):
    _, headers, _ = curl(host, BASE + "/health")
    assert headers["server"] == "nginx"
    assert "x-powered-by" not in headers
