"""Property-based API testing (Schemathesis) through the balancer, as the owner of a church
of its own (registered here, so generated messages to "all" reach no one of the other
tests): every check and the stateful phase, a bounded number of examples per operation,
no failure and no 5xx."""

import shutil
import subprocess
import uuid
from pathlib import Path

from .conftest import HTTPS_PORT, https

# Stateful bounds and the rules beyond the schema, shared with app/tests/test_api_fuzz.py.
CONFIG = Path(__file__).resolve().parents[4] / "app" / "tests" / "schemathesis.toml"
# Operations that end the session the run is authenticated with (when aimed at its user).
SESSION_ENDING = (
    "^(post_logout|post_change_password|patch_change_role|delete_remove_staff"
    "|post_transfer_ownership)$"
)


def test_7_fuzzed_api_answers_no_5xx_and_conforms_to_its_openapi_schema(tmp_path, healthy_stack):
    schemathesis = shutil.which("schemathesis")
    assert schemathesis, "schemathesis is not installed (the dev dependencies pin it)"
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
    token = r.json()["token"]
    cmd = [
        schemathesis,
        f"--config-file={CONFIG}",
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
        "--report=junit",
        f"--report-dir={tmp_path}",
        "--output-truncate=false",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    shown = [c if "Bearer" not in c else "--header=Authorization: Bearer ***" for c in cmd]
    print("$", " ".join(shown))
    print(run.stdout[-15000:], run.stderr[-3000:])
    exit_code = run.returncode  # not the CompletedProcess: its args hold the token
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    assert exit_code == 0, summary
