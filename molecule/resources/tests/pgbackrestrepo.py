"""Helpers shared by the scenarios with a pgBackRest repository (backup, ha-stack): commands
as the postgres user, and the repository's `info` for the stanza."""

from __future__ import annotations

import json

STANZA = "koinonia"


def as_postgres(command: str) -> str:
    return f"runuser -u postgres -- {command}"


def repo_info(repo, stanza: str = STANZA) -> dict:
    """`pgbackrest info` of the stanza on the repository host (a Testinfra host)."""
    result = repo.run(as_postgres(f"pgbackrest --stanza={stanza} --output=json info"))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)[0]
