"""The API's docs page, as a new user meets it: Debian's Chromium, headless, opens
https://<balancer>/docs, Swagger UI renders from the service's own assets under the page's
Content-Security-Policy (nothing blocked, nothing from elsewhere), and the page lists every
operation of /openapi.json. The screenshot is kept in .cache/docs-page.png for a person to see.

--virtual-time-budget makes Chromium wait for the page: virtual time stands still while a
fetch is pending (the bundle, the document) and runs the page's timers, so the DOM is
normally dumped once Swagger UI has rendered. Once, with the cores fully busy (2026-12-07),
a dump still showed Swagger UI's loading spinner and the screenshot seconds later the whole
page; such a dump is taken again (see the test), as is one whose request for the definition
got no answer ("Failed to fetch").
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from .conftest import HTTPS_PORT, LB_VARS, https

REPO = pathlib.Path(__file__).resolve().parents[4]
SCREENSHOT = REPO / ".cache" / "docs-page.png"
DOCS_URL = f"https://127.0.0.1:{HTTPS_PORT}/docs"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch"}
DEFAULT_CSP = LB_VARS.get(
    "nginx_content_security_policy",
    "default-src 'none'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
)


class _Operations(HTMLParser):
    """(METHOD, path) of every operation Swagger UI rendered."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[tuple[str, str]] = set()
        self._method: str | None = None
        self._in_method = False

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if "opblock-summary-method" in classes:
            self._in_method = True
        elif "opblock-summary-path" in classes and self._method:
            self.found.add((self._method, dict(attrs)["data-path"]))

    def handle_data(self, data):
        if self._in_method:
            self._method = data.strip().upper()
            self._in_method = False


def _chromium(profile: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: scripts/setup-host.sh installs it"
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # root on the CI machine
            "--disable-gpu",
            "--no-proxy-server",
            "--ignore-certificate-errors",  # the scenario's certificate is self-signed
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=30000",
            *args,
            DOCS_URL,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line
        and ("Content Security Policy" in line or "Refused" in line or "Failed to load" in line)
    ]


@pytest.fixture(scope="module")
def documented_operations():
    r = https("GET", "/openapi.json")
    assert r.status == 200, r
    return {
        (method.upper(), path)
        for path, item in r.json()["paths"].items()
        for method in item
        if method in METHODS
    }


SWAGGER_ERRORS = ("errors-wrapper", "Failed to load API definition")


def _still_loading(dom: str) -> bool:
    """Swagger UI's spinner: the definition not rendered yet."""
    return 'class="loading"' in dom


def _fetch_failed(dom: str) -> bool:
    """Swagger UI's "Failed to fetch": the browser got no answer to its request for the
    definition (a network error, not an HTTP status, which it would name instead)."""
    return "Failed to fetch" in dom


def _network_lines(stderr: str) -> list[str]:
    """What Chromium logged about its requests failing."""
    return [line[-300:] for line in stderr.splitlines() if "net::" in line or "ERR_" in line][-5:]


def _swagger_state(dom: str) -> str:
    """What Swagger UI shows besides operations: its error, its spinner, or nothing."""
    for marker in SWAGGER_ERRORS:
        if marker in dom:
            return "an error: " + re.sub(r"<[^>]+>", " ", dom[dom.index(marker) :][:600])
    if _still_loading(dom):
        return "its loading spinner (the definition not rendered yet)"
    return "no spinner and no error"


def test_docs_page_lists_every_operation_in_a_real_browser(
    tmp_path, documented_operations, healthy_stack
):
    assert len(documented_operations) > 20
    # A dump that caught Swagger UI still loading, or whose request for the definition got
    # no answer at all (seen on the loaded machine, 2026-12-08), is taken again, at most twice
    # more, and says so; an HTTP error on the page, or a page that rendered some operations
    # but not all, fails at once.
    for attempt in range(3):
        run = _chromium(tmp_path / f"profile{attempt}", "--dump-dom")
        assert run.returncode == 0, run.stderr[-2000:]
        assert _console_errors(run.stderr) == []
        rendered = _Operations()
        rendered.feed(run.stdout)
        if rendered.found or not (_still_loading(run.stdout) or _fetch_failed(run.stdout)):
            break
        print(
            f"dump {attempt + 1}: Swagger UI shows {_swagger_state(run.stdout)[:120]}; "
            f"Chromium's network errors: {_network_lines(run.stderr)}"
        )
    assert rendered.found == documented_operations, (
        f"Swagger UI shows {_swagger_state(run.stdout)} (dump {attempt + 1})",
        _network_lines(run.stderr),
        sorted(documented_operations - rendered.found),
        sorted(rendered.found - documented_operations),
    )


def test_docs_page_screenshot_is_kept_for_a_person(tmp_path):
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    run = _chromium(tmp_path / "profile", f"--screenshot={SCREENSHOT}", "--window-size=1280,2000")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == []
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_docs_page_policy_is_the_apps_and_the_api_keeps_default_src_none():
    page = https("GET", "/docs", headers={"Accept": "text/html"})
    assert page.status == 200
    policies = [v for k, v in page.header_list if k.lower() == "content-security-policy"]
    assert len(policies) == 1
    assert "script-src 'nonce-" in policies[0] and "default-src 'none'" in policies[0]
    for path in ("/openapi.json", "/docs/static/swagger-ui-bundle.js", "/health"):
        r = https("GET", path)
        assert r.status == 200, path
        assert r.headers["content-security-policy"] == DEFAULT_CSP, path
