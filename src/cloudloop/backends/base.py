"""The two interfaces every backend implements, and nothing else.

Everything above this layer (executor, worker, dashboard) moves opaque bytes
through these primitives::

    Queue:  put(bodies) · lease(max_n, lease_s, wait_s) -> [Lease(id, token, body, attempt)]
            extend(leases, lease_s) · ack(leases) · release(leases) · stats()
    Store:  put(key, data, if_absent=False) · get(key) · exists(key) · list(prefix) · delete(prefix)
            sizes(prefix) -> {key: bytes} · remove(key)

Capabilities differ between services and are declared as class attributes
(``Queue.reports_lease_lost``, ``Queue.max_message_bytes``) so callers and the
contract tests branch on them instead of on backend names.
"""

from __future__ import annotations

import abc
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

from .. import codec
from ..errors import ConfigError
from ..model import Lease, QueueStats

_KEY = re.compile(r"^[A-Za-z0-9_.=+@%-]+(/[A-Za-z0-9_.=+@%-]+)*$")


def check_key(key: str) -> str:
    if (
        not isinstance(key, str)
        or len(key) > 1000
        or not _KEY.match(key)
        or any(part in (".", "..") for part in key.split("/"))
    ):
        raise ValueError(
            f"invalid store key {key!r:.120}: use 'a/b/c' with [A-Za-z0-9_.=+@%-] parts"
        )
    return key


class Queue(abc.ABC):
    """Messages with leases (SQS semantics).

    A leased message is invisible to others until its lease expires, is
    released, or is acked (deleted). An expired lease makes the message
    visible again with a higher ``attempt``.
    """

    #: ack/extend with a stale token raise LeaseLost (SQS cannot tell).
    reports_lease_lost: ClassVar[bool] = True
    #: a message may, rarely, be delivered to two leasers at once (SQS standard
    #: queues are at-least-once); results are idempotent, so this only costs a re-run.
    may_duplicate: ClassVar[bool] = False
    #: bodies larger than this must be spilled to the store by the caller (a queue
    #: may learn its own limit when it opens: SQS queues differ).
    max_message_bytes: int = 1 << 20

    @abc.abstractmethod
    def put(self, bodies: Sequence[bytes]) -> list[str]:
        """Enqueue messages; returns their ids."""

    @abc.abstractmethod
    def lease(self, max_n: int = 1, lease_s: float = 30.0, wait_s: float = 0.0) -> list[Lease]:
        """Take up to ``max_n`` visible messages for ``lease_s`` seconds.

        Waits up to ``wait_s`` seconds for one to become visible (long polling).
        Expired leases are reclaimed here, atomically.
        """

    @staticmethod
    def _poll(
        attempt: Callable[[], list[Lease]], wait_s: float, max_pause: float = 0.02
    ) -> list[Lease]:
        """Long polling for a service without it: ``attempt()`` until it gives
        something or ``wait_s`` has passed, backing off from 2 ms to ``max_pause``."""
        deadline = time.monotonic() + wait_s
        pause = 0.002
        while True:
            leases = attempt()
            left = deadline - time.monotonic()
            if leases or left <= 0:
                return leases
            time.sleep(min(pause, left))
            pause = min(pause * 2, max_pause)

    def wakeup(self) -> None:  # noqa: B027 - optional hook
        """End a ``lease`` that is waiting for a message now (it returns what it has,
        perhaps nothing). Safe to call from a signal handler or another thread; a
        backend whose wait is short anyway need not implement it."""

    @abc.abstractmethod
    def extend(self, leases: Sequence[Lease], lease_s: float) -> None:
        """Push the leases' expiry to ``lease_s`` from now (raises LeaseLost if stale)."""

    @abc.abstractmethod
    def ack(self, leases: Sequence[Lease]) -> None:
        """Delete the messages (raises LeaseLost for stale tokens, after acking the rest)."""

    @abc.abstractmethod
    def release(self, leases: Sequence[Lease]) -> None:
        """Make the messages visible again at once (stale tokens are ignored)."""

    @abc.abstractmethod
    def stats(self) -> QueueStats:
        """Approximate counts of visible and leased messages."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Store(abc.ABC):
    """Blobs by key (S3 semantics). Keys are ``/``-separated paths."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        """Write ``data``; with ``if_absent`` write only if the key is new.

        Returns False when ``if_absent`` and the key already existed.
        """

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Read a blob; raises KeyError if absent."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted."""

    @abc.abstractmethod
    def delete(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; returns how many."""

    def remove(self, key: str) -> bool:
        """Delete the one key ``key`` (not the keys it is a prefix of); whether it was there.
        This default is correct only while no other key starts with ``key``."""
        if key not in self.list(key):
            return False
        if self.list(key) != [key]:
            raise NotImplementedError(f"{type(self).__name__} cannot remove one key of several")
        return self.delete(key) > 0

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every key starting with ``prefix`` with its size in bytes (as ``list``
        would list them). This default reads every blob: a backend overrides it
        with what its service tells without reading (a stat, STRLEN, a listing)."""
        out: dict[str, int] = {}
        for key in self.list(prefix):
            data = self.get_or_none(key)
            if data is not None:
                out[key] = len(data)
        return out

    def get_or_none(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except KeyError:
            return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Backend:
    """A queue, a store and the key that signs what passes through them.

    Attributes:
        url: the URL it was opened from, with any password replaced by ``***``:
            safe to print, log, store in a record or show on a page.
        connect_url: the URL as given, secrets included: only for opening the
            backend again (a worker gets it through its environment, never
            its command line).
        poll_interval: how often clients poll the store for results (backing
            off to ``poll_max`` while nothing changes).
        flush_interval: how often workers should flush partial results.
        heartbeat_default: seconds between a worker's heartbeat records when
            its options do not say.
        check_interval: how often a busy worker looks for a cancellation or
            asks the queue whether idle workers could take part of its chunk.
        workers_cache: how long a client reuses the worker records it read.
    """

    poll_interval: float = 0.05
    poll_max: float = 1.0  # polling backs off to this when nothing changes
    flush_interval: float = 0.5
    idle_wait: float = 0.5  # how long an idle worker's lease call waits for a message
    heartbeat_default: float = 5.0
    check_interval: float = 2.0
    workers_cache: float = 2.0

    def __init__(self, url: str, queue: Queue, store: Store, key: bytes):
        self.connect_url = url
        self.url = redact_url(url)
        self.queue = queue
        self.store = store
        self.key = key

    # ------------------------------------------------------------ signed store access

    def put_signed(self, name: str, data: bytes, if_absent: bool = False) -> bool:
        """Store ``data`` under ``name``, signed for that name (see :mod:`cloudloop.codec`)."""
        return self.store.put(name, codec.sign(self.key, data, name), if_absent=if_absent)

    def get_signed(self, name: str, what: str | None = None) -> bytes | None:
        """The verified data under ``name``; None if absent, TamperedError if forged."""
        blob = self.store.get_or_none(name)
        return None if blob is None else codec.verify(self.key, blob, name, what)

    def put_record(self, name: str, obj: Any, if_absent: bool = False) -> bool:
        """A small JSON record under ``name``, signed."""
        return self.store.put(name, codec.encode_record(self.key, name, obj), if_absent=if_absent)

    def get_record(self, name: str, what: str | None = None) -> Any:
        """The verified JSON record under ``name``; None if absent, TamperedError if forged."""
        blob = self.store.get_or_none(name)
        return None if blob is None else codec.decode_record(self.key, blob, name, what)

    def close(self) -> None:
        self.queue.close()
        self.store.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


_SECRET_QUERY = re.compile(r"pass|secret|token|key|auth|credential|signature", re.I)


def redact_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``: the password of its user
    info (``redis://:PW@host``, ``redis://user:PW@host``) and the value of any
    query parameter whose name says it is one (``?password=``, ``?token=``)."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc, sep, path = rest.partition("/")
    if "@" in netloc:
        info, host = netloc.rsplit("@", 1)
        user = info.split(":", 1)[0] if ":" in info else ""
        netloc = f"{user}:***@{host}" if ":" in info else f"***@{host}"
    if "?" in path:
        path, query = path.split("?", 1)
        try:
            pairs = parse_qsl(query, keep_blank_values=True)
        except ValueError:
            pairs = [("query", "***")]
        if any(_SECRET_QUERY.search(k) for k, _ in pairs):
            pairs = [(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs]
            query = urlencode(pairs, safe="/:*")
        path = f"{path}?{query}"
    return f"{scheme}://{netloc}{sep}{path}"


def secret_from_env() -> bytes | None:
    """The signing key when it is kept outside the store.

    ``CLOUDLOOP_SECRET`` holds it as hex, or ``CLOUDLOOP_SECRET_FILE`` names
    a file (private to its owner) holding it as hex or as raw bytes. Either
    way it must be at least 16 bytes. None: use the key in the backend.
    """
    text = os.environ.get("CLOUDLOOP_SECRET")
    source = "CLOUDLOOP_SECRET"
    if not text:
        path = os.environ.get("CLOUDLOOP_SECRET_FILE")
        if not path:
            return None
        source = f"CLOUDLOOP_SECRET_FILE={path}"
        try:
            st = os.stat(path)
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"{source}: the key file can be read by other users "
                    f"(mode {st.st_mode & 0o777:o}); run: chmod 600 {path}"
                )
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ConfigError(f"{source}: cannot read the key file ({e.strerror})") from None
        try:
            text = raw.decode("ascii").strip()
            key = bytes.fromhex(text)
        except (UnicodeDecodeError, ValueError):
            key = raw
    else:
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            raise ConfigError(
                f"{source} must be the key as hex (e.g. from `python -c 'import secrets; "
                "print(secrets.token_hex(32))'`)"
            ) from None
    if len(key) < 16:
        raise ConfigError(f"{source}: the key must be at least 16 bytes, not {len(key)}")
    return key


def scheme_of(url: str) -> str:
    if "://" not in url:
        raise ConfigError(
            f"backend {url!r} is not a URL; use e.g. 'sqlite:///path/to/dir' "
            "(or a plain directory path for the local SQLite backend)"
        )
    return url.split("://", 1)[0].lower()
