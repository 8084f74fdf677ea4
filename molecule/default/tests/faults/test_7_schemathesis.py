"""Property-based API testing (Schemathesis) through the balancer, as the users meet it: as
the owner of a church of its own (registered here, so generated messages to "all" reach no
one of the other tests) and as a platform operator over the operators' own operations. Every
check and the stateful phase, a bounded number of examples per operation, no failure and no
5xx."""

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import yaml

from .conftest import CFG, HTTPS_PORT, LB_VARS, https, login

ROOT = Path(__file__).resolve().parents[4]
# Stateful bounds and the rules beyond the schema, shared with app/tests/test_api_fuzz.py.
CONFIG = ROOT / "app" / "tests" / "schemathesis.toml"
NGINX_DEFAULTS = yaml.safe_load((ROOT / "roles" / "nginx" / "defaults" / "main.yml").read_text())
# The balancer's rate-limited zones narrower than the API's own (nginx.conf.j2's locations).
ZONES = {"auth": "^/api/auth/", "webhooks": "^/api/webhooks/"}


def balancer_config(directory: Path) -> Path:
    """The app tests' settings, and under each narrow zone's rate: there NGINX would answer
    429 before the app (an unauthenticated request then meets a 429, not the app's 401)."""
    text = CONFIG.read_text()
    for zone, path_regex in ZONES.items():
        variable = f"nginx_rate_limit_{zone}"
        rate = LB_VARS.get(variable, NGINX_DEFAULTS[variable])
        per_second = int(re.fullmatch(r"(\d+)r/s", rate)[1])
        text += (
            f'\n[[operations]]\ninclude-path-regex = "{path_regex}"\n'
            f'rate-limit = "{max(1, per_second - 2)}/s"\n'
        )
    config = directory / "schemathesis.toml"
    config.write_text(text)
    return config


# Operations that end the session the run is authenticated with (when aimed at its user).
SESSION_ENDING = (
    "^(post_logout|post_change_password|patch_change_role|delete_remove_staff"
    "|post_transfer_ownership)$"
)


def test_7_fuzzed_api_answers_no_5xx_and_conforms_to_its_openapi_schema(tmp_path, healthy_stack):
    tag = uuid.uuid4().hex[:8]
    r = https(
        "POST",
        "/api/auth/register",
        {
            "churchName": f"Chaos Fuzz {tag}",
            "email": f"fuzz-{tag}@example.org",
            "password": f"fuzz-{tag}-password",
        },
    )
    assert r.status == 201, r
    fuzzed(tmp_path, r.json()["token"])


def test_7_fuzzed_operator_api_answers_no_5xx_and_conforms_to_its_openapi_schema(
    tmp_path, healthy_stack
):
    # The operators' own operations (queue, deliveries in doubt, cache, locks, phone
    # numbers); the church's are fuzzed as its owner above.
    token = login(CFG["koinonia_operator_email"], CFG["koinonia_operator_password"])
    summary = fuzzed(tmp_path, token, "--include-path-regex=^/api/admin/")
    # Reached as an operator, not only refused: no operation answered only 401/403.
    assert "Authentication failed" not in summary, summary


def fuzzed(tmp_path, token: str, *options: str) -> str:
    """A Schemathesis run through the balancer as the holder of `token`, every check and
    phase; its summary once it passed."""
    schemathesis = shutil.which("schemathesis")
    assert schemathesis, "schemathesis is not installed (the dev dependencies pin it)"
    cmd = [
        schemathesis,
        f"--config-file={balancer_config(tmp_path)}",
        "run",
        f"https://127.0.0.1:{HTTPS_PORT}/openapi.json",
        "--tls-verify=false",
        f"--header=Authorization: Bearer {token}",
        "--checks=all",
        "--phases=examples,coverage,fuzzing,stateful",
        "--max-examples=10",
        "--seed=20261123",
        # Text UTF-8 and PostgreSQL can carry (the API refuses lone surrogates and U+0000).
        "--generation-codec=utf-8",
        "--generation-allow-x00=false",
        "--workers=1",
        "--request-timeout=30",
        f"--exclude-operation-id-regex={SESSION_ENDING}",
        # The balancer keeps /metrics off its public ports (test_security): Prometheus reads it
        # on each app server's port, so there it is a 404 for every method.
        "--exclude-path=/metrics",
        "--report=junit",
        f"--report-dir={tmp_path}",
        "--output-truncate=false",
        "--no-color",
        *options,
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    shown = [c if "Bearer" not in c else "--header=Authorization: Bearer ***" for c in cmd]
    print("$", " ".join(shown))
    print(run.stdout[-15000:], run.stderr[-3000:])
    exit_code = run.returncode  # not the CompletedProcess: its args hold the token
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    assert exit_code == 0, summary
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary
    return summary
