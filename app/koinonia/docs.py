"""The API's documentation page: Swagger UI from the packaged distribution, served here.

``GET /docs`` renders Swagger UI for ``/openapi.json`` with no inline code and nothing from
another origin: its scripts and style sheet are files served under ``/docs/static/`` (Swagger
UI's dist files from the ``swagger-ui-bundle-v2`` wheel, plus ``static/docs.js``, which starts
it), each named with the response's nonce. The page's Content-Security-Policy allows exactly
those (``'nonce-…'``), the data: images of Swagger UI's style sheet and requests to this
origin (the document, "Try it out"); NGINX passes this policy on for the page only and keeps
``default-src 'none'`` on every other response.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from quart import Blueprint, Response, render_template_string, send_from_directory, url_for
from quart_schema import hide
from swagger_ui_bundle import swagger_ui_path

from koinonia.errors import NotFound

DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"

_SWAGGER_UI_DIR = Path(str(swagger_ui_path))
_OWN_DIR = Path(__file__).resolve().parent / "static"
# Every file the page loads, and where it lives; nothing else is served under /docs/static/.
ASSETS: dict[str, Path] = {
    "swagger-ui-bundle.js": _SWAGGER_UI_DIR,
    "swagger-ui.css": _SWAGGER_UI_DIR,
    "favicon-32x32.png": _SWAGGER_UI_DIR,
    "docs.js": _OWN_DIR,
}
# The files change only with a release (a new wheel): browsers keep them a day, then revalidate.
ASSET_MAX_AGE_SECONDS = 86400

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{{ title }}</title>
  <link rel="stylesheet" nonce="{{ nonce }}" href="{{ asset('swagger-ui.css') }}">
  <link rel="icon" type="image/png" href="{{ asset('favicon-32x32.png') }}">
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{{ openapi_url }}"></div>
  <script nonce="{{ nonce }}" src="{{ asset('swagger-ui-bundle.js') }}"></script>
  <script nonce="{{ nonce }}" src="{{ asset('docs.js') }}"></script>
</body>
</html>
"""


def content_security_policy(nonce: str) -> str:
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "frame-ancestors 'self'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


bp = Blueprint("docs", __name__)


@bp.get(DOCS_PATH)
@hide
async def docs_page() -> Response:
    nonce = secrets.token_urlsafe(18)
    html = await render_template_string(
        PAGE,
        title="Koinonia API",
        nonce=nonce,
        openapi_url=OPENAPI_PATH,
        asset=lambda name: url_for("docs.asset", name=name),
    )
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = content_security_policy(nonce)
    # Each response has its own nonce: a stored copy would not match a new policy.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get(f"{DOCS_PATH}/static/<name>")
@hide
async def asset(name: str) -> Response:
    directory = ASSETS.get(name)
    if directory is None:
        raise NotFound()
    response = await send_from_directory(
        directory, name, cache_timeout=ASSET_MAX_AGE_SECONDS, conditional=True
    )
    return response
