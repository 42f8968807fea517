"""Headless Chromium for the end-to-end tests: Debian's ``chromium`` driven by Playwright (no
browser download), kept on loopback, and a watch on what a page does wrong.

:func:`open_browser` yields a :class:`BrowserSession`: a page plus a :class:`PageWatch` that
collects console errors, uncaught page errors, failed requests (HTTP status >= 400, or no answer)
and every request that tried to leave 127.0.0.1 (those are blocked). A test ends with
``session.watch.assert_clean()``. Screenshots go to ``tests/artifacts/<name>/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image
from playwright.sync_api import ConsoleMessage, Locator, Page, Request, Response, Route, sync_playwright

from tests.object_stores import cache_dir
from tests.peers import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium (apt package ``chromium``); Playwright's own browsers are never downloaded."""

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    # WebGL without a GPU (OHIF's cornerstone3D renders with it): SwiftShader, in software.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
"""Where screenshots are kept (git-ignored)."""

INSTALL_OHIF = REPO_ROOT / "scripts" / "install-ohif.sh"

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
_BODY_EXCERPT = 600


def chromium() -> Path:
    """The Chromium executable; skips the test when it is missing (fails it under CI)."""
    override = os.environ.get("FILMLESS_TEST_CHROMIUM")
    path = Path(override) if override else CHROMIUM
    if not (path.is_file() and os.access(path, os.X_OK)):
        message = f"no Chromium at {path} (scripts/install-test-deps.sh installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def pinned_ohif_version() -> str:
    """``OHIF_VERSION`` of scripts/install-ohif.sh."""
    found = re.search(r"^OHIF_VERSION=(\S+)$", INSTALL_OHIF.read_text(), re.MULTILINE)
    assert found, f"{INSTALL_OHIF} pins no OHIF_VERSION"
    return found.group(1)


def ohif_dist() -> Path:
    """The OHIF dist scripts/install-ohif.sh installed (or ``FILMLESS_TEST_OHIF_DIST``); skips
    the test when it is missing (fails it under CI)."""
    override = os.environ.get("FILMLESS_TEST_OHIF_DIST")
    dist = Path(override) if override else cache_dir() / f"ohif-{pinned_ohif_version()}" / "dist"
    if not (dist / "index.html").is_file():
        message = f"no OHIF viewer in {dist} (bash scripts/install-ohif.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return dist


def is_local(url: str) -> bool:
    """Whether a request stays on this machine (loopback, or no network at all: data:, blob:)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome", "chrome-extension"):
        return True
    return (parts.hostname or "") in _LOCAL_HOSTS or parts.netloc in _LOCAL_HOSTS


@dataclass
class PageWatch:
    """What went wrong on a page: each entry is one line for the failure message.

    ``failed_requests`` covers requests whose URL contains one of ``watched_paths`` (default:
    all); ``allowed_console`` are patterns of console errors a test expects (e.g. the 401 of a
    wrong password it typed on purpose).
    """

    watched_paths: tuple[str, ...] = ()
    allowed_console: list[re.Pattern[str]] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    off_loopback: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def allow_console(self, pattern: str) -> None:
        self.allowed_console.append(re.compile(pattern))

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        location = message.location
        where = f" ({location.get('url', '')}:{location.get('lineNumber', '')})" if location else ""
        text = f"{message.text}{where}"
        if not any(p.search(text) for p in self.allowed_console):
            self.console_errors.append(text)

    def on_page_error(self, error: Exception) -> None:
        self.page_errors.append(f"{error}")

    def on_request(self, request: Request) -> None:
        self.requests.append(f"{request.method} {request.url}")

    def _watched(self, url: str) -> bool:
        return not self.watched_paths or any(p in url for p in self.watched_paths)

    def on_response(self, response: Response) -> None:
        if response.status < 400 or not self._watched(response.url):
            return
        request = response.request
        try:
            body = response.text()[:_BODY_EXCERPT]
        except Exception as exc:  # noqa: BLE001 - the body may be gone already
            body = f"<body unavailable: {exc}>"
        sent = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "range", "content-type")}
        sent["authorization"] = "present" if "authorization" in request.headers else "absent"
        received = {
            k: v for k, v in response.headers.items() if k.lower() in ("content-type", "www-authenticate")
        }
        self.failed_requests.append(
            f"{request.method} {response.url} -> {response.status}\n"
            f"    request headers: {sent}\n    response headers: {received}\n    body: {body}"
        )

    def on_request_failed(self, request: Request) -> None:
        if not is_local(request.url):
            return  # reported by the route as off_loopback
        failure = request.failure or "failed"
        # Aborted by the page itself (navigation, a cancelled prefetch): not a server failure.
        if "ERR_ABORTED" in failure or not self._watched(request.url):
            return
        self.failed_requests.append(f"{request.method} {request.url} -> no answer ({failure})")

    def route(self, route: Route) -> None:
        """Requests that leave the machine are refused and recorded."""
        self.off_loopback.append(f"{route.request.method} {route.request.url}")
        route.abort("blockedbyclient")

    def problems(self) -> list[str]:
        lines: list[str] = []
        for title, entries in (
            ("browser console errors", self.console_errors),
            ("uncaught page errors", self.page_errors),
            ("failed requests", self.failed_requests),
            ("requests off 127.0.0.1 (blocked)", self.off_loopback),
        ):
            if entries:
                lines.append(f"{title}:")
                lines.extend(f"  {entry}" for entry in entries)
        return lines

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "\n".join(problems)


@dataclass
class BrowserSession:
    page: Page
    watch: PageWatch
    artifacts: Path

    def screenshot(self, name: str, locator: Locator | None = None) -> Path:
        """Save a PNG of the page (or one element) as ``<artifacts>/<name>.png``."""
        path = self.artifacts / f"{name}.png"
        if locator is not None:
            locator.screenshot(path=str(path))
        else:
            self.page.screenshot(path=str(path), full_page=False)
        return path


@contextlib.contextmanager
def open_browser(
    base_url: str, artifacts: str, *, watched_paths: tuple[str, ...] = (), width: int = 1440, height: int = 900
) -> Iterator[BrowserSession]:
    """Headless Chromium on one page, watched; screenshots into ``tests/artifacts/<artifacts>``."""
    executable = chromium()
    folder = ARTIFACTS / artifacts
    folder.mkdir(parents=True, exist_ok=True)
    watch = PageWatch(watched_paths=watched_paths)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(base_url=base_url, viewport={"width": width, "height": height})
            context.route(lambda url: not is_local(url), watch.route)
            page = context.new_page()
            page.on("console", watch.on_console)
            page.on("pageerror", watch.on_page_error)
            page.on("request", watch.on_request)
            page.on("response", watch.on_response)
            page.on("requestfailed", watch.on_request_failed)
            yield BrowserSession(page=page, watch=watch, artifacts=folder)
            context.close()
        finally:
            browser.close()


def drawn_fraction(png: bytes, threshold: int = 24) -> float:
    """The fraction of a screenshot's pixels brighter than ``threshold`` (0-255 luminance)."""
    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    total = sum(histogram)
    return sum(histogram[threshold + 1 :]) / total if total else 0.0


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
