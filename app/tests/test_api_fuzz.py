"""Schemathesis with every check and its stateful phase against ``koinonia serve`` on
loopback, as the admin of a church and as a platform operator: the document is exact enough
that no generated request and no answer disagrees with it, and nothing answers 5xx."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from koinonia.services import conversations
from tests.conftest import church_user, register_church
from tests.messaging_fixtures import church_number, new_phone
from tests.served_app import served_app

# Phases, stateful bounds and the rules beyond the schema (shared with molecule/default).
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Operations that end the session the run is authenticated with when aimed at its own user
# (schemathesis finds the caller's id in GET /api/staff).
SESSION_ENDING = (
    "^(post_logout|post_change_password|patch_change_role|delete_remove_staff"
    "|post_transfer_ownership)$"
)
SEED = 4242
MAX_EXAMPLES = 8


async def test_fuzzed_api_as_a_church_admin_has_no_failures_and_no_5xx(app, servers, tmp_path):
    owner = await register_church(app.test_client(), "Fuzzed Chapel")
    admin = await church_user(app, owner.church_id, "admin")
    # A conversation, which only a member's text starts: its operations are reached too.
    member = await app.test_client().post(
        "/api/members",
        json={"firstName": "Tess", "phone": new_phone()},
        headers=owner.headers,
    )
    assert member.status_code == 201
    started = await conversations.handle_inbound(
        from_number=(await member.get_json())["phone"],
        to_number=await church_number(owner.church_id),
        body="Hello church",
        message_sid="SMfuzzconversation",
        redis=None,
    )
    assert started.handled
    async with served_app(servers, tmp_path / "koinonia.log") as base_url:
        await fuzzed(base_url, admin.token, tmp_path)


async def test_fuzzed_operator_api_has_no_failures_and_no_5xx(operator, servers, tmp_path):
    # The operators' own operations (queue, cache, locks, deliveries in doubt, phone
    # numbers): the church's are fuzzed as its admin above.
    async with served_app(servers, tmp_path / "koinonia.log") as base_url:
        summary = await fuzzed(
            base_url, operator.token, tmp_path, "--include-path-regex=^/api/admin/"
        )
    # Reached as an operator, not only refused: no operation answered only 401/403.
    assert "Authentication failed" not in summary, summary


async def fuzzed(base_url: str, token: str, tmp_path: Path, *options: str) -> str:
    """Schemathesis run with every check and phase as the holder of `token`; its summary
    once it passed."""
    schemathesis = shutil.which("schemathesis")
    assert schemathesis, "schemathesis is not installed (the dev dependencies pin it)"
    cmd = [
        schemathesis,
        f"--config-file={CONFIG}",
        "run",
        f"{base_url}/openapi.json",
        f"--header=Authorization: Bearer {token}",
        "--checks=all",
        "--phases=examples,coverage,fuzzing,stateful",
        f"--max-examples={MAX_EXAMPLES}",
        f"--seed={SEED}",
        # Text as UTF-8 and PostgreSQL can carry it: no lone surrogates, no U+0000 (the
        # API refuses both with 422).
        "--generation-codec=utf-8",
        "--generation-allow-x00=false",
        "--workers=1",
        "--request-timeout=30",
        f"--exclude-operation-id-regex={SESSION_ENDING}",
        "--report=junit",
        f"--report-dir={tmp_path}",
        "--output-truncate=false",
        "--no-color",
        *options,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 600)
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    summary = text[text.rfind("SUMMARY") :]
    assert proc.returncode == 0, text[-20000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary
    return summary
