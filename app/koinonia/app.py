"""The application factory and its lifespan.

``create_app(settings)`` builds a Quart app; its ``before_serving`` opens the database pool
(through PgBouncer) and the Redis client, its ``after_serving`` closes them. Hypercorn loads
``koinonia.app:asgi_app()`` via ``koinonia serve``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from quart import Request
from quart_schema import QuartSchema

from koinonia import db
from koinonia.docs import bp as docs_bp
from koinonia.errors import register_error_handlers
from koinonia.metrics import Metrics
from koinonia.metrics import bp as metrics_bp
from koinonia.openapi import KoinoniaOpenAPIProvider
from koinonia.responses import OrjsonProvider, install_response_conversion
from koinonia.settings import Settings, load_settings
from koinonia.stores.cache import CacheService
from koinonia.stores.client import create_redis
from koinonia.stores.session_cache import RevocationListener, SessionCache
from koinonia.web import resources
from koinonia.web.edge import RequestEdge
from koinonia.web.fast_path import FastPath
from koinonia.web.state import AppState, KoinoniaApp

log = logging.getLogger(__name__)


class KoinoniaRequest(Request):
    # POST paths whose bodies may exceed MAX_CONTENT_LENGTH, and their own limit. Decided as
    # the request is created, before routing: by the time a view runs, the body has been
    # arriving (and been measured against the limit) for a while.
    body_limits: ClassVar[dict[str, int]] = {}

    def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
        raised = self.body_limits.get(path) if method == "POST" else None
        if raised is not None:
            kwargs["max_content_length"] = raised
        super().__init__(method, scheme, path, *args, **kwargs)
        if raised is not None:
            self.max_content_length = raised  # what the multipart parser reads

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        # Quart decodes the body as UTF-8 outside its JSON error handling, so a body that is
        # not UTF-8 would be a 500; treat it like any other malformed JSON (400).
        try:
            return await super().get_json(force=force, silent=silent, cache=cache)
        except UnicodeDecodeError as error:
            return None if silent else self.on_json_loading_failed(error)


def create_app(settings: Settings | None = None) -> KoinoniaApp:
    settings = settings or load_settings()
    from koinonia.routes import BLUEPRINTS
    from koinonia.routes.member_import import IMPORT_PATH

    app = KoinoniaApp("koinonia", static_folder=None)
    app.request_class = type(
        "KoinoniaRequest",
        (KoinoniaRequest,),
        {"body_limits": {IMPORT_PATH: settings.member_import_max_bytes}},
    )
    # Quart answers 413 itself once a body passes this size.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.config["QUART_SCHEMA_CONVERSION_PREFERENCE"] = "pydantic"

    QuartSchema(
        app,
        openapi_path="/openapi.json",
        # The docs page is koinonia.docs: Swagger UI served from its wheel, not a CDN.
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={"title": "Koinonia API", "version": "1.0.0"},
        security_schemes={
            "bearerAuth": {"type": "http", "scheme": "bearer"},
            "cookieAuth": {"type": "apiKey", "in_": "cookie", "name": settings.session_cookie_name},
        },
        pydantic_dump_options={"by_alias": True},
        openapi_provider_class=KoinoniaOpenAPIProvider,
    )
    # quart-schema's conversion of returned dicts costs ~0.3 ms a response (see responses.py).
    install_response_conversion(app)
    app.json = OrjsonProvider(app, default=app.json.default)

    state = AppState(settings=settings)
    app.koinonia = state
    metrics = state.metrics = Metrics(settings.release)
    edge = RequestEdge(metrics, access_log=settings.access_log)
    edge.install(app)
    register_error_handlers(app)

    @app.before_serving
    async def _open_resources() -> None:
        state.shutting_down = False
        state.redis = create_redis(settings)
        state.db = await db.init_db(settings)
        state.cache = CacheService(state.redis, metrics, settings)
        state.cache.start()
        state.session_cache = SessionCache(
            settings.session_cache_seconds, settings.session_ttl_seconds
        )
        state.revocations = RevocationListener(
            create_redis(settings, reconnect=False), state.session_cache, state.cache.local
        )
        state.revocations.start()
        await resources.start(state, metrics)
        log.info("koinonia started")

    @app.after_serving
    async def _close_resources() -> None:
        state.shutting_down = True
        # The queue and the event subscription first: they use the Redis client closed below.
        await resources.stop(state)
        if state.cache is not None:
            await state.cache.stop()
        if state.revocations is not None:
            await state.revocations.stop()
            state.revocations = state.session_cache = None
        if state.redis is not None:
            await state.redis.aclose()
            state.redis = None
        if state.db is not None:
            await db.close_db(state.db)
            state.db = None
        log.info("koinonia stopped")

    # In front of Quart's own ASGI entry (Quart.__call__ calls ``app.asgi_app``).
    app.fast_path = FastPath(app.asgi_app, state, edge)
    app.asgi_app = app.fast_path  # type: ignore[method-assign]
    app.register_blueprint(metrics_bp)
    app.register_blueprint(docs_bp)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app


def asgi_app() -> KoinoniaApp:
    """Entry point for Hypercorn (``koinonia.app:asgi_app()``): settings from the environment."""
    from koinonia.logging import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
