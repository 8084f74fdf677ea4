"""Figures of one profile's samples: per time slice, per request name, and the spike's
recovery. A sample is (start, milliseconds, error kind or "", request name), start in
seconds since the profile began (when the request was sent, so a request queued behind a
spike counts where it was sent)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

Sample = tuple[float, float, str, str]


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(samples: Iterable[Sample], seconds: float) -> dict:
    latencies, errors = [], Counter()
    for _, ms, error, _ in samples:
        latencies.append(ms)
        if error:
            errors[error] += 1
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / seconds if seconds > 0 else None,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
    }


def slices(samples: Sequence[Sample], seconds: float, slice_seconds: float) -> list[dict]:
    """One summary per slice of the run, with where it starts."""
    count = max(1, math.ceil(seconds / slice_seconds))
    buckets: list[list[Sample]] = [[] for _ in range(count)]
    for sample in samples:
        index = min(count - 1, max(0, int(sample[0] // slice_seconds)))
        buckets[index].append(sample)
    out = []
    for index, bucket in enumerate(buckets):
        start = index * slice_seconds
        length = min(slice_seconds, seconds - start) if seconds > start else slice_seconds
        out.append({"start_s": start} | summary(bucket, length))
    return out


def by_name(samples: Sequence[Sample], seconds: float) -> dict[str, dict]:
    grouped: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        grouped[sample[3]].append(sample)
    return {name: summary(group, seconds) for name, group in sorted(grouped.items())}


def recovery(
    samples: Sequence[Sample],
    spike: tuple[float, float],
    baseline_seconds: float,
    window: float,
    until: float,
    factor: float = 1.5,
    step: float = 1.0,
) -> dict:
    """Seconds from the end of the spike until the p95 of a sliding window of requests is
    back within ``factor`` x the p95 of the ``baseline_seconds`` before the spike.

    The window [s, s + window) slides from the spike's end by ``step``; the first s whose
    window's p95 is within the bound gives the recovery time s - end. None when no window
    up to ``until`` is (not recovered within the run)."""
    start, end = spike
    baseline = sorted(ms for t, ms, _, _ in samples if start - baseline_seconds <= t < start)
    baseline_p95 = percentile(baseline, 95)
    result = {
        "baseline_p95_ms": baseline_p95,
        "baseline_requests": len(baseline),
        "bound_ms": None if baseline_p95 is None else baseline_p95 * factor,
        "factor": factor,
        "window_s": window,
        "spike_p95_ms": percentile(sorted(ms for t, ms, _, _ in samples if start <= t < end), 95),
        "recovery_s": None,
        "windows": [],
    }
    if baseline_p95 is None:
        return result
    s = end
    while s + window <= until + 1e-9:
        window_ms = sorted(ms for t, ms, _, _ in samples if s <= t < s + window)
        p95 = percentile(window_ms, 95)
        result["windows"].append({"start_s": round(s - end, 3), "p95_ms": p95})
        if p95 is not None and p95 <= baseline_p95 * factor:
            result["recovery_s"] = round(s - end, 3)
            break
        s += step
    return result
