"""A worker's heartbeat thread: keeps leases alive, notices cancellation, says who it is.

Every third of the lease it extends the message being run and those waiting
for their ack; every couple of seconds it checks the running job's
cancellation marker; every ``heartbeat`` seconds it writes ``workers/<id>``
(host, pid, provider, current job and task, the task's ``cl.progress``, tasks
done, memory, and any trouble it is in) so ``status``, the dashboard and
clients can see every worker. Records are signed by the worker; readers go
through :func:`worker_records`, which verifies and validates each one, so a
forged or malformed record is never shown or counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from . import __version__, codec, keys
from .errors import LeaseLost, TamperedError
from .model import WorkerRecord

log = logging.getLogger("cloudloop.worker")


class Heartbeat(threading.Thread):
    """Extends the current lease, notices cancellation, records the worker's state."""

    def __init__(self, worker: Any):
        super().__init__(name="cloudloop-heartbeat", daemon=True)
        self.w = worker
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        try:  # a clean exit leaves no record behind; a crashed worker's goes stale
            self.w.store.delete(keys.worker(self.w.id))
        except Exception as e:
            log.warning("could not remove heartbeat record: %s", e)

    def run(self) -> None:
        w = self.w
        last = extended = time.monotonic()
        self.write()
        tick = max(0.2, min(1.0, w.options.lease / 6))
        while not self._stop_event.wait(tick):
            chunk = w.current
            if time.monotonic() - extended > w.options.lease and chunk is not None:
                # frozen (SIGSTOP, a stalled VM) past the lease: someone else may hold the
                # message now, whatever an extend answers (SQS "extends" expired leases)
                if not chunk.lost:
                    log.warning("lease on message %s may have expired while frozen", chunk.lease.id)
                chunk.lost = True
            if time.monotonic() - extended > w.options.lease / 3:
                held = w.committer.held()
                if chunk is not None and not chunk.lost:
                    held.append(chunk.lease)
                for lease in held:
                    try:
                        w.queue.extend([lease], w.options.lease)
                    except LeaseLost:
                        if chunk is not None and lease is chunk.lease:
                            chunk.lost = True
                        log.warning("lease on message %s lost while running", lease.id)
                    except Exception as e:  # a transient backend error: try again next tick
                        log.warning("could not extend lease: %s", e)
                extended = time.monotonic()
            if chunk is not None:
                try:
                    w.data.is_cancelled(chunk.job)
                except Exception as e:
                    log.warning("could not check for cancellation: %s", e)
            if w.options.stop_at and time.time() > w.options.stop_at and w.preempted_at is None:
                log.warning("the cluster's cost deadline has passed: leaving")
                w.on_preempt({"action": "stop-at"})
            if time.monotonic() - last > w.heartbeat_every:
                last = time.monotonic()
                self.write()

    def write(self, state: str | None = None) -> None:
        w = self.w
        chunk = w.current
        st = w.runner.status() if w.runner.alive else None
        record = {
            "id": w.id,
            "host": w.host,
            "pid": os.getpid(),
            "provider": w.provider,
            "version": __version__,
            "backend": w.backend.url,
            "started": w.started,
            "last_seen": time.time(),
            "every": w.heartbeat_every,
            "state": state or ("preempted" if w.preempted_at else "busy" if chunk else "idle"),
            "job": chunk.job_id if chunk else None,
            "task": st.index if st and st.index >= 0 else None,
            "progress": st.progress if st and st.progress >= 0 else None,
            "message": st.message if st else "",
            "tasks_done": w.tasks_done,
            "failures": w.failures,
            "rss": w.runner.rss() if w.runner.alive else 0,
            "load": os.getloadavg()[0],
            "error": w.trouble(),
            **w.machine,
        }
        try:
            w.backend.put_record(keys.worker(w.id), record)
        except Exception as e:
            log.warning("could not write heartbeat: %s", e)


def worker_records(backend: Any, prune_after: float | None = None) -> list[WorkerRecord]:
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
