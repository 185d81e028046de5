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
A put that fails is retried with backoff until it succeeds; results are never
dropped. The queue is bounded, so a slow store slows the worker down instead
of filling its memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from . import codec, keys
from .backends import Backend
from .errors import LeaseLost
from .model import Lease

log = logging.getLogger("cloudloop.worker")


class Committer(threading.Thread):
    def __init__(self, backend: Backend, worker_id: str, host: str, depth: int = 8):
        super().__init__(name="cloudloop-committer", daemon=True)
        self.backend, self.worker_id, self.host = backend, worker_id, host
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
    ) -> None:
        """Store a batch of outcomes (packed rows), logs, and drop finished checkpoints."""
        self._submit(lambda: self._write(job_id, blobs, indices, nfail, logs, checkpoints), wait)

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
            pause = 0.5
            while True:
                try:
                    fn()
                    break
                except Exception as e:  # the backend is down: keep the results, try again
                    log.warning("could not store results (retrying in %.0f s): %s", pause, e)
                    time.sleep(pause)
                    pause = min(pause * 2, 30.0)

    def _write(self, job_id, blobs, indices, nfail, logs, checkpoints) -> None:
        store, key = self.backend.store, self.backend.key
        if logs:
            store.put(keys.logs(job_id, min(logs), max(logs)), codec.encode_json(logs))
        if indices:
            lo, hi = min(indices), max(indices)
            if hi - lo + 1 == len(set(indices)):  # the usual case: one run, stored as sent
                part = codec.encode_part(key, self.worker_id, self.host, blobs)
                store.put(keys.result(job_id, lo, hi, nfail), part)
            else:  # retries or cancellations left gaps: one part per contiguous run
                self._write_runs(job_id, blobs)
        for i in checkpoints:
            store.delete(keys.checkpoint(job_id, i))

    def _write_runs(self, job_id: str, blobs: list[bytes]) -> None:
        rows = sorted((r for b in blobs for r in codec.loads(b)), key=lambda r: r[0])
        run: list[tuple] = []
        for r in [*rows, None]:
            if run and (r is None or r[0] != run[-1][0] + 1):
                nfail = sum(1 for x in run if x[3] is not None)
                part = codec.encode_part(
                    self.backend.key, self.worker_id, self.host, [codec.pack_rows(run)]
                )
                self.backend.store.put(keys.result(job_id, run[0][0], run[-1][0], nfail), part)
                run = []
            if r is not None and not (run and r[0] == run[-1][0]):
                run.append(r)

    def _finish(self, lease: Lease, ack: bool) -> None:
        try:
            if ack:
                self.backend.queue.ack([lease])
            else:
                self.backend.queue.release([lease])
        except LeaseLost:
            log.warning("lease on message %s was lost; its results are stored anyway", lease.id)
        with self._lock:
            self._held.pop(lease.id, None)
