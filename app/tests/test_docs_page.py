"""The docs page works in a browser behind a strict CSP: Swagger UI from the packaged
distribution, served by the service, named with the response's nonce; nothing from elsewhere."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from swagger_ui_bundle import swagger_ui_path

from koinonia.docs import ASSETS


class _Page(HTMLParser):
    """The page's scripts and style sheets: (tag, url, nonce) of each."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str, str | None]] = []
        self.inline_scripts = 0
        self.openapi_url: str | None = None
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script":
            self._in_script = True
            if attributes.get("src"):
                self.loads.append((tag, attributes["src"], attributes.get("nonce")))
        elif tag == "link":
            self.loads.append(
                (f"link:{attributes.get('rel')}", attributes["href"], attributes.get("nonce"))
            )
        if attributes.get("id") == "swagger-ui":
            self.openapi_url = attributes.get("data-openapi-url")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts += 1


def _directives(policy: str) -> dict[str, list[str]]:
    result = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        result[name] = sources
    return result


async def _page(client):
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    page = _Page()
    page.feed(await response.get_data(as_text=True))
    return response, page


async def test_docs_page_loads_swagger_ui_from_this_origin_only(client):
    _, page = await _page(client)
    urls = [url for _, url, _ in page.loads]
    assert "/docs/static/swagger-ui-bundle.js" in urls
    assert "/docs/static/swagger-ui.css" in urls
    assert all(url.startswith("/docs/static/") for url in urls), urls
    assert page.inline_scripts == 0
    assert page.openapi_url == "/openapi.json"


async def test_docs_page_csp_allows_exactly_the_scripts_and_styles_it_names(client):
    response, page = await _page(client)
    policy = _directives(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"]
    nonce_source = policy["script-src"]
    assert len(nonce_source) == 1 and re.fullmatch(r"'nonce-[A-Za-z0-9_-]{20,}'", nonce_source[0])
    nonce = nonce_source[0][len("'nonce-") : -1]
    assert policy["style-src"] == [f"'nonce-{nonce}'"]
    assert policy["connect-src"] == ["'self'"]  # the document and "Try it out", nothing else
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'none'"]
    for tag, url, tag_nonce in page.loads:
        if tag in ("script", "link:stylesheet"):
            assert tag_nonce == nonce, (tag, url)
    assert response.headers["Cache-Control"] == "no-store"


async def test_each_docs_response_has_its_own_nonce(client):
    first, _ = await _page(client)
    second, _ = await _page(client)
    assert first.headers["Content-Security-Policy"] != second.headers["Content-Security-Policy"]


async def test_every_asset_the_page_names_is_served_from_the_package(client):
    _, page = await _page(client)
    types = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for _, url, _ in page.loads:
        response = await client.get(url)
        assert response.status_code == 200, url
        name = url.rsplit("/", 1)[1]
        assert types[Path(name).suffix] in response.content_type, (url, response.content_type)
        assert await response.get_data() == (ASSETS[name] / name).read_bytes()
        assert response.cache_control.max_age == 86400
    bundle = await client.get("/docs/static/swagger-ui-bundle.js")
    packaged = Path(str(swagger_ui_path)) / "swagger-ui-bundle.js"
    assert await bundle.get_data() == packaged.read_bytes()


async def test_docs_assets_revalidate_with_etags(client):
    first = await client.get("/docs/static/swagger-ui.css")
    again = await client.get(
        "/docs/static/swagger-ui.css", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status_code == 304


async def test_files_the_page_does_not_name_are_not_served(client):
    for path in (
        "/docs/static/index.html",
        "/docs/static/swagger-ui-bundle.js.map",
        "/docs/static/swagger-initializer.js",
        "/docs/static/..%2Fdocs.py",
        "/docs/static/",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert (await response.get_json())["error"]["code"] == "not_found", path


async def test_the_docs_page_is_not_in_the_api_document(client):
    document = await (await client.get("/openapi.json")).get_json()
    assert not [path for path in document["paths"] if path.startswith("/docs")]
