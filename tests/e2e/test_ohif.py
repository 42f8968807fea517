"""The OHIF viewer served by filmless (``/viewer/``), in headless Chromium.

A real ``filmless serve`` with the prebuilt OHIF dist (scripts/install-ohif.sh) and three
studies: a synthetic CT series, a multi-frame ultrasound from pydicom-data (120 JPEG Baseline
frames) and a synthetic chest X-ray (DX). The browser signs in on our login page, finds the three
studies in OHIF's study list, opens each in OHIF's Basic Viewer and waits until the image is
drawn. It fails on any browser console error, uncaught page error, failed request to the viewer
or to /dicom-web, and on any request that leaves 127.0.0.1. Screenshots are kept in
tests/artifacts/ohif/ (printed at the end of the run).

The first tests need no browser: how the dist is rewritten for the sub-path, and what OHIF's
configuration says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from tests.e2e.browser import ARTIFACTS, BrowserSession, drawn_fraction, ohif_dist, open_browser
from tests.e2e.support import StartFilmless, Synthetic, run_cli
from tests.peers import FilmlessServer
from viewer_api.viewer import MOUNT, TOKEN_KEY, ViewerDist, app_config, login_page, rewrite_for_mount

ADMIN_PASSWORD = "ohif-e2e-admin-password"
"""``FILMLESS_INITIAL_ADMIN_PASSWORD`` of the server: the user ``admin`` exists from the start."""

# ------------------------------------------------------------ the dist under /viewer/ (fast)


def test_webpack_public_path_moves_under_the_mount() -> None:
    bundle = b'(() => {\n__webpack_require__.p = "/";\n})();\nvar x = __webpack_require__.p + "a.js";'
    rewritten = rewrite_for_mount("app.bundle.0123456789abcdef.js", bundle, "/viewer")
    assert rewritten is not None
    assert b'__webpack_require__.p = "/viewer/";' in rewritten
    assert b'__webpack_require__.p = "/";' not in rewritten
    assert rewrite_for_mount("other.js", b"var a = '/';", "/viewer") is None


def test_index_html_names_its_files_under_the_mount() -> None:
    html = (
        '<script>window.PUBLIC_URL="/"</script><link rel="manifest" href="/manifest.json">'
        '<script src="/app-config.js"></script><a href="//cdn.example/x">x</a>'
        '<script defer src="/app.bundle.abc.js"></script><a href="https://example.org/">o</a>'
    ).encode()
    rewritten = rewrite_for_mount("index.html", html, "/viewer")
    assert rewritten is not None
    text = rewritten.decode()
    assert 'window.PUBLIC_URL="/viewer/"' in text
    assert 'href="/viewer/manifest.json"' in text
    assert 'src="/viewer/app-config.js"' in text
    assert 'src="/viewer/app.bundle.abc.js"' in text
    assert 'href="//cdn.example/x"' in text  # protocol-relative: not a root path
    assert 'href="https://example.org/"' in text
    # A dist built for the sub-path is served as it is.
    assert rewrite_for_mount("index.html", rewritten, "/viewer") is None


def test_style_sheets_and_manifest_under_the_mount() -> None:
    css = rewrite_for_mount("app.bundle.css", b"a{src:url(/f.woff2)} b{background:url('/x.png')} c{x:url(//h/y)}", "/viewer")
    assert css == b"a{src:url(/viewer/f.woff2)} b{background:url('/viewer/x.png')} c{x:url(//h/y)}"
    manifest = rewrite_for_mount("manifest.json", b'{"icons": [{"src": "/assets/i.png"}], "start_url": "./index.html"}', "/viewer")
    assert manifest == b'{"icons": [{"src": "/viewer/assets/i.png"}], "start_url": "./index.html"}'
    assert rewrite_for_mount("other.json", b'{"src": "/a"}', "/viewer") is None
    assert rewrite_for_mount("logo.svg", b'<svg href="/x"/>', "/viewer") is None


def test_only_files_inside_the_dist_are_served(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<html></html>")
    (dist / "assets" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("not the viewer's")
    (dist / "link.txt").symlink_to(tmp_path / "secret.txt")
    viewer = ViewerDist(dist)
    assert viewer.installed
    assert viewer.locate("assets/a.png") == (dist / "assets" / "a.png").resolve()
    for bad in ("", "assets", "../secret.txt", "assets/../../secret.txt", "/etc/passwd", "link.txt",
                "assets//a.png", "./index.html", "a\\b", "x\x00y", "missing.js"):
        assert viewer.locate(bad) is None, bad


def test_app_config_points_ohif_at_dicomweb_with_the_token() -> None:
    config = app_config("https://pacs.example.vn/dicom-web")
    assert config.count("https://pacs.example.vn/dicom-web") == 3  # qido, wado, wado-uri roots
    assert json.dumps(TOKEN_KEY) in config
    assert '"routerBasename": "/viewer"' in config
    assert '"Bearer " + token' in config
    assert "getAuthorizationHeader" in config
    assert '"/viewer/login"' in config
    page = login_page()
    assert "/api/token" in page and json.dumps(TOKEN_KEY) in page and json.dumps(MOUNT) in page


# ---------------------------------------------------------------- a real server (e2e)


@dataclass(frozen=True)
class Study:
    label: str
    study_uid: str
    patient_name: str
    files: list[Path]


def _study(label: str, files: list[Path]) -> Study:
    ds = dcmread(files[0], stop_before_pixels=True)
    # OHIF's study list shows "Family, Given" for Family^Given.
    name = ", ".join(part for part in str(ds.PatientName).split("^")[:2] if part)
    return Study(label, str(ds.StudyInstanceUID), name, files)


def _multiframe_ultrasound() -> Path:
    """pydicom-data's 120-frame ultrasound cine (JPEG Baseline, YBR_FULL_422)."""
    import data_store  # the pydicom-data package (test extras)

    path = Path(next(iter(data_store.__path__))) / "data" / "color3d_jpeg_baseline.dcm"
    assert path.is_file(), f"pydicom-data has no {path.name}"
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[Study]:
    synthetic = Synthetic(tmp_path_factory.mktemp("ohif-synthetic"))
    return [
        _study("ct", synthetic.ct(11, slices=30, size=512)),
        _study("us-multiframe", [_multiframe_ultrasound()]),
        _study("dx", synthetic.dx(14)),
    ]


@pytest.fixture(scope="module")
def artifacts(request: pytest.FixtureRequest) -> Iterator[Path]:
    folder = ARTIFACTS / "ohif"
    yield folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and folder.is_dir() and any(folder.glob("*.png")):
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nOHIF screenshots: {folder}")


@pytest.fixture(scope="module")
def viewer_server(start_filmless: StartFilmless, studies: list[Study]) -> Iterator[FilmlessServer]:
    dist = ohif_dist()
    env = {"FILMLESS_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with start_filmless("--viewer-dist", str(dist), env=env) as server:
        files = [str(path) for study in studies for path in study.files]
        result = run_cli("import", "--data", str(server.data_dir), *files)
        assert result.returncode == 0, f"filmless import failed:\n{result.stdout}\n{result.stderr}"
        yield server


def _token(client: httpx.Client) -> str:
    response = client.post("/api/token", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.mark.e2e
def test_viewer_files_over_http(viewer_server: FilmlessServer) -> None:
    with viewer_server.http() as client:
        root = client.get("/viewer")
        assert root.status_code == 307 and root.headers["location"] == "/viewer/"
        for route in ("/viewer/", "/viewer/viewer", "/viewer/segmentation"):
            page = client.get(route, params={"StudyInstanceUIDs": "1.2.3"})
            assert page.status_code == 200, route
            assert page.headers["content-type"].startswith("text/html")
            assert 'window.PUBLIC_URL="/viewer/"' in page.text
            assert 'src="/viewer/app-config.js"' in page.text
        bundle_name = re.search(r'src="/viewer/(app\.bundle\.[0-9a-f]+\.js)"', page.text)
        assert bundle_name, "index.html names no app bundle"
        bundle = client.get(f"/viewer/{bundle_name.group(1)}")
        assert bundle.status_code == 200
        assert bundle.headers["content-type"].startswith("text/javascript")
        assert "immutable" in bundle.headers["cache-control"]
        assert '__webpack_require__.p = "/viewer/";' in bundle.text

        config = client.get("/viewer/app-config.js")
        assert config.status_code == 200 and config.headers["cache-control"] == "no-cache"
        assert f'"qidoRoot": "{viewer_server.base_url}/dicom-web"' in config.text

        login = client.get("/viewer/login")
        assert login.status_code == 200 and "<form" in login.text

        for missing in ("/viewer/no-such-chunk.js", "/viewer/assets/none.png", "/viewer/..%2F..%2Fetc%2Fpasswd"):
            response = client.get(missing)
            assert response.status_code == 404, missing
            assert response.headers["content-type"] == "application/problem+json", missing

        # The viewer is public; the data behind it is not.
        assert client.get("/dicom-web/studies").status_code == 401
        token = _token(client)
        studies = client.get("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"})
        assert studies.status_code == 200 and len(studies.json()) == 3


@pytest.mark.e2e
def test_no_viewer_without_viewer_dist(start_filmless: StartFilmless) -> None:
    with start_filmless() as server, server.http() as client:
        for route in ("/viewer", "/viewer/", "/viewer/login", "/viewer/app-config.js"):
            response = client.get(route)
            assert response.status_code == 404, route
            assert response.headers["content-type"] == "application/problem+json"
            body = response.json()
            assert body["title"] == "Viewer not installed"
            assert "scripts/install-ohif.sh" in body["detail"] and "--viewer-dist" in body["detail"]


# ----------------------------------------------------------------- the browser (e2e)


_VIEWPORT_CANVAS = "canvas.cornerstone-canvas"


def _dismiss(session: BrowserSession, name: str) -> None:
    """Click OHIF's ``name`` button (a notice, the tour) if it is showing."""
    button = session.page.get_by_role("button", name=name)
    if button.count() and button.first.is_visible():
        button.first.click()


def _drawn(session: BrowserSession) -> float:
    """The fraction of non-dark pixels of the viewport's canvas."""
    canvas = session.page.locator(_VIEWPORT_CANVAS).first
    return drawn_fraction(canvas.screenshot())


def _wait_for_image(session: BrowserSession, label: str, timeout: float = 90.0) -> float:
    """Wait until OHIF has drawn an image in the viewport (and stopped loading)."""
    page = session.page
    page.locator(_VIEWPORT_CANVAS).first.wait_for(state="visible", timeout=timeout * 1000)
    waited = 0.0
    fraction = 0.0
    while waited < timeout:
        _dismiss(session, "Skip all")  # OHIF's first-time tour hides part of the viewport
        loading = page.locator(".loading-indicator, [data-cy='loading-indicator']")
        fraction = _drawn(session)
        if fraction > 0.05 and not (loading.count() and loading.first.is_visible()):
            return fraction
        page.wait_for_timeout(500)
        waited += 0.5
    session.screenshot(f"{label}-not-drawn")
    raise AssertionError(f"{label}: no image drawn after {timeout:.0f} s ({fraction:.1%} of the canvas lit)")


def _audited_reads(client: httpx.Client, token: str, study_uid: str) -> list[dict[str, object]]:
    response = client.get(
        "/api/audit", params={"study": study_uid, "actor": "admin"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


@pytest.mark.e2e
def test_the_watch_sees_what_the_browser_test_fails_on(viewer_server: FilmlessServer) -> None:
    """The harness itself: a 401 from /dicom-web, a console error, an uncaught error and a
    request off 127.0.0.1 are all reported (so a clean run means something)."""
    with open_browser(viewer_server.base_url, "ohif-watch", watched_paths=("/dicom-web",)) as session:
        page = session.page
        page.goto(f"{MOUNT}/login")
        page.evaluate(
            """async () => {
                await fetch('/dicom-web/studies');
                console.error('something broke');
                setTimeout(() => { throw new Error('uncaught in a timer'); }, 0);
                await fetch('https://example.org/').catch(() => null);
                await new Promise(resolve => setTimeout(resolve, 200));
            }"""
        )
        watch = session.watch
        assert [f for f in watch.failed_requests if "/dicom-web/studies -> 401" in f], watch.failed_requests
        assert any("something broke" in c for c in watch.console_errors), watch.console_errors
        assert any("uncaught in a timer" in e for e in watch.page_errors), watch.page_errors
        assert watch.off_loopback == ["GET https://example.org/"], watch.off_loopback
        with pytest.raises(AssertionError, match="failed requests"):
            watch.assert_clean()


@pytest.mark.e2e
@pytest.mark.slow
def test_ohif_shows_ct_multiframe_us_and_dx(
    viewer_server: FilmlessServer, studies: list[Study], artifacts: Path
) -> None:
    with open_browser(viewer_server.base_url, "ohif", watched_paths=("/dicom-web", f"{MOUNT}/")) as session:
        page = session.page
        watch = session.watch

        # Not signed in: the viewer sends the browser to the sign-in page.
        page.goto(f"{MOUNT}/")
        page.wait_for_url(re.compile(r"/viewer/login\?next="))

        # A wrong password is refused on the page (the 401 is the one console error expected).
        watch.allow_console(r"status of 401 .*/api/token")
        page.fill("#username", "admin")
        page.fill("#password", "not the password")
        page.click("#submit")
        page.get_by_role("alert").filter(has_text=re.compile(r"\w")).wait_for(timeout=10_000)
        assert "/viewer/login" in page.url
        watch.allowed_console.clear()

        page.fill("#password", ADMIN_PASSWORD)
        page.click("#submit")
        page.wait_for_url(re.compile(r"/viewer/$"))
        assert page.evaluate(f"JSON.parse(sessionStorage.getItem({json.dumps(TOKEN_KEY)})).user") == "admin"

        # OHIF's study list: the three studies, found over QIDO-RS with the token.
        for study in studies:
            page.get_by_text(study.patient_name, exact=True).first.wait_for(timeout=30_000)
        _dismiss(session, "Confirm and hide")  # OHIF's "investigational use" notice
        session.screenshot("study-list")

        for study in studies:
            page.goto(f"{MOUNT}/")
            page.get_by_text(study.patient_name, exact=True).first.click()
            page.get_by_role("button", name="Basic Viewer").first.click()
            page.wait_for_url(re.compile(r"/viewer/viewer\?StudyInstanceUIDs=" + re.escape(study.study_uid)))
            fraction = _wait_for_image(session, study.label)
            shot = session.screenshot(study.label)
            assert fraction > 0.05, f"{study.label}: {shot} looks blank"

        watch.assert_clean()
        dicomweb = [r for r in watch.requests if "/dicom-web/" in r]
        assert any("/frames/" in r for r in dicomweb), "OHIF fetched no frames over WADO-RS"

    # Every study the viewer opened is in the audit log, read by admin.
    with viewer_server.http() as client:
        token = _token(client)
        for study in studies:
            events = _audited_reads(client, token, study.study_uid)
            assert events, f"no audit event of admin for the {study.label} study"
