"""Write-behind for a worker: results, logs and acks leave the task path.

::

    worker main thread                      Committer thread (in order, one at a time)
    ──────────────────                      ──────────────────────────────────────────
    flush(chunk buffers) ──► bounded queue ──► put results/<lo>-<hi>-... , logs/..., delete checkpoints
    finish(lease, ack)   ──►               ──► ack (or release) the message
    lease next chunk, keep running tasks

Everything for one message is done in submission order, so a message is acked
only after every one of its results is stored: the durability rule is the
same as if the worker did it inline, but the runner no longer idles while a
store put or a queue delete is in flight (tens of milliseconds on S3/SQS).
The queue is bounded, so a slow store slows the worker down instead of
filling its memory.

A store that fails is not retried forever (a full disk, a Redis value over
its limit, S3 access denied: the job would hang with the client seeing
nothing). Each write is tried ``tries`` times with backoff (about a minute;
seconds once the worker is told to stop). Then:

* results that still cannot be stored are replaced by small failure rows
  saying why (``the result of task 7 could not be stored: ...``), so a result
  too big for the store fails its task instead of hanging the job;
* if even those cannot be written, nothing is stored for that message: it is
  handed back instead of acked (another worker, or this one later, runs it
  again), :attr:`failing` is set and the worker takes no more work until
  :meth:`recovered` (it probes the store).

Every failure is kept in words in :attr:`trouble`, which the worker's
heartbeat record carries to ``job.status()`` and the dashboard. An ack or
release whose message is already gone is done: a lease that is gone is gone,
whatever the service calls it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from . import codec, keys
from .backends import Backend
from .cache import CacheWrite, pack_outcomes
from .errors import BackendError, LeaseLost, TamperedError
from .model import ErrorWire, Lease, OutcomeRow

log = logging.getLogger("cloudloop.worker")

_SERVICE_MODULES = {"botocore", "boto3", "redis", "sqlite3", "urllib3", "socket"}


def is_transient(e: BaseException) -> bool:
    """The error came from the backend (a service, a disk, a network), not from
    the message being handled: it says nothing against the message."""
    if isinstance(e, TamperedError):
        return False
    if isinstance(e, (BackendError, OSError, TimeoutError)):
        return True
    return type(e).__module__.split(".")[0] in _SERVICE_MODULES


class _GaveUp(Exception):
    """A write was tried ``tries`` times and failed each time."""


class Committer(threading.Thread):
    def __init__(
        self,
        backend: Backend,
        worker_id: str,
        host: str,
        depth: int = 8,
        tries: int = 7,
        stopping: Any = None,
    ):
        super().__init__(name="cloudloop-committer", daemon=True)
        self.backend, self.worker_id, self.host = backend, worker_id, host
        self.tries = tries
        self.stopping = stopping
        self.trouble: str | None = None
        self.failing = False
        self._dropped = False  # a write of the current message was given up
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self.start()

    # ------------------------------------------------------------ called by the worker

    def flush(
        self,
        job_id: str,
        blobs: list[bytes],
        indices: list[int],
        nfail: int,
        logs: dict[int, list],
        checkpoints: list[int],
        wait: bool = False,
        cache: CacheWrite | None = None,
    ) -> None:
        """Store a batch of outcomes (packed rows), logs, and drop finished checkpoints;
        with ``cache``, pack the outcomes into the cache once they are stored."""
        self._submit(
            lambda: self._write(job_id, blobs, indices, nfail, logs, checkpoints, cache), wait
        )

    def finish(self, lease: Lease, ack: bool, wait: bool = False) -> None:
        """Ack (or release) a message once everything flushed before this call is stored."""
        with self._lock:
            self._held[lease.id] = lease
        self._submit(lambda: self._finish(lease, ack), wait)

    def held(self) -> list[Lease]:
        """Leases waiting for their ack: the heartbeat keeps extending them."""
        with self._lock:
            return list(self._held.values())

    def drain(self) -> None:
        self._submit(lambda: None, wait=True)

    def recovered(self) -> None:
        """The store accepts writes again (the worker's probe succeeded)."""
        self.failing = False
        self.trouble = None

    def close(self) -> None:
        self.drain()
        self._q.put(None)
        self.join(timeout=30)

    # ------------------------------------------------------------ the thread

    def _submit(self, fn: Callable[[], None], wait: bool) -> None:
        if not wait:
            self._q.put(fn)
            return
        done = threading.Event()

        def run_then_signal() -> None:
            try:
                fn()
            finally:
                done.set()

        self._q.put(run_then_signal)
        done.wait()

    def run(self) -> None:
        while True:
            fn = self._q.get()
            if fn is None:
                return
            try:
                fn()
            except Exception as e:  # never the end of the thread: the worker goes on
                self._dropped = True  # and the message is handed back, not acked
                log.exception("committer: %s", e)

    def _retry(self, what: str, fn: Callable[..., Any], *args: Any, tries: int = 0) -> Any:
        """``fn(*args)``, tried up to ``tries`` times with backoff; _GaveUp after the last."""
        pause, tries = 0.5, tries or self.tries
        for n in range(1, tries + 1):
            try:
                result = fn(*args)
            except LeaseLost:
                raise
            except Exception as e:
                said = " ".join(str(e).split())[:300] or type(e).__name__
                self.trouble = f"cannot {what}: {type(e).__name__}: {said} (try {n} of {tries})"
                log.warning("%s", self.trouble)
                if n == tries or not is_transient(e):  # retrying will not mend a bad request
                    raise _GaveUp(self.trouble) from e
                stopping = self.stopping is not None and self.stopping.is_set()
                time.sleep(min(pause, 0.5) if stopping else pause)
                pause = min(pause * 2, 30.0)
                if stopping:
                    tries = min(tries, n + 2)  # told to stop: a couple more tries, quickly
            else:
                if self.trouble and not self.failing:
                    self.trouble = None
                return result
        return None

    def _write(self, job_id, blobs, indices, nfail, logs, checkpoints, cache=None) -> None:
        backend = self.backend
        if logs:
            name = keys.logs(job_id, min(logs), max(logs))
            try:
                self._retry("store task logs", backend.put_record, name, logs)
            except _GaveUp:
                pass  # a log is not worth a task: its result goes on
        if indices:
            try:
                self._write_results(job_id, blobs, indices, nfail)
            except _GaveUp as e:
                self._dropped = self.failing = True
                self.trouble = f"{e}; nothing could be stored, so the work was handed back"
                return
            if cache is not None:
                self._pack(job_id, blobs, cache)
        for i in checkpoints:
            try:
                self._retry("drop a finished checkpoint", self._drop_checkpoint, job_id, i)
            except _GaveUp:
                pass

    def _pack(self, job_id: str, blobs: list[bytes], cache: CacheWrite) -> None:
        """Put the outcomes just stored into the cache too (a few tries: the results
        are safe, and a cache that misses costs a re-run, never a wrong result)."""
        rows = sorted(
            (r for b in blobs for r in codec.unpack_rows(b, "results")), key=lambda r: r.index
        )
        try:
            self._retry(
                f"store cache entries of job {job_id}",
                pack_outcomes,
                self.backend,
                job_id,
                cache,
                rows,
                self.worker_id,
                self.host,
                tries=3,
            )
        except _GaveUp:
            pass

    def _drop_checkpoint(self, job_id: str, index: int) -> None:
        self.backend.store.delete(keys.checkpoint(job_id, index))

    def _write_results(self, job_id, blobs, indices, nfail) -> None:
        lo, hi = min(indices), max(indices)
        if hi - lo + 1 == len(set(indices)):  # the usual case: one run, stored as sent
            runs = [(lo, hi, nfail, blobs)]
        else:  # retries or cancellations left gaps: one part per contiguous run
            runs = self._runs(blobs)
        for lo, hi, nfail, part_blobs in runs:
            what = f"store results of job {job_id}"
            try:
                self._retry(what, self._put_part, job_id, lo, hi, nfail, part_blobs)
            except _GaveUp as e:
                rows = [r for b in part_blobs for r in codec.unpack_rows(b, "results")]
                self._store_what_fits(job_id, rows, str(e))

    def _store_what_fits(self, job_id: str, rows: list[OutcomeRow], why: str) -> None:
        """Halve a part the store refused until what fits is stored; a single row that
        does not fit becomes a failure saying why. If even that fails, _GaveUp: the
        store takes nothing (at most log2(rows) more tries to find that out)."""
        if len(rows) == 1:
            failed = self._unstorable(rows, why)
            what = f"store that results of job {job_id} could not be stored"
            self._retry(what, self._put_rows, job_id, failed, tries=2)
            return
        half = len(rows) // 2
        for piece in (rows[:half], rows[half:]):
            try:
                self._retry(
                    f"store results of job {job_id}", self._put_rows, job_id, piece, tries=1
                )
            except _GaveUp as e:
                self._store_what_fits(job_id, piece, str(e))

    def _put_rows(self, job_id: str, rows: list[OutcomeRow]) -> None:
        nfail = sum(1 for r in rows if r.error is not None)
        self._put_part(job_id, rows[0].index, rows[-1].index, nfail, [codec.pack_rows(rows)])

    def _put_part(self, job_id: str, lo: int, hi: int, nfail: int, blobs: list[bytes]) -> None:
        name = keys.result(job_id, lo, hi, nfail)
        part = codec.encode_part(self.backend.key, name, self.worker_id, self.host, blobs)
        self.backend.store.put(name, part)

    def _runs(self, blobs: list[bytes]) -> list[tuple[int, int, int, list[bytes]]]:
        """Rows split into runs of consecutive tasks (one part each), each task once."""
        rows = sorted(
            (r for b in blobs for r in codec.unpack_rows(b, "results")), key=lambda r: r.index
        )
        out: list[tuple[int, int, int, list[bytes]]] = []
        run: list[OutcomeRow] = []
        for r in [*rows, None]:
            if run and (r is None or r.index != run[-1].index + 1):
                nfail = sum(1 for x in run if x.error is not None)
                out.append((run[0].index, run[-1].index, nfail, [codec.pack_rows(run)]))
                run = []
            if r is not None and not (run and r.index == run[-1].index):
                run.append(r)
        return out

    def _unstorable(self, rows: list[OutcomeRow], why: str) -> list[OutcomeRow]:
        """Failure rows in place of outcomes the store would not take."""
        out = []
        for r in rows:
            if r.cancelled:
                out.append(r._replace(value=None))
                continue
            msg = f"the result of task {r.index} could not be stored: {why}"
            out.append(r._replace(value=None, error=r.error or _backend_error(msg)))
        return out

    def _finish(self, lease: Lease, ack: bool) -> None:
        dropped, self._dropped = self._dropped, False
        queue_ = self.backend.queue
        ack = ack and not dropped  # results that were not stored: the message goes back
        try:
            op = queue_.ack if ack else queue_.release
            self._retry("ack" if ack else "hand the message back", op, [lease], tries=4)
        except LeaseLost:
            log.warning("lease on message %s was lost; its results are stored anyway", lease.id)
        except _GaveUp:
            log.warning("giving up on message %s: its lease will expire by itself", lease.id)
        finally:
            with self._lock:
                self._held.pop(lease.id, None)


def _backend_error(message: str) -> ErrorWire:
    return codec.error_info(BackendError(message), f"BackendError: {message}\n").to_wire()
