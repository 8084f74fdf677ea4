"""Request ids, forwarded headers, WebSocket upgrade and the detailed access log."""

import json
import re

from conftest import BASE, curl

testinfra_hosts = ["lb-nginx"]


def test_request_id_is_generated_and_passed_upstream(host):
    status, headers, body = curl(host, BASE + "/api/echo")
    assert status == 200
    sent = json.loads(body)["headers"]["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", sent)
    assert headers["x-request-id"] == sent


def test_client_request_id_is_kept_when_well_formed(host):
    _, headers, body = curl(host, "-H", "X-Request-ID: trace-abc.123", BASE + "/api/echo")
    assert json.loads(body)["headers"]["x-request-id"] == "trace-abc.123"
    assert headers["x-request-id"] == "trace-abc.123"
    _, _, body = curl(host, "-H", "X-Request-ID: bad id with spaces", BASE + "/api/echo")
    assert json.loads(body)["headers"]["x-request-id"] != "bad id with spaces"


def test_forwarded_headers_are_set_and_client_xff_is_not_trusted(host):
    _, _, body = curl(host, "-H", "X-Forwarded-For: 6.6.6.6", BASE + "/api/echo")
    sent = json.loads(body)["headers"]
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "https"
    assert sent["x-real-ip"] == "127.0.0.1"


def test_websocket_upgrade_headers_are_passed_on_api_ws(host):
    _, _, body = curl(
        host,
        "--http1.1",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        BASE + "/api/ws",
    )
    sent = json.loads(body)["headers"]
    assert sent["upgrade"] == "websocket"
    assert sent["connection"].lower() == "upgrade"


def test_plain_requests_do_not_send_connection_upgrade(host):
    _, _, body = curl(host, BASE + "/api/echo")
    assert "upgrade" not in json.loads(body)["headers"]


def test_access_log_records_upstream_address_status_and_timings(host):
    curl(host, "-H", "X-Request-ID: log-check-42", BASE + "/api/echo")
    line = [
        ln
        for ln in host.file("/var/log/nginx/access.log").content_string.splitlines()
        if "log-check-42" in ln
    ][-1]
    entry = json.loads(line)
    assert entry["status"] == 200
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:3000", entry["upstream_addr"])
    assert entry["upstream_status"] == "200"
    for key in (
        "request_time",
        "upstream_connect_time",
        "upstream_header_time",
        "upstream_response_time",
    ):
        assert entry[key] != ""
