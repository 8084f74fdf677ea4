"""The load profiles as data: who the virtual users are and how many run when.

A profile is a list of stages, each "this many users until this second" (Locust's
LoadTestShape ticks through them in bench/load/driver.py). The spike profile holds a
baseline before and after its spike so that recovery is measured on the same traffic the
baseline p95 was: 0 -> baseline -> spike -> baseline -> 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The realistic mix (bench/load/driver.py StaffUser) and the conversation run's two sides.
STAFF, TEXTER, RESPONDER = "staff", "texter", "responder"


@dataclass(frozen=True)
class Stage:
    until: float  # seconds since the profile started
    users: int
    spawn_rate: float  # users started (or stopped) per second


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    users: tuple[str, ...]  # user classes (their weights are in the driver)
    stages: tuple[Stage, ...]
    slice_seconds: float  # p50/p95/p99 per slice of this length
    # Spike only: the sliding window recovery is measured with, and the pre-spike seconds
    # whose p95 is the baseline.
    recovery_window: float = 0
    baseline_seconds: float = 0
    claim: str = ""
    think_seconds: tuple[float, float] = (0.2, 1.0)  # each user's wait between tasks
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.stages[-1].until

    @property
    def spike(self) -> tuple[float, float] | None:
        """(start, end) in profile seconds of the stage with the most users, for spikes."""
        if not self.recovery_window:
            return None
        peak = max(range(len(self.stages)), key=lambda i: self.stages[i].users)
        start = self.stages[peak - 1].until if peak else 0.0
        return start, self.stages[peak].until

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"seconds": self.seconds, "spike": self.spike}


THROUGHPUT_CLAIM = (
    "1,500-2,000 req/s (checklist, 'Load test with k6', 3 app servers behind NGINX); "
    "1,500-3,000 req/s and 2,000-5,000 concurrent users (Phase 2 summary)"
)


def build(
    smoke: bool,
    *,
    load_users: int = 40,
    spike_base: int = 10,
    spike_users: int = 80,
    soak_users: int = 20,
    soak_seconds: float = 900,
    texters: int = 12,
) -> dict[str, Profile]:
    """Every profile, at the given size; `smoke` makes each a few seconds long and small
    (the soak 20 s: four slices, enough to show drift is computed), so that `make test`
    proves they run."""
    if smoke:
        load_users, spike_base, spike_users, soak_users, texters = 8, 3, 10, 5, 4
        soak_seconds = 20
    slice_s = 5.0 if smoke else 10.0
    ramp = 5.0 if smoke else 20.0
    load_hold = 10.0 if smoke else 120.0
    base_hold, spike_hold, after = (10.0, 6.0, 12.0) if smoke else (40.0, 30.0, 60.0)
    conversation_hold = 10.0 if smoke else 120.0
    profiles = [
        Profile(
            "smoke",
            "Smoke: a few users, the realistic mix",
            (STAFF,),
            (Stage(10.0 if smoke else 30.0, 2 if smoke else 5, 5),),
            slice_s,
            claim="a baseline before the others (checklist: `npm run loadtest:smoke`)",
        ),
        Profile(
            "load",
            "Load: steady users, the realistic mix",
            (STAFF,),
            (Stage(ramp, load_users, load_users / ramp), Stage(ramp + load_hold, load_users, 1)),
            slice_s,
            claim=THROUGHPUT_CLAIM,
            think_seconds=(0.1, 0.5),
        ),
        Profile(
            "spike",
            "Spike: baseline, a sudden spike of users, baseline again",
            (STAFF,),
            (
                Stage(base_hold, spike_base, spike_base),
                # The spike's users arrive within about a second and log in at once.
                Stage(base_hold + spike_hold, spike_users, spike_users),
                Stage(base_hold + spike_hold + after, spike_base, spike_users),
            ),
            slice_s,
            recovery_window=3.0 if smoke else 5.0,
            baseline_seconds=6.0 if smoke else 20.0,
            claim="'sudden traffic spike' (checklist: `npm run loadtest:spike`); no figure given",
            think_seconds=(0.1, 0.5),
        ),
        Profile(
            "soak",
            "Soak: steady users for a long time (memory and latency drift)",
            (STAFF,),
            (Stage(soak_seconds, soak_users, soak_users),),
            max(slice_s, 60.0) if soak_seconds >= 600 else slice_s,
            claim="'long-running test (stability)' (checklist: `npm run loadtest:soak`); "
            "99.9% availability",
        ),
        Profile(
            "conversation",
            "Conversation: members text in through signed webhooks, staff reply",
            (TEXTER, RESPONDER),
            (Stage(ramp, texters, texters / ramp), Stage(ramp + conversation_hold, texters, 1)),
            slice_s,
            claim="'message-focused test' (checklist: `npm run loadtest:conversation`); "
            "webhooks rate-limited at 50 req/s per address by the balancer",
        ),
    ]
    return {p.name: p for p in profiles}
