"""systemd's own audit of a unit's sandbox, for the scenarios that check one (app, data,
loadbalancer): `systemd-analyze security` rates a unit from 0 (locked down) to 10
(exposed); "OK" is below 4."""

from __future__ import annotations

import re

GOOD_LABELS = ("OK", "SAFE", "PERFECT")


def assert_sandboxed(host, unit: str, max_score: float) -> float:
    """Fail unless ``unit`` rates OK or better and at most ``max_score``; returns the score."""
    out = host.check_output(f"systemd-analyze security {unit} --no-pager")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out)
    assert match, out[-500:]
    score, label = float(match.group(1)), match.group(2)
    print(f"{unit}: exposure {score} {label}")
    assert label in GOOD_LABELS, out[-1500:]
    assert score <= max_score, out[-1500:]
    return score
