"""The Redis exporters reach a Redis and a Sentinel served over TLS only (the redis role's
redis_port 0 / redis_sentinel_port 0 with their TLS ports): their environment files as the
role renders them for such an inventory (render/tls.yml) name the TLS ports over rediss://
and the CA, never the dead plain ports; the plain-text files are as they always were; a TLS
exporter without a CA, or facing a Redis that demands client certificates, is refused. On
mon-target, Debian's exporter run with the rendered files scrapes a real TLS-only Redis and
Sentinel, and fails without the CA."""

import pathlib
import time

import pytest
import yaml
from rendering import render_playbook_run, run_render_playbook

testinfra_hosts = ["mon-target"]

RENDER_DIR = pathlib.Path(__file__).resolve().parent.parent / "render"
ROLE_DEFAULTS = yaml.safe_load(
    (RENDER_DIR.parents[2] / "roles" / "monitoring" / "defaults" / "main.yml").read_text()
)
CA_DIR = "/etc/koinonia-monitoring"
CA_FILE = f"{CA_DIR}/redis-ca.pem"
REDIS_SECRET = "montest-render-redis-secret"  # render/redis_exporters.yml's test credentials
SENTINEL_SECRET = "montest-render-sentinel-secret"
MANAGED = (
    "# Managed by Ansible (koinonia.platform, role monitoring): local changes are overwritten."
)


def render(inventory, out_dir, **extra_vars):
    """{<host>.<redis|sentinel>.env: text} as the role renders them for `inventory`."""
    pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
    run_render_playbook(
        RENDER_DIR / "redis_exporters.yml",
        RENDER_DIR / f"{inventory}.yml",
        montest_out_dir=out_dir,
        **extra_vars,
    )
    return {path.name: path.read_text() for path in pathlib.Path(out_dir).glob("*.env")}


def plain_redis_env(listen):
    return (
        f"{MANAGED}\n"
        "# Read by prometheus-redis-exporter.service (EnvironmentFile); holds a password.\n"
        'REDIS_ADDR="redis://127.0.0.1:6379"\n'
        'REDIS_USER="prometheus"\n'
        f'REDIS_PASSWORD="{REDIS_SECRET}"\n'
        f'ARGS="-web.listen-address {listen}:9121"\n'
    )


def plain_sentinel_env(listen):
    return (
        f"{MANAGED}\n"
        "# Read by koinonia-redis-sentinel-exporter.service (EnvironmentFile); holds a password.\n"
        'REDIS_ADDR="redis://127.0.0.1:26379"\n'
        f'REDIS_PASSWORD="{SENTINEL_SECRET}"\n'
        f'ARGS="-web.listen-address {listen}:9355"\n'
    )


def refusal(run):
    """A failed run's output as one line, whichever stream and callback format carried it."""
    assert run.returncode != 0, run.stdout[-2000:]
    return " ".join((run.stdout + run.stderr).replace('\\"', '"').split())


@pytest.fixture(scope="module")
def tls_env(tmp_path_factory):
    return render("tls", tmp_path_factory.mktemp("tls"))


def test_tls_only_redis_exporters_use_the_tls_ports_over_rediss_with_the_ca(tls_env):
    assert set(tls_env) == {
        f"tls-redis{n}.{unit}.env" for n in (1, 2) for unit in ("redis", "sentinel")
    }
    for n in (1, 2):
        redis = tls_env[f"tls-redis{n}.redis.env"].splitlines()
        sentinel = tls_env[f"tls-redis{n}.sentinel.env"].splitlines()
        assert 'REDIS_ADDR="rediss://127.0.0.1:6380"' in redis
        assert 'REDIS_ADDR="rediss://127.0.0.1:26380"' in sentinel
        for lines in (redis, sentinel):
            assert f'REDIS_EXPORTER_TLS_CA_CERT_FILE="{CA_FILE}"' in lines
            assert not any("6379" in line for line in lines), lines


def test_plain_text_environment_files_are_as_before(tmp_path):
    ha = render("ha", tmp_path / "ha")
    for n in (1, 2, 3):
        assert ha[f"ha-redis{n}.redis.env"] == plain_redis_env(f"10.20.3.1{n}")
        assert ha[f"ha-redis{n}.sentinel.env"] == plain_sentinel_env(f"10.20.3.1{n}")
    assert render("single", tmp_path / "single") == {
        "redis-1.redis.env": plain_redis_env("10.0.3.10")
    }


def refusal_of_tls_render(out_dir, **extra_vars) -> str:
    """The role's refusal when the TLS inventory is rendered with ``extra_vars``."""
    run = render_playbook_run(
        RENDER_DIR / "redis_exporters.yml",
        RENDER_DIR / "tls.yml",
        montest_out_dir=out_dir,
        **extra_vars,
    )
    return refusal(run)


def test_a_tls_exporter_without_a_ca_is_refused(tmp_path):
    assert (
        "set monitoring_redis_exporter_tls_ca (default: the redis role's redis_tls_ca)"
        in refusal_of_tls_render(tmp_path, redis_tls_ca="")
    )
    assert not list(tmp_path.glob("*.env"))


def test_a_redis_demanding_client_certificates_is_refused(tmp_path):
    assert 'redis_tls_auth_clients must be "no" or "optional" (it is "yes")' in (
        refusal_of_tls_render(tmp_path, redis_tls_auth_clients="yes")
    )


# --- Debian's exporter on this release, with the rendered files, against real TLS servers ---
TLS_DIR = "/var/lib/montest/redis-tls"
REDIS_EXPORTER_PORT = 9191
SENTINEL_EXPORTER_PORT = 9192
WITHOUT_CA_PORT = 9193
UNITS = (
    "montest-tls-redis",
    "montest-tls-sentinel",
    "montest-tls-redis-exporter",
    "montest-tls-sentinel-exporter",
    "montest-tls-exporter-without-ca",
)


def run_ok(host, command, *args):
    result = host.run(command, *args)
    assert result.rc == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


def make_certificates(host):
    """A throw-away CA and a server certificate for 127.0.0.1 (the exporters' TLS host)."""
    run_ok(
        host,
        f"mkdir -p {TLS_DIR} && cd {TLS_DIR}"
        " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -keyout ca.key -out ca.pem -days 2 -subj '/CN=montest redis tls ca'"
        " && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -keyout server.key -out server.csr -subj /CN=montest-redis"
        " && printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext"
        " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
        " -out server.pem -days 2 -extfile server.ext",
    )


def tls_server_lines(port):
    return [
        "port 0",
        f"tls-port {port}",
        "bind 127.0.0.1",
        f"tls-cert-file {TLS_DIR}/server.pem",
        f"tls-key-file {TLS_DIR}/server.key",
        f"tls-ca-cert-file {TLS_DIR}/ca.pem",
        "tls-auth-clients no",
        f"dir {TLS_DIR}",
    ]


def write(host, path, text, mode="0600"):
    run_ok(host, "install -m %s /dev/null %s && printf %%s %s > %s", mode, path, text, path)


def start(host, unit, *command, env_file=None):
    prop = f"--property=EnvironmentFile={env_file} " if env_file else ""
    run_ok(host, f"systemd-run --unit={unit} --collect {prop}" + " ".join(command))


def redis_up(host, port, deadline):
    """The exporter's redis_up once it has scraped, and its /metrics."""
    while True:
        result = host.run(
            "python3 -c 'import sys, urllib.request; "
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' %s",
            f"http://127.0.0.1:{port}/metrics",
        )
        if result.rc == 0 and "\nredis_up " in result.stdout:
            up = next(line for line in result.stdout.splitlines() if line.startswith("redis_up "))
            return up.split()[1], result.stdout
        assert time.monotonic() < deadline, f"no redis_up on :{port}: {result.stderr}"
        time.sleep(1)


def test_debian_exporter_scrapes_tls_only_redis_and_sentinel_with_the_rendered_files(
    host, tmp_path
):
    files = render(
        "tls",
        tmp_path,
        monitoring_listen_address="127.0.0.1",
        monitoring_redis_exporter_port=REDIS_EXPORTER_PORT,
        monitoring_redis_sentinel_exporter_port=SENTINEL_EXPORTER_PORT,
    )
    try:
        make_certificates(host)
        run_ok(
            host,
            "install -d -m 0755 %s && install -m 0644 %s/ca.pem %s",
            CA_DIR,
            TLS_DIR,
            CA_FILE,
        )
        acl_rules = ROLE_DEFAULTS["monitoring_redis_exporter_acl_rules"]
        write(
            host,
            f"{TLS_DIR}/redis.conf",
            "\n".join(
                [
                    *tls_server_lines(6380),
                    "user default off",
                    f"user prometheus on >{REDIS_SECRET} {acl_rules}",
                ]
            )
            + "\n",
        )
        write(
            host,
            f"{TLS_DIR}/sentinel.conf",
            "\n".join([*tls_server_lines(26380), f"requirepass {SENTINEL_SECRET}"]) + "\n",
        )
        write(host, f"{TLS_DIR}/redis.env", files["tls-redis1.redis.env"])
        write(host, f"{TLS_DIR}/sentinel.env", files["tls-redis1.sentinel.env"])
        without_ca = "".join(
            line
            for line in files["tls-redis1.redis.env"].splitlines(keepends=True)
            if not line.startswith("REDIS_EXPORTER_TLS_CA_CERT_FILE=")
        )
        write(host, f"{TLS_DIR}/without-ca.env", without_ca)

        start(host, "montest-tls-redis", "/usr/bin/redis-server", f"{TLS_DIR}/redis.conf")
        start(
            host,
            "montest-tls-sentinel",
            "/usr/bin/redis-server",
            f"{TLS_DIR}/sentinel.conf",
            "--sentinel",
        )
        # The units' own command lines: $ARGS (the listen address) is not expanded by
        # systemd-run, so the address goes as a flag; the TLS settings come from the files.
        exporter = "/usr/bin/prometheus-redis-exporter"
        start(
            host,
            "montest-tls-redis-exporter",
            exporter,
            "-web.listen-address",
            f"127.0.0.1:{REDIS_EXPORTER_PORT}",
            env_file=f"{TLS_DIR}/redis.env",
        )
        start(
            host,
            "montest-tls-sentinel-exporter",
            exporter,
            "-web.listen-address",
            f"127.0.0.1:{SENTINEL_EXPORTER_PORT}",
            env_file=f"{TLS_DIR}/sentinel.env",
        )
        start(
            host,
            "montest-tls-exporter-without-ca",
            exporter,
            "-web.listen-address",
            f"127.0.0.1:{WITHOUT_CA_PORT}",
            env_file=f"{TLS_DIR}/without-ca.env",
        )

        deadline = time.monotonic() + 60
        # Up only once the servers listen: poll until the exporters report 1.
        while True:
            redis, redis_metrics = redis_up(host, REDIS_EXPORTER_PORT, deadline)
            sentinel, sentinel_metrics = redis_up(host, SENTINEL_EXPORTER_PORT, deadline)
            if redis == sentinel == "1":
                break
            assert time.monotonic() < deadline, f"redis_up {redis}, sentinel redis_up {sentinel}"
            time.sleep(1)
        assert 'redis_mode="standalone"' in redis_metrics
        assert 'redis_mode="sentinel"' in sentinel_metrics
        # The same file without the CA: the certificate is checked, not merely accepted.
        assert redis_up(host, WITHOUT_CA_PORT, deadline)[0] == "0"
    finally:
        for unit in reversed(UNITS):
            host.run("systemctl stop %s", unit)
        host.run("rm -rf %s %s", TLS_DIR, CA_DIR)
