"""The OpenAPI document as a contract: a client generated from it at test time
(openapi-python-client) covers every operation and runs a church's first journey against
``koinonia serve`` on loopback: register, add members and a group, send, read the
deliveries."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from tests.messaging_fixtures import new_phone
from tests.served_app import served_app

PACKAGE = "koinonia_client"
# Enums as Literal types: time zone names such as GMT+0 and GMT0 make one enum member name.
GENERATOR_CONFIG = "literal_enums: true\n"
# The import's text/csv body has no model in the client (its JSON and multipart bodies do);
# any other warning means part of the document was lost.
KNOWN_WARNINGS = {("POST /api/members/import", "Unsupported content type text/csv")}


def _generate(document: dict, directory: Path) -> str:
    generator = shutil.which("openapi-python-client")
    assert generator, "openapi-python-client is not installed (the dev dependencies pin it)"
    (directory / "openapi.json").write_text(json.dumps(document))
    (directory / "config.yaml").write_text(GENERATOR_CONFIG)
    run = subprocess.run(
        [
            generator,
            "generate",
            f"--path={directory / 'openapi.json'}",
            f"--output-path={directory / PACKAGE}",
            f"--config={directory / 'config.yaml'}",
            "--meta=none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def _warnings(output: str) -> set[tuple[str, str]]:
    """(operation, reason) of each "WARNING parsing METHOD PATH" block of the output."""
    found = set()
    blocks = re.split(r"^WARNING parsing ", output, flags=re.MULTILINE)[1:]
    for block in blocks:
        operation = re.match(r"(\S+ \S+) within", block)
        lines = [line for line in block.splitlines()[1:] if line.strip()]
        assert operation and lines, block
        found.add((operation.group(1), lines[0].strip()))
    return found


async def test_generated_client_covers_every_operation_and_runs_a_first_journey(
    app, servers, make_worker, tmp_path
):
    document = await (await app.test_client().get("/openapi.json")).get_json()
    output = _generate(document, tmp_path)
    assert _warnings(output) == KNOWN_WARNINGS, output

    generated = {path.stem for path in (tmp_path / PACKAGE / "api").glob("*/*.py")}
    operation_ids = {
        operation["operationId"]
        for path_item in document["paths"].values()
        for operation in path_item.values()
    }
    assert operation_ids <= generated, sorted(operation_ids - generated)

    sys.path.insert(0, str(tmp_path))
    try:
        await _journey(await make_worker(), servers, tmp_path / "koinonia.log")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _api(module: str):
    return importlib.import_module(f"{PACKAGE}.api.{module}")


async def _journey(worker, servers, log_path: Path) -> None:
    client_module = importlib.import_module(PACKAGE)
    models = importlib.import_module(f"{PACKAGE}.models")
    register = _api("auth.post_register")
    create_member = _api("members.post_create_member")
    create_group = _api("groups.post_create_group")
    add_group_members = _api("groups.post_add_group_members")
    create_message = _api("messages.post_create_message")
    get_message = _api("messages.get_get_message")

    async with served_app(servers, log_path) as base_url:
        anonymous = client_module.Client(base_url=base_url, raise_on_unexpected_status=True)
        session = await register.asyncio(
            client=anonymous,
            body=models.RegisterIn(
                church_name="Generated Chapel",
                email=f"owner-{uuid.uuid4().hex[:12]}@example.org",
                password="a generated password",
            ),
        )
        assert isinstance(session, models.SessionOut), session
        assert session.user.role == "owner"
        client = client_module.AuthenticatedClient(
            base_url=base_url, token=session.token, raise_on_unexpected_status=True
        )

        members = []
        for first_name in ("Ruth", "Boaz"):
            member = await create_member.asyncio(
                client=client, body=models.MemberIn(first_name=first_name, phone=new_phone())
            )
            assert isinstance(member, models.MemberOut), member
            members.append(member)
        group = await create_group.asyncio(client=client, body=models.GroupIn(name="Choir"))
        assert isinstance(group, models.GroupOut), group
        added = await add_group_members.asyncio(
            group_id=group.id,
            client=client,
            body=models.GroupMembersIn(member_ids=[m.id for m in members]),
        )
        assert isinstance(added, models.AddedOut) and added.added == 2, added

        message = await create_message.asyncio(
            client=client,
            body=models.MessageIn(
                target_type="group", target_ids=[str(group.id)], content="Practice at 7"
            ),
        )
        assert isinstance(message, models.MessageOut), message
        assert message.recipient_count == 2

        # A real SAQ worker (the log provider: no texts leave) sends the deliveries.
        assert await worker.run_until_idle() >= 1
        detail = await get_message.asyncio(message_id=message.id, client=client)
        assert isinstance(detail, models.MessageDetailOut), detail
        assert sorted(d.phone for d in detail.deliveries) == sorted(m.phone for m in members)
        assert {d.status for d in detail.deliveries} == {"sent"}
        assert detail.delivery_counts.additional_properties["sent"] == 2
