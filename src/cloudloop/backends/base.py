"""The two interfaces every backend implements, and nothing else.

Everything above this layer (executor, worker, dashboard) moves opaque bytes
through these primitives::

    Queue:  put(bodies) · lease(max_n, lease_s, wait_s) -> [Lease(id, token, body, attempt)]
            extend(leases, lease_s) · ack(leases) · release(leases) · stats()
    Store:  put(key, data, if_absent=False) · get(key) · exists(key) · list(prefix) · delete(prefix)

Capabilities differ between services and are declared as class attributes
(``Queue.reports_lease_lost``, ``Queue.max_message_bytes``) so callers and the
contract tests branch on them instead of on backend names.
"""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from ..errors import ConfigError
from ..model import Lease, QueueStats

_KEY = re.compile(r"^[A-Za-z0-9_.=+@-]+(/[A-Za-z0-9_.=+@-]+)*$")


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid store key {key!r}: use 'a/b/c' with [A-Za-z0-9_.=+@-] parts")
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
    #: bodies larger than this must be spilled to the store by the caller.
    max_message_bytes: ClassVar[int] = 1 << 20

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
        url: the URL it was opened from (passed to workers verbatim).
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
        self.url = url
        self.queue = queue
        self.store = store
        self.key = key

    def close(self) -> None:
        self.queue.close()
        self.store.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def scheme_of(url: str) -> str:
    if "://" not in url:
        raise ConfigError(
            f"backend {url!r} is not a URL; use e.g. 'sqlite:///path/to/dir' "
            "(or a plain directory path for the local SQLite backend)"
        )
    return url.split("://", 1)[0].lower()
