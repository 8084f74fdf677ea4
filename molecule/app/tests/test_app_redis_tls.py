"""The app servers reach Redis over TLS only (redis_tls_port, app_redis_tls_ca).

Redis on app-data has no plain-text port (redis_port 0) and serves a certificate for
app-data signed by the scenario's throw-away test CA (../../resources/tls.yml); the app
servers trust that CA (/etc/koinonia/redis-ca.pem) and connect with rediss://. The job
roundtrip over this Redis (API enqueues, SAQ worker sends) is
test_app_deployment.py's smoke test.
"""

import pathlib
import shlex
import tempfile

import pytest
from conftest import DATA_HOST, get_host, http, main_pid

testinfra_hosts = ["app-1", "app-2"]

UNITS = ["koinonia-api", "koinonia-worker"]
ENV_FILE = "/etc/koinonia/koinonia.env"
CA_FILE = "/etc/koinonia/redis-ca.pem"
# Not the test CA: Debian's public CA bundle, readable by the service user.
OTHER_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
REDIS_CLI_CA = "/root/ca.pem"  # the test CA on app-data (converge.yml)
OPS_AUTH_FILE = "/root/.molecule-redis-ops-auth"


@pytest.fixture(scope="module")
def tls_port(cfg):
    return int(cfg["koinonia_redis_tls_port"])


@pytest.fixture(scope="module")
def redis_ops_cli(cfg, tls_port):
    """Build redis-cli commands run on app-data as the ops user over TLS.

    The password goes to app-data in a root-only file (copied by Ansible, so it is in no
    command line) and reaches redis-cli through REDISCLI_AUTH, read from that file by the
    shell: it is never an argument of any process.
    """
    data = get_host(DATA_HOST)
    with tempfile.TemporaryDirectory() as tmp:
        local = pathlib.Path(tmp) / "auth"
        local.touch(mode=0o600)
        local.write_text(cfg["koinonia_redis_ops_password"])
        copied = data.ansible(
            "copy",
            f"src={local} dest={OPS_AUTH_FILE} owner=root group=root mode=0600",
            check=False,
        )
        assert not copied.get("failed"), copied.get("msg")

    def command(*args):
        return (
            f'REDISCLI_AUTH="$(cat {OPS_AUTH_FILE})" redis-cli --no-auth-warning '
            f"--tls --cacert {REDIS_CLI_CA} -h 127.0.0.1 -p {tls_port} --user ops "
            + " ".join(shlex.quote(a) for a in args)
        )

    yield data, command
    data.run_expect([0], f"rm -f {OPS_AUTH_FILE}")


def redis_url_without_password(host):
    """KOINONIA_REDIS_URL with its user:password@ cut out on the host itself (read as root)."""
    url = host.check_output(
        f"sed -n 's#^KOINONIA_REDIS_URL=\"\\([a-z]*://\\)[^@]*@\\(.*\\)\"$#\\1\\2#p' {ENV_FILE}"
    )
    assert url, "no KOINONIA_REDIS_URL=<scheme>://<user>:<password>@... line"
    return url


def server_address(host):
    return host.check_output("hostname -I").split()[0]


def test_env_file_redis_url_is_rediss_to_the_tls_port_checked_against_the_ca(host, tls_port):
    url = redis_url_without_password(host)
    scheme = url.split("://", 1)[0]
    assert scheme == "rediss"
    assert url == f"rediss://{DATA_HOST}:{tls_port}/0?ssl_ca_certs={CA_FILE}"


def test_redis_ca_file_is_the_test_ca_and_not_writable_by_the_service(host):
    ca = host.file(CA_FILE)
    assert ca.user == "root"
    assert ca.group == "koinonia"
    assert ca.mode == 0o644
    test_ca = get_host(DATA_HOST).file(REDIS_CLI_CA).content_string
    assert ca.content_string.strip() == test_ca.strip()
    assert host.run(f"runuser -u koinonia -- test -w {CA_FILE}").rc != 0


def test_redis_certificate_names_the_host_the_app_connects_to():
    """redis-py checks the name (ssl_check_hostname); app-data must be in the certificate."""
    data = get_host(DATA_HOST)
    names = data.check_output(
        "openssl x509 -in /etc/redis/tls/redis.crt -noout -ext subjectAltName"
    )
    assert f"DNS:{DATA_HOST}" in names


def test_plain_text_redis_port_is_closed_and_only_the_tls_port_listens(host, tls_port):
    data = get_host(DATA_HOST)
    # redis_bind: the loopback and the host's address.
    for address in ("127.0.0.1", server_address(data)):
        assert data.socket(f"tcp://{address}:{tls_port}").is_listening, address
        assert not data.socket(f"tcp://{address}:6379").is_listening, address
    assert data.check_output("ss -Htln '( sport = :6379 )'") == ""
    # From the app server: nothing answers on Redis's default plain-text port.
    probe = host.run(
        "python3 -c "
        + shlex.quote(
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('{DATA_HOST}', 6379), timeout=5)\n"
            "except ConnectionRefusedError:\n"
            "    print('refused')\n"
        )
    )
    assert probe.stdout.strip() == "refused", probe.stdout + probe.stderr


def test_health_ready_is_200_with_redis_reached_over_tls(host):
    status, body = http(host, "GET", "/health/ready")
    assert status == 200, body
    assert body["ready"] is True
    status, body = http(host, "GET", "/health/detailed")
    assert status == 200, body
    assert body["checks"]["redis"] == "ok"


@pytest.mark.parametrize("unit", UNITS)
def test_api_and_worker_hold_redis_connections_on_the_tls_port_only(host, unit, tls_port):
    http(host, "GET", "/health/ready")  # the API's pool has a Redis connection open
    pid = main_pid(host, unit)
    pids = {str(pid), *host.check_output(f"pgrep -P {pid} || true").split()}
    sockets = host.check_output("ss -Htnp state established")
    redis_ports = {
        line.split()[3].rsplit(":", 1)[1]
        for line in sockets.splitlines()
        if any(f"pid={p}," in line for p in pids)
        and line.split()[3].rsplit(":", 1)[1] in (str(tls_port), "6379")
    }
    assert redis_ports == {str(tls_port)}, sockets


def test_redis_client_list_shows_this_server_connected_on_the_tls_port(
    host, redis_ops_cli, tls_port
):
    data, command = redis_ops_cli
    http(host, "GET", "/health/ready")
    result = data.run(command("CLIENT", "LIST"))
    assert result.rc == 0, result.stderr
    address = server_address(host)
    clients = [
        dict(field.split("=", 1) for field in line.split(" ") if "=" in field)
        for line in result.stdout.splitlines()
    ]
    mine = [c for c in clients if c.get("addr", "").rsplit(":", 1)[0] == address]
    assert mine, result.stdout
    # Redis 7.0's CLIENT LIST has no TLS flag; laddr is the local end, i.e. the port the
    # client came in on, and the plain-text port is closed.
    assert all(c["laddr"].rsplit(":", 1)[1] == str(tls_port) for c in mine), mine
    assert all(c["user"] == "koinonia" for c in mine), mine


def run_check_with_ca(host, ca_file):
    """`koinonia check` as the service user with the env file's settings and another CA."""
    script = (
        f"set -a; . {ENV_FILE}; set +a; "
        f'KOINONIA_REDIS_URL="${{KOINONIA_REDIS_URL%%\\?*}}?ssl_ca_certs={ca_file}"; '
        "exec runuser -u koinonia -- /opt/koinonia/current/venv/bin/koinonia check"
    )
    return host.run(f"bash -c {shlex.quote(script)}")


def test_app_checks_redis_certificate_against_its_ca(host):
    """With the configured CA the CLI's checks pass; with a CA that did not sign Redis's
    certificate (Debian's public bundle) the Redis check fails, the database one does not."""
    ok = run_check_with_ca(host, CA_FILE)
    assert ok.rc == 0, ok.stdout + ok.stderr
    refused = run_check_with_ca(host, OTHER_CA_FILE)
    output = refused.stdout + refused.stderr
    assert refused.rc == 1, output
    failures = [line for line in output.splitlines() if "FAILED" in line]
    assert len(failures) == 1, output
    assert failures[0].startswith("koinonia check: FAILED: redis unreachable"), output
