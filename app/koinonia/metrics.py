"""Prometheus metrics: HTTP requests by route and status, plus hooks for the other parts.

Each app gets its own ``CollectorRegistry`` (no module globals). With several Hypercorn
workers set ``PROMETHEUS_MULTIPROC_DIR`` (``koinonia serve`` does it for you) so ``/metrics``
aggregates every worker rather than answering for whichever one took the scrape.

Other modules record through ``get_metrics()``:

* ``cache_events.labels(family=..., result="hit"|"miss"|"error").inc()``
* ``queue_depth.labels(queue=..., state=...).set(n)`` — typically from a scrape hook
* ``jobs.labels(function=..., outcome="complete"|"failed"|"retried").inc()``
* ``add_scrape_hook(async_fn)``: awaited before each scrape to refresh gauges.

The SAQ worker (``koinonia worker``, its own process) has its own ``WorkerMetrics``: one
plain registry per worker process (never multiprocess: each worker is its own scrape target,
so the cron-cycle gauge is a per-instance series) served by ``start_worker_metrics_server`` on
``KOINONIA_WORKER_METRICS_BIND``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from quart import Blueprint, Quart, Response

from koinonia import db
from koinonia.openapi import document_text_response

log = logging.getLogger(__name__)

ScrapeHook = Callable[[], Awaitable[None]]


class Metrics:
    def __init__(self, release: str = "dev") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.build_info = Gauge(
            "koinonia_build_info",
            "Always 1; the release label says which build serves.",
            ["release"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.build_info.labels(release=release).set(1)
        self.http_requests = Counter(
            "koinonia_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "koinonia_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.cache_events = Counter(
            "koinonia_cache_events_total",
            "Cache lookups by key family and result (hit, miss, error).",
            ["family", "result"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "koinonia_queue_jobs",
            "Jobs in the queue by state.",
            ["queue", "state"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.jobs = Counter(
            "koinonia_jobs_total",
            "Finished jobs by function and outcome.",
            ["function", "outcome"],
            registry=self.registry,
        )
        self.db_pool = Gauge(
            "koinonia_db_pool_connections",
            "Database pool connections by state (size, idle, max).",
            ["state"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._scrape_hooks: list[ScrapeHook] = []
        # The labelled children per (route, method, status), so a request skips ``labels()``
        # (label validation and a lock) twice: a few microseconds of every request's overhead.
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One finished HTTP request (``web/edge.py`` calls this for every request)."""
        labelled = self._http_children.get((route, method, status))
        if labelled is None:
            labelled = self._http_children[(route, method, status)] = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method),
            )
        labelled[0].inc()
        labelled[1].observe(seconds)

    def add_scrape_hook(self, hook: ScrapeHook) -> None:
        self._scrape_hooks.append(hook)

    async def refresh(self) -> None:
        stats = db.pool_stats()
        if stats:
            for state, value in stats.items():
                self.db_pool.labels(state=state).set(value)
        for hook in self._scrape_hooks:
            try:
                await hook()
            except Exception:
                log.warning("metrics scrape hook failed", exc_info=True)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def get_metrics(app: Quart | None = None) -> Metrics:
    from koinonia.web.state import get_state

    metrics = get_state(app).metrics
    if metrics is None:
        raise RuntimeError("metrics not installed (install_metrics)")
    return metrics


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@document_text_response(200, "text/plain", "Prometheus text format")
async def metrics_endpoint() -> Response:
    """Prometheus text format; unauthenticated, to be reached only from inside the network."""
    metrics = get_metrics()
    await metrics.refresh()
    return Response(metrics.render(), content_type=CONTENT_TYPE_LATEST)


# --- the SAQ worker's metrics ---------------------------------------------------------------

# SAQ's job status after processing -> the ``outcome`` label of ``koinonia_jobs_total``.
JOB_OUTCOMES = {
    "complete": "complete",
    "failed": "failed",
    "queued": "retried",  # SAQ re-queued it (job.retry) for another attempt
    "aborted": "aborted",
    "aborting": "aborted",
}


class WorkerMetrics:
    """The worker process's metrics, in its own registry (served by the worker itself)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.cron_last_run_cycle = Gauge(
            "koinonia_cron_last_run_cycle",
            "Cycle number (unix time // period) of the last cron cycle this worker ran "
            "under its lock.",
            ["cron"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.jobs = Counter(
            "koinonia_jobs_total",
            "Processed jobs by function and outcome (complete, failed, retried, aborted).",
            ["function", "outcome"],
            registry=self.registry,
        )

    def observe_job(self, function: str, status: str) -> None:
        outcome = JOB_OUTCOMES.get(status)
        if outcome is not None:
            self.jobs.labels(function=function, outcome=outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {bind!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def start_worker_metrics_server(
    bind: str, metrics: WorkerMetrics
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``metrics`` over HTTP (any path, ``/metrics`` included) in a daemon thread.

    Stop with ``server.shutdown(); server.server_close()``.
    """
    host, port = parse_bind(bind)
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("worker metrics on http://%s:%s/metrics", host, server.server_port)
    return server, thread
