"""Property-based API testing (Schemathesis) through the balancer, as the owner of a church
of its own (registered here, so generated messages to "all" reach no one of the other
tests): a bounded number of examples per operation, no 5xx and no response that breaks
the published OpenAPI schema."""

import shutil
import subprocess
import uuid

from .conftest import HTTPS_PORT, https

# Operations that would end the session the run is authenticated with.
EXCLUDED_PATHS = r"^/api/auth/(logout|password)$"


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
        "run",
        f"https://127.0.0.1:{HTTPS_PORT}/openapi.json",
        "--tls-verify=false",
        f"--header=Authorization: Bearer {token}",
        "--checks=not_a_server_error,response_schema_conformance",
        "--phases=examples,fuzzing",
        "--max-examples=10",
        "--seed=20261123",
        "--workers=1",
        "--request-timeout=30",
        f"--exclude-path-regex={EXCLUDED_PATHS}",
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
