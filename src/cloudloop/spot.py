"""Spot interruption notices from instance metadata (IMDSv2).

Every 5 s: ``PUT /latest/api/token`` (cached for its lifetime), then
``GET /latest/meta-data/spot/instance-action``: 404 while all is well, a JSON
``{"action": "terminate", "time": ...}`` about two minutes before EC2 takes
the instance back. The base URL is configurable (``--metadata-url`` or
``$CLOUDLOOP_METADATA_URL``) so tests and other clouds can serve their own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("cloudloop.spot")
DEFAULT_URL = "http://169.254.169.254"


class Imds:
    """A minimal IMDSv2 client (no dependencies, short timeouts)."""

    def __init__(self, base: str = DEFAULT_URL, timeout: float = 2.0):
        self.base = base.rstrip("/")
        self.timeout = timeout
        self._token: tuple[str, float] | None = None

    def _get_token(self) -> str:
        import urllib.request  # here: most workers read no metadata (http.client, ssl, email)

        if self._token is None or time.monotonic() > self._token[1]:
            req = urllib.request.Request(
                f"{self.base}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
            )
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                self._token = (r.read().decode(), time.monotonic() + 21000)
        return self._token[0]

    def get(self, path: str) -> str | None:
        """The metadata value at ``path`` (e.g. ``instance-id``), None if absent."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            f"{self.base}/latest/meta-data/{path}",
            headers={"X-aws-ec2-metadata-token": self._get_token()},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if e.code == 401:  # token expired early: fetch a new one next time
                self._token = None
            raise


class SpotWatcher(threading.Thread):
    """Calls ``on_notice(action)`` once when an interruption notice appears."""

    def __init__(self, base: str, on_notice: Callable[[dict], None], every: float = 5.0):
        super().__init__(name="cloudloop-spot", daemon=True)
        self.imds = Imds(base)
        self.on_notice = on_notice
        self.every = every
        self._stop_event = threading.Event()
        self._failures = 0

    def stop(self) -> None:
        self._stop_event.set()

    def check(self) -> dict | None:
        text = self.imds.get("spot/instance-action")
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {"action": "terminate", "raw": text}

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                notice = self.check()
                self._failures = 0
            except OSError as e:  # urllib's URLError and HTTPError are OSErrors
                self._failures += 1
                if self._failures in (1, 10):
                    log.warning("cannot read spot notices from %s: %s", self.imds.base, e)
                notice = None
            if notice is not None:
                log.warning("spot interruption notice: %s", notice)
                self.on_notice(notice)
                return
            self._stop_event.wait(self.every)
