"""The OHIF viewer, served by filmless at ``/viewer/`` (setting ``viewer_dist``).

What is served:

- ``/viewer/login``: our sign-in page. It trades a user name and password for an access token
  (``POST /api/token``), keeps the token in the tab's ``sessionStorage`` and opens the viewer.
- ``/viewer/app-config.js``: OHIF's configuration, written here: one DICOMweb data source, this
  server's ``/dicom-web`` (same origin, so no CORS), and a small OHIF extension that hands the
  token to OHIF's user authentication service, whose ``getAuthorizationHeader`` every QIDO-RS
  and WADO-RS request of OHIF asks for its ``Authorization`` header. Without a valid token, or
  on a 401, the page goes back to the sign-in page.
- everything else under ``/viewer/``: the files of the prebuilt dist (npm ``@ohif/app``,
  installed by ``scripts/install-ohif.sh``); a path that names no file and has no extension is
  one of OHIF's own routes (the study list ``/viewer/``, the viewer ``/viewer/viewer?...``) and
  gets ``index.html``.

The prebuilt dist assumes it is served at ``/``: webpack's public path (where the code chunks,
workers and WebAssembly load from) is compiled in as ``"/"``, and ``index.html``, the style
sheets and the web manifest name their files from the root. Those few references are rewritten
for ``/viewer/`` when the files are served (:func:`rewrite_for_mount`); the dist on disk stays
as npm delivered it. A dist built for ``/viewer/`` (``PUBLIC_URL=/viewer/``) is left alone.

The viewer's files hold no patient data and are served without authentication; every image and
every study the viewer shows comes through ``/dicom-web``, which requires the token and writes
the audit log.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from viewer_api.context import base_url, current_web
from viewer_api.errors import Problem

log = logging.getLogger("filmless.viewer")

MOUNT = "/viewer"
"""Where the viewer is served (OHIF's ``routerBasename``)."""

TOKEN_KEY = "filmless.token"
"""The ``sessionStorage`` entry that holds the access token: ``{"token", "expires", "user"}``
(``expires`` in milliseconds since the epoch, as JavaScript's ``Date.now()``)."""

_IMMUTABLE = "public, max-age=31536000, immutable"
_HASHED = re.compile(r"(^|[./])[0-9a-f]{16}\.(js|css|wasm|woff2?)$")
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".svg": "image/svg+xml",
    ".map": "application/json",
}
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# --------------------------------------------------------------- serving under a sub-path


_WEBPACK_PUBLIC_PATH = '__webpack_require__.p = "/";'
_HTML_ROOT_REFERENCE = re.compile(r'\b(src|href)="/(?!/)')
_CSS_ROOT_URL = re.compile(r"url\((['\"]?)/(?!/)")
_MANIFEST_ROOT_SRC = re.compile(r'("src"\s*:\s*")/(?!/)')


def rewrite_for_mount(name: str, data: bytes, mount: str) -> bytes | None:
    """The file ``name`` of a dist built for ``/`` with its root references moved under
    ``mount`` (e.g. ``/viewer``), or None when the file needs no change.

    - JavaScript: webpack's public path ``__webpack_require__.p = "/"`` (the main bundle and
      each worker bundle carry one);
    - ``index.html``: ``window.PUBLIC_URL="/"`` and the ``src="/..."`` / ``href="/..."`` links,
      unless it already names ``mount`` (a dist built for the sub-path);
    - style sheets: ``url(/...)``; ``manifest.json``: the icons' ``"src": "/..."``.
    """
    prefix = mount.rstrip("/") + "/"
    suffix = Path(name).suffix
    if suffix in (".js", ".mjs"):
        marker = _WEBPACK_PUBLIC_PATH.encode()
        if marker not in data:
            return None
        return data.replace(marker, f'__webpack_require__.p = "{prefix}";'.encode())
    if suffix not in (".html", ".css", ".json"):
        return None
    text = data.decode("utf-8")
    if name == "index.html":
        if f'window.PUBLIC_URL="{prefix}"' in text:
            return None
        new = text.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{prefix}"')
        new = _HTML_ROOT_REFERENCE.sub(lambda m: f'{m.group(1)}="{prefix}', new)
    elif suffix == ".css":
        new = _CSS_ROOT_URL.sub(lambda m: f"url({m.group(1)}{prefix}", text)
    elif name == "manifest.json":
        new = _MANIFEST_ROOT_SRC.sub(lambda m: f"{m.group(1)}{prefix}", text)
    else:
        return None
    return new.encode("utf-8") if new != text else None


@dataclass
class ViewerDist:
    """A prebuilt OHIF dist directory, served under :data:`MOUNT`.

    Rewritten files are kept in memory (a handful: the main bundle, the worker bundles, the
    style sheets, ``index.html``; some 25 MB for OHIF 3.13); the others are served from disk.
    """

    root: Path
    mount: str = MOUNT
    _rewritten: dict[str, bytes | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def installed(self) -> bool:
        return (self.root / "index.html").is_file()

    def locate(self, relative: str) -> Path | None:
        """The file at ``relative`` inside the dist, or None (missing, a directory, or outside
        the dist: ``..``, absolute paths and symbolic links out of it are refused)."""
        if not relative or "\x00" in relative or relative.startswith("/") or "\\" in relative:
            return None
        parts = relative.split("/")
        if any(part in ("", ".", "..") for part in parts):
            return None
        candidate = self.root.joinpath(*parts)
        try:
            resolved = candidate.resolve(strict=True)
            if not resolved.is_relative_to(self.root.resolve(strict=True)):
                return None
        except (OSError, RuntimeError):
            return None
        return resolved if resolved.is_file() else None

    def content(self, relative: str, path: Path) -> bytes | None:
        """The rewritten bytes of the file, or None to serve it from disk as it is."""
        suffix = path.suffix
        if suffix not in (".js", ".mjs", ".html", ".css", ".json"):
            return None
        with self._lock:
            if relative in self._rewritten:
                return self._rewritten[relative]
        result = rewrite_for_mount(relative, path.read_bytes(), self.mount)
        with self._lock:
            self._rewritten[relative] = result
        return result


class _Dists:
    """One :class:`ViewerDist` per configured directory, made on first use."""

    def __init__(self) -> None:
        self._by_root: dict[Path, ViewerDist] = {}
        self._lock = threading.Lock()

    def for_request(self, request: Request) -> ViewerDist:
        configured = current_web(request).settings.viewer_dist
        if configured is None:
            raise Problem(
                404,
                "Viewer not installed",
                "This filmless serves no viewer. Install the OHIF viewer with scripts/install-ohif.sh "
                "and start filmless with --viewer-dist DIR (or FILMLESS_VIEWER_DIST=DIR), DIR being "
                "the directory the script prints.",
            )
        with self._lock:
            dist = self._by_root.get(configured)
            if dist is None:
                dist = self._by_root[configured] = ViewerDist(configured)
        if not dist.installed:
            log.error("viewer_dist %s has no index.html: run scripts/install-ohif.sh", configured)
            raise Problem(
                404,
                "Viewer not installed",
                "The configured viewer_dist holds no OHIF viewer (no index.html); see the server log.",
            )
        return dist


# --------------------------------------------------------------------------- the pages


def app_config(dicomweb_root: str, mount: str = MOUNT) -> str:
    """OHIF's ``app-config.js``: the filmless data source, and the token from the sign-in page."""
    login = json.dumps(f"{mount}/login")
    settings = {
        "routerBasename": mount,
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 10, "prefetch": 10},
        # OHIF's "investigational use only" notice: shown once, then again every 30 days.
        "investigationalUseDialog": {"option": "configure", "days": 30},
        "defaultDataSourceName": "filmless",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "filmless",
                "configuration": {
                    "friendlyName": "filmless",
                    "name": "filmless",
                    "qidoRoot": dicomweb_root,
                    "wadoRoot": dicomweb_root,
                    "wadoUriRoot": dicomweb_root,
                    "qidoSupportsIncludeField": True,
                    "supportsReject": False,
                    "supportsStow": False,
                    "dicomUploadEnabled": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "omitQuotationForMultipartRequest": True,
                    "bulkDataURI": {"enabled": True},
                },
            }
        ],
    }
    return _APP_CONFIG_TEMPLATE.replace("@KEY@", json.dumps(TOKEN_KEY)).replace("@LOGIN@", login).replace(
        "@SETTINGS@", json.dumps(settings, indent=2)
    )


_APP_CONFIG_TEMPLATE = """\
/* OHIF configuration written by filmless (viewer_api/viewer.py). */
(function () {
  var KEY = @KEY@;
  var LOGIN = @LOGIN@;

  function savedToken() {
    try {
      var saved = JSON.parse(window.sessionStorage.getItem(KEY) || "null");
      if (saved && saved.token && saved.expires > Date.now()) {
        return saved.token;
      }
    } catch (e) {
      /* an unreadable entry is no token */
    }
    return null;
  }

  function signIn() {
    window.sessionStorage.removeItem(KEY);
    var here = window.location.pathname + window.location.search;
    window.location.replace(LOGIN + "?next=" + encodeURIComponent(here));
  }

  if (!savedToken()) {
    /* Not signed in: stop here, before OHIF's scripts load, and go to the sign-in page. */
    window.stop();
    signIn();
    return;
  }

  var config = @SETTINGS@;

  /* OHIF asks its user authentication service for the Authorization header of every
     DICOMweb request; this extension answers with the token of the sign-in page. */
  config.extensions = [
    {
      id: "filmless-authentication",
      preRegistration: function (context) {
        context.servicesManager.services.userAuthenticationService.setServiceImplementation({
          getAuthorizationHeader: function () {
            var token = savedToken();
            return token ? { Authorization: "Bearer " + token } : {};
          },
          handleUnauthenticated: function () {
            signIn();
            return null;
          },
        });
      },
    },
  ];
  config.httpErrorHandler = function (error) {
    if (error && error.status === 401) {
      signIn();
    }
  };
  window.config = config;
})();
"""

LOGIN_PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>filmless - sign in</title>
<style>
  body { margin: 0; min-height: 100vh; display: flex; align-items: center; justify-content: center;
         background: #090c29; color: #e6e9f5; font: 16px/1.4 system-ui, sans-serif; }
  form { background: #141a3d; padding: 2rem; border-radius: 8px; width: 20rem; }
  h1 { font-size: 1.3rem; margin: 0 0 1.2rem; }
  label { display: block; margin: 0.8rem 0 0.2rem; }
  input { box-sizing: border-box; width: 100%; padding: 0.5rem; border-radius: 4px; border: 1px solid #3a4380;
          background: #0b0f2e; color: inherit; font: inherit; }
  button { margin-top: 1.2rem; width: 100%; padding: 0.6rem; border: 0; border-radius: 4px;
           background: #5acce6; color: #090c29; font: inherit; font-weight: 600; cursor: pointer; }
  button:disabled { opacity: 0.6; cursor: wait; }
  #status { min-height: 1.4em; margin: 0.8rem 0 0; color: #ffb4a2; }
</style>
</head>
<body>
<form id="signin" autocomplete="on">
  <h1>filmless viewer</h1>
  <label for="username">User name / Tên đăng nhập</label>
  <input id="username" name="username" autocomplete="username" required autofocus>
  <label for="password">Password / Mật khẩu</label>
  <input id="password" name="password" type="password" autocomplete="current-password" required>
  <button id="submit" type="submit">Sign in / Đăng nhập</button>
  <p id="status" role="alert"></p>
</form>
<script>
(function () {
  var KEY = @KEY@;
  var MOUNT = @MOUNT@;
  var params = new URLSearchParams(window.location.search);
  var form = document.getElementById("signin");
  var status = document.getElementById("status");
  var button = document.getElementById("submit");
  window.sessionStorage.removeItem(KEY);

  function next() {
    /* Only a page of the viewer: never another site. */
    var target = params.get("next") || "";
    return target.indexOf(MOUNT + "/") === 0 ? target : MOUNT + "/";
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    status.textContent = "";
    button.disabled = true;
    fetch("/api/token", { method: "POST", body: new URLSearchParams(new FormData(form)) })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok || !body.access_token) {
            status.textContent = body.detail || "Sign-in failed (HTTP " + response.status + ")";
            return;
          }
          var lifetime = Math.max(0, (body.expires_in || 0) - 30) * 1000;
          window.sessionStorage.setItem(KEY, JSON.stringify({
            token: body.access_token, expires: Date.now() + lifetime, user: form.username.value
          }));
          window.location.replace(next());
        });
      })
      .catch(function (error) {
        status.textContent = "The server did not answer: " + error;
      })
      .finally(function () {
        button.disabled = false;
      });
  });
})();
</script>
</body>
</html>
"""


def login_page(mount: str = MOUNT) -> str:
    return LOGIN_PAGE.replace("@KEY@", json.dumps(TOKEN_KEY)).replace("@MOUNT@", json.dumps(mount))


# --------------------------------------------------------------------------- the routes


def create_router(dicomweb_prefix: str) -> APIRouter:
    """The viewer's routes; OHIF's data source is ``<base URL><dicomweb_prefix>``."""
    router = APIRouter(include_in_schema=False)
    dists = _Dists()

    @router.get(MOUNT)
    def viewer_root(request: Request) -> RedirectResponse:
        dists.for_request(request)
        return RedirectResponse(f"{MOUNT}/", status_code=307)

    @router.get(f"{MOUNT}/login")
    def viewer_login(request: Request) -> Response:
        dists.for_request(request)
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": "frame-ancestors 'none'"}
        return Response(login_page(), media_type="text/html; charset=utf-8", headers=headers)

    @router.get(f"{MOUNT}/app-config.js")
    def viewer_config(request: Request) -> Response:
        dists.for_request(request)
        body = app_config(base_url(request) + dicomweb_prefix)
        return Response(body, media_type=_MEDIA_TYPES[".js"], headers=_PAGE_HEADERS)

    @router.get(MOUNT + "/{relative:path}")
    def viewer_file(relative: str, request: Request) -> Response:
        dist = dists.for_request(request)
        path = dist.locate(relative)
        if path is None:
            segments = relative.split("/")
            if "." in segments[-1] or ".." in segments:
                raise Problem(404, "Not found", f"the viewer has no file {relative!r}")
            # One of OHIF's own routes (the study list, /viewer/viewer?StudyInstanceUIDs=...).
            relative = "index.html"
            path = dist.root / relative
        return _file_response(dist, relative, path)

    return router


def _file_response(dist: ViewerDist, relative: str, path: Path) -> Response:
    media_type = _MEDIA_TYPES.get(path.suffix)
    cache = _IMMUTABLE if _HASHED.search(path.name) else "no-cache"
    headers = {**_PAGE_HEADERS, "Cache-Control": cache}
    rewritten = dist.content(relative, path)
    if rewritten is not None:
        return Response(rewritten, media_type=media_type, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)
