"""The dashboard's HTTP server: a token-guarded JSON API and the static page.

::

    GET /?token=T                      index.html (sets a same-site cookie holding T)
    GET /static/<file>                 app.js, style.css, logo.svg (from this package)
    GET /api/jobs                      one row per job
    GET /api/jobs/<id>                 one job's snapshot (progress, chart data, workers, tasks)
    GET /api/jobs/<id>/logs/<index>    {"text": ...}: what the task printed so far
    GET /api/boots                     {"clusters": [...], "groups": [...]}: every cluster's
                                       newest ec2 boots; the profile's Auto Scaling group
                                       (``--profile`` of an ec2 cluster: asked of AWS at
                                       most every 30 s, whatever the polls)
    anything without the token         403

Every response carries a Content-Security-Policy (:data:`CSP`) that allows
script, style and images only from this server's ``/static/`` files and
network calls only to itself: no inline script, no inline style, no
``eval``, no plugins, no frames, no form posts, no ``<base>``. ``app.js``
builds the page with every value escaped; the policy is the second wall, so
that a value that got through as markup still could not run or fetch.

It is the standard library's ``ThreadingHTTPServer``, not an ASGI framework,
on purpose: the page only polls a few JSON endpoints every couple of seconds
for one user, so a framework would add two dependencies (and their upgrade
churn) to every machine that may want to look at a job — a laptop, a login
node, an EC2 instance — for no capability the page uses. Store access is
serialised behind one lock and throttled by :class:`~.view.DashboardView`, so
the number of browsers or polls never multiplies the store calls.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..backends import Backend
from ..errors import JobNotFound
from .view import DashboardView, page_json

log = logging.getLogger("cloudloop.dashboard")

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_COOKIE = "cloudloop_token"
#: sent with every response; style-src has no 'unsafe-inline': app.js sets widths through the
#: CSSOM (element.style), which a policy does not govern, and never writes style="..."
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def static_file(name: str) -> bytes:
    """A file shipped in ``cloudloop/dashboard/static``."""
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        given = query.get("token", [""])[0] or self.headers.get("X-Cloudloop-Token", "")
        if not given:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(_COOKIE)
            given = morsel.value if morsel else ""
        return hmac.compare_digest(given.encode(), self.server.token.encode())

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, page_json(obj).encode(), "application/json")

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._authorised(query):
            self._send(
                HTTPStatus.FORBIDDEN,
                b"403 forbidden: open the URL with the token that `cloudloop dashboard` printed\n",
                "text/plain; charset=utf-8",
            )
            return
        path = unquote(url.path)
        try:
            if path in ("/", "/index.html"):
                cookie = f"{_COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/"
                self._send(200, static_file("index.html"), _TYPES[".html"], {"Set-Cookie": cookie})
            elif path.startswith("/static/"):
                name = path[len("/static/") :]
                ext = name[name.rfind(".") :]
                if "/" in name or ext not in _TYPES:
                    self._json({"error": "not found"}, 404)
                    return
                self._send(200, static_file(name), _TYPES[ext])
            elif path.startswith("/api/"):
                self._api(path[len("/api/") :].strip("/").split("/"))
            else:
                self._json({"error": "not found"}, 404)
        except JobNotFound as e:
            self._json({"error": str(e)}, 404)
        except (FileNotFoundError, ValueError) as e:
            self._json({"error": str(e)}, 404)
        except Exception as e:  # a store hiccup must not kill the page: it polls again
            log.warning("dashboard request %s failed: %s", path, e)
            self._json({"error": f"{type(e).__name__}: {e}"}, 500)

    def _api(self, parts: list[str]) -> None:
        view = self.server.view
        with view.lock:
            if parts == ["jobs"]:
                rows = view.jobs()
                self._json({"backend": view.backend.url, "jobs": rows, "count": view.job_count})
            elif parts == ["boots"]:
                self._json({"clusters": view.boots(), "groups": self.server.groups()})
            elif len(parts) == 2 and parts[0] == "jobs":
                jv = view.job(parts[1])
                jv.refresh(view.job_every)
                self._json(jv.snapshot())
            elif len(parts) == 4 and parts[0] == "jobs" and parts[2] == "logs":
                jv = view.job(parts[1])
                self._json({"task": int(parts[3]), "text": jv.log(int(parts[3]), view.job_every)})
            else:
                self._json({"error": "not found"}, 404)


class DashboardServer(ThreadingHTTPServer):
    """The dashboard on ``host:port`` (port 0: any free port); ``url`` includes the token."""

    daemon_threads = True

    def __init__(
        self,
        backend: Backend,
        host: str = "127.0.0.1",
        port: int = 8787,
        token: str | None = None,
        job_every: float = 2.0,
        groups: Callable[[], list[dict[str, Any]]] | None = None,
        groups_every: float = 30.0,
    ):
        self.token = token or secrets.token_urlsafe(18)
        self.view = DashboardView(backend, job_every=job_every)
        self._groups_fn, self._groups_every = groups, groups_every
        self._groups: tuple[float, list[dict[str, Any]]] | None = None
        self._groups_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def groups(self) -> list[dict[str, Any]]:
        """The Auto Scaling groups to show, asked of AWS at most every ``groups_every`` s;
        trouble asking is shown as the group's error, not a failed page."""
        if self._groups_fn is None:
            return []
        with self._groups_lock:
            now = time.monotonic()
            if self._groups is None or now - self._groups[0] >= self._groups_every:
                try:
                    got = self._groups_fn()
                except Exception as e:  # AWS refused or is away: the page says so, and polls
                    got = [{"error": f"{type(e).__name__}: {e}"[:300]}]
                self._groups = (now, got)
            return self._groups[1]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{port}/?token={self.token}"

    def start(self) -> threading.Thread:
        """Serve in a background thread (for tests and notebooks); ``shutdown()`` stops it."""
        t = threading.Thread(target=self.serve_forever, name="cloudloop-dashboard", daemon=True)
        t.start()
        return t
