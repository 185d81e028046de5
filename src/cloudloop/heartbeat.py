"""A worker's heartbeat thread: keeps leases alive, notices cancellation, says who it is.

Every third of the lease it extends the message being run and those waiting
for their ack; every couple of seconds (the backend's ``check_interval``)
while a chunk runs it checks the job's cancellation marker; every ``heartbeat`` seconds it writes ``workers/<id>``
(host, pid, provider, the job it is on and since when, current task, the task's ``cl.progress``, tasks
done, memory, and any trouble it is in) so ``status``, the dashboard and
clients can see every worker. Between those it sleeps: it wakes only when
one of them is due, never on a fixed tick. A worker that starts on a job or goes idle
has its record written at once (at most once a second), so a job of tasks
shorter than a heartbeat is still seen running and a finished one is not. Records are signed by the worker; readers go
through :func:`worker_records`, which verifies and validates each one, so a
forged or malformed record is never shown or counted. A worker started by a
cluster (``cloudloop up``) also names it (``CLOUDLOOP_CLUSTER``), which is how
``ls`` tells a profile's workers from the rest.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from . import codec, keys
from .errors import LeaseLost, TamperedError
from .model import Lease, WorkerRecord

if TYPE_CHECKING:
    from .backends import Backend

log = logging.getLogger("cloudloop.worker")

FORCED_GAP = 1.0  # seconds: the least time between records written on a job switch


class HeartbeatSource(Protocol):
    """What the heartbeat needs of its worker, and nothing more."""

    id: str
    lease_s: float  # how long a lease lasts: extended every third of it
    every: float  # seconds between heartbeat records

    def leases(self) -> list[Lease]:
        """The leases to keep alive: the running message's and those awaiting their ack."""

    def lease_lost(self, lease: Lease) -> None:
        """``lease`` is no longer held (the service said so, or the worker was frozen)."""

    def tick(self) -> None:
        """The worker's own periodic checks (cancellation, a cost deadline)."""

    def check_every(self) -> float:
        """Seconds between calls of :meth:`tick` now (longer while the worker is idle)."""

    def record(self) -> dict[str, Any]:
        """Its heartbeat record now (the fields of :class:`~cloudloop.model.WorkerRecord`)."""


class Heartbeat(threading.Thread):
    """Extends the worker's leases, runs its periodic checks, records its state."""

    def __init__(self, backend: Any, source: HeartbeatSource):
        super().__init__(name="cloudloop-heartbeat", daemon=True)
        self.backend, self.source = backend, source
        self._wake = threading.Event()
        self._stopping = False
        self._write_due = False
        self._last_forced = -math.inf

    def nudge(self) -> None:
        """Look again at what is due now (the worker has taken a chunk: checks for its
        cancellation are due more often than while it was idle)."""
        self._wake.set()

    def write_soon(self) -> None:
        """The worker switched between idle and a job: write its record now, not at the
        next heartbeat (at most once a second; a later switch waits for the next one)."""
        self._write_due = True
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self.join(timeout=10)
        try:  # a clean exit leaves no record behind; a crashed worker's goes stale
            self.backend.store.delete(keys.worker(self.source.id))
        except Exception as e:
            log.warning("could not remove heartbeat record: %s", e)

    def run(self) -> None:
        src = self.source
        last = extended = checked = time.monotonic()
        self.write()
        while True:
            # sleep until the next thing is due (an extension, a check, a record), not
            # on a fixed tick: a waiting worker wakes every couple of seconds at most
            now = time.monotonic()
            due = min(extended + src.lease_s / 3, last + src.every, checked + src.check_every())
            if self._write_due:
                due = min(due, self._last_forced + FORCED_GAP)
            if self._wake.wait(max(0.05, due - now)):
                self._wake.clear()
            if self._stopping:
                return
            now = time.monotonic()
            if now - extended > src.lease_s:
                # frozen (SIGSTOP, a stalled VM) past the lease: someone else may hold the
                # message now, whatever an extend answers (SQS "extends" expired leases)
                for lease in src.leases():
                    log.warning("lease on message %s may have expired while frozen", lease.id)
                    src.lease_lost(lease)
            if now - extended >= src.lease_s / 3:
                self._extend(src.leases())
                extended = time.monotonic()
            if now - checked >= src.check_every():
                checked = now
                try:
                    src.tick()
                except Exception as e:  # a backend hiccup: the next tick tries again
                    log.warning("worker check failed: %s", e)
            forced = self._write_due and now - self._last_forced >= FORCED_GAP
            if forced or now - last >= src.every:
                if forced:
                    self._write_due, self._last_forced = False, now
                last = time.monotonic()
                self.write()

    def _extend(self, leases: list[Lease]) -> None:
        for lease in leases:
            try:
                self.backend.queue.extend([lease], self.source.lease_s)
            except LeaseLost:
                log.warning("lease on message %s lost while running", lease.id)
                self.source.lease_lost(lease)
            except Exception as e:  # a transient backend error: try again next tick
                log.warning("could not extend lease: %s", e)

    def write(self) -> None:
        try:
            self.backend.put_record(keys.worker(self.source.id), self.source.record())
        except Exception as e:
            log.warning("could not write heartbeat: %s", e)


def worker_records(backend: Backend, prune_after: float | None = None) -> list[WorkerRecord]:
    """Every worker's latest heartbeat record, verified and validated.

    A record that fails its signature or its checks is skipped (logged once
    per key). With ``prune_after``, records older than that many seconds (a
    worker that died long ago) are deleted as they are found.
    """
    out = []
    store, now = backend.store, time.time()
    for key in store.list(keys.WORKERS):
        blob = store.get_or_none(key)
        if blob is None:
            continue
        try:
            rec = WorkerRecord.from_dict(codec.decode_record(backend.key, blob, key))
        except (TamperedError, ValueError) as e:
            if key not in _warned:
                _warned.add(key)
                log.warning("ignoring worker record %s: %s", key, e)
            continue
        if prune_after is not None and now - rec.last_seen > prune_after:
            store.delete(key)
            continue
        out.append(rec)
    return out


_warned: set[str] = set()
