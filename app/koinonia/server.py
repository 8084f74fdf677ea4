"""Hypercorn with N worker processes and a graceful shutdown that load balancers can see.

On SIGTERM (or SIGINT) each worker first marks the app as shutting down — ``/health/ready``
answers 503 at once — and keeps serving for ``KOINONIA_SHUTDOWN_DRAIN_SECONDS`` so the load
balancer stops sending new requests; then Hypercorn closes the listening socket, lets
in-flight requests finish (up to ``KOINONIA_GRACEFUL_TIMEOUT``) and runs the app's
``after_serving`` (Redis and database pools close).

The parent process owns the listening sockets (shared by the workers, as in Hypercorn's own
multi-worker mode) and forwards a shutdown to the workers through a multiprocessing event.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import tempfile
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.synchronize import Event as EventType
from typing import Any

import hypercorn.asyncio.run
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.run import worker_serve
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config, Sockets

from koinonia.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_APP = "koinonia.app:asgi_app"


def _load_app(app_path: str) -> Any:
    module_name, _, factory_name = app_path.partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    return factory()


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [settings.bind]
    config.workers = settings.workers
    config.graceful_timeout = settings.graceful_timeout
    config.accesslog = None  # our own access log carries the request id
    # Through our JSON handler rather than Hypercorn's plain-text one.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75  # longer than NGINX's upstream keepalive_timeout (60 s)
    config.include_server_header = False
    return config


class ClosingTCPServer(TCPServer):
    """Hypercorn's connection, closed as soon as the peer has closed it.

    Hypercorn (0.18) closes a connection's socket only when the connection's task group ends,
    and the group holds the keep-alive timer. A connection the peer closes while idle
    between requests (NGINX recycling an upstream connection, a client going away) therefore
    stays in CLOSE-WAIT for the whole ``keep_alive_timeout``: under load that is thousands of
    file descriptors, and the process hits its limit (EMFILE). Once reading has ended there
    is nothing left to wait for, so the timer stops and the socket closes; a request still
    being answered is cancelled by Hypercorn on that same end of input, as before.
    """

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


# worker_serve builds its connections from this module attribute; there is no setting for it.
hypercorn.asyncio.run.TCPServer = ClosingTCPServer  # type: ignore[misc]


def _loop_factory(settings: Settings):  # type: ignore[no-untyped-def]
    if settings.event_loop == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.new_event_loop
    return None


async def _shutdown_trigger(app: Any, settings: Settings, shutdown_event: EventType | None) -> None:
    from koinonia.web.state import get_state

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if shutdown_event is None:
        await stop.wait()
    else:
        while not stop.is_set() and not shutdown_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    get_state(app).shutting_down = True
    log.info(
        "shutdown requested: readiness now 503, draining",
        extra={"drainSeconds": settings.shutdown_drain_seconds},
    )
    await asyncio.sleep(settings.shutdown_drain_seconds)


def serve_worker(
    settings: Settings,
    config: Config,
    sockets: Sockets,
    shutdown_event: EventType | None,
    app_path: str,
) -> None:
    """One worker process: the app, Hypercorn's serve loop, our shutdown trigger."""
    app = _load_app(app_path)
    wrapped = ASGIWrapper(app)

    async def main() -> None:
        await worker_serve(
            wrapped,
            config,
            sockets=sockets,
            shutdown_trigger=lambda: _shutdown_trigger(app, settings, shutdown_event),
        )

    with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
        runner.run(main())


def serve(settings: Settings, app_path: str = DEFAULT_APP) -> int:
    config = hypercorn_config(settings)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers inherit this and write their metrics there; /metrics aggregates them.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="koinonia-metrics-")
    sockets = config.create_sockets()
    if settings.workers == 1:
        serve_worker(settings, config, sockets, None, app_path)
        return 0

    ctx = get_context("spawn")
    shutdown_event = ctx.Event()

    def request_shutdown(*_: object) -> None:
        shutdown_event.set()

    processes = []
    # Children inherit ignored SIGINT until they install their own handlers.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    for _ in range(settings.workers):
        process = ctx.Process(
            target=serve_worker,
            args=(settings, config, sockets, shutdown_event, app_path),
        )
        process.start()
        processes.append(process)
    signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGINT, request_shutdown)
    signal.signal(signal.SIGTERM, request_shutdown)

    exit_code = 0
    alive = list(processes)
    while alive:
        wait([p.sentinel for p in alive])
        for process in [p for p in alive if not p.is_alive()]:
            alive.remove(process)
            if process.exitcode and not shutdown_event.is_set():
                log.error("worker exited unexpectedly", extra={"exitCode": process.exitcode})
                exit_code = process.exitcode
                shutdown_event.set()
    for sock in sockets.insecure_sockets + sockets.secure_sockets:
        sock.close()
    return exit_code
