"""The worker loop: lease a chunk, run its tasks in a child, store results, ack.

::

    queue ──lease──► Worker.run ──verify + check header──► _Chunk(todo = its task indices)
      ▲                 │                               │
      │ extend (every   │  RunnerProcess: sub-batches of todo, sized to ~0.2 s of work
      │ lease/3, by     │     ├─ outcomes ─► buffer ─flush (every 0.5 s / chunk end)─► STORE results/, logs/
      │ _Heartbeat)     │     ├─ cl.checkpoint / outputs ─► the worker stores them, signed, for the task
      │                 │     ├─ timeout / memory / crash ─► kill the task's process tree, failure or retry
      │                 │     └─ chunk running > split_after ─► tail re-queued as new messages
      └──────ack────────┘  (only after every task of the message has a stored result)

    _Heartbeat thread: extends the lease, notices job cancellation, writes
    workers/<id> (host, pid, current task, progress, tasks done, trouble) to the store.

Results are stored before the ack, keyed by task index, so a worker that dies
anywhere in between costs at most a re-run, never a lost or doubled result
(the client keeps the best outcome it sees for an index). A message leased
again after its holder vanished is run carefully: tasks that already have
results are skipped, the rest run one at a time with a start marker each, and
a task that has taken ``max_deliveries`` workers down with it is failed as
:class:`WorkerLost` instead of looping forever.

A worker never dies of one message, and never loops on one:

* A message that fails verification is kept raw under ``deadletter/`` and
  dropped; nothing it claims is believed, so it cannot fail a real job's tasks.
* Any other error while handling a message is that message's problem: it is
  handed back and retried, and after ``_POISON_TRIES`` deliveries that all
  failed it is dead-lettered with the reason, its tasks failed in words.
* A backend that fails (a lease, a listing, a manifest read) is retried with
  backoff; the worker says so in its heartbeat record and goes on.
* A store that refuses writes: each write is retried a bounded number of
  times (:mod:`cloudloop.commit`); then results too big to store become task
  failures that say why, and if nothing can be written the worker stops
  taking work, hands its message back, and probes the store until it accepts
  writes again. The trouble is in its heartbeat record and reaches
  ``job.status()`` and the dashboard. SIGTERM is honoured throughout.
* A job it cannot run, pickled by another Python minor version or requiring
  distributions it lacks (``JobManifest.requires``, checked once per job), is
  set aside: its messages are handed back or hidden for a while, never run,
  failed or dead-lettered; for a missing requirement the worker writes
  ``jobs/<job>/aside/<worker>`` once, which the job's status reads.
* Started for a client (``--parent-pid``), a worker leaves once that client is
  gone and the queue has been empty for a few seconds (the job goes on without
  the client; nothing is left running), even if the client went during the
  worker's start-up.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import __version__, codec, environment, keys
from .backends import Backend
from .commit import Committer, is_transient
from .errors import (
    CorruptMessage,
    MemoryLimitExceeded,
    TamperedError,
)
from .heartbeat import Heartbeat, worker_records
from .jobdata import JobData, JobInfo, paused
from .model import (
    PYTHON,
    DeadLetterReason,
    Lease,
    MessageHeader,
    SetAside,
    WorkerOptions,
    WorkerRecord,
)
from .procs import meminfo
from .runner import RunnerProcess
from .spot import Imds, SpotWatcher
from .taskrun import ChunkRunner, _Chunk, _Flag, _fmt_bytes, _said, _Wakeup

log = logging.getLogger("cloudloop.worker")

_MEMORY_HANDBACKS = 40  # times one worker hands a too-big retry back (~6 min) before failing it
_BIG_ENOUGH_LOOKS = 3  # times a too-big retry is met with no worker for it before it fails
_POISON_TRIES = 3  # deliveries whose handling failed before a message is dead-lettered
#: what the task runner must not inherit: the key and the URL that opens the backend
SECRET_ENV = ("CLOUDLOOP_SECRET", "CLOUDLOOP_SECRET_FILE", "CLOUDLOOP_BACKEND")


class _Backoff:
    """Sleeps growing from 0.5 s to 30 s between failed tries; wakes early on stop."""

    def __init__(self, stopping: _Flag, first: float = 0.5, cap: float = 30.0):
        self.stopping, self.first, self.cap = stopping, first, cap
        self.pause = first

    def reset(self) -> None:
        self.pause = self.first

    def sleep(self) -> None:
        end = time.monotonic() + self.pause
        while not self.stopping.is_set() and time.monotonic() < end:
            time.sleep(min(0.1, end - time.monotonic()))
        self.pause = min(self.pause * 2, self.cap)


class Worker(ChunkRunner):
    """Pulls chunks from a backend's queue and runs them until told to stop.

    Args:
        backend: the open backend to serve.
        options: worker settings.
        provider: what started it (shown in its heartbeat record).
        parent_pid: the client that started it: the worker leaves when that
            process is gone (``exit_when_orphaned``).
    """

    def __init__(
        self,
        backend: Backend,
        options: WorkerOptions | None = None,
        provider: str = "",
        parent_pid: int | None = None,
    ):
        self.backend = backend
        self.queue, self.store, self.key = backend.queue, backend.store, backend.key
        self.options = options or WorkerOptions()
        self.every = self.options.heartbeat or backend.heartbeat_default  # heartbeat records
        self.lease_s = self.options.lease
        # $CLOUDLOOP_HOST names the machine when the hostname does not (containers,
        # network namespaces, hosts that all call themselves "localhost")
        self.host = (os.environ.get("CLOUDLOOP_HOST") or socket.gethostname())[:200]
        self.id = f"{keys.safe_name(self.host)}-{os.getpid()}-{secrets.token_hex(2)}"
        self.provider = provider or os.environ.get("CLOUDLOOP_PROVIDER", "external")
        self.cluster = os.environ.get("CLOUDLOOP_CLUSTER") or None  # set by `cloudloop up`
        self.scratch = Path(tempfile.mkdtemp(prefix="cloudloop-worker-"))
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        self.runner = RunnerProcess(self.scratch, {**env, "CLOUDLOOP_WORKER_ID": self.id})
        self.runner_job: str | None = None
        self.data = JobData(backend, self.scratch)
        self.current: _Chunk | None = None
        self.stopping = _Flag()
        self.wakeup = _Wakeup()  # ends the main thread's wait on its task at once
        self.tasks_done = 0
        self.failures = 0
        self.started = time.time()
        self.parent_pid = parent_pid
        if parent_pid is None and self.options.exit_when_orphaned:
            self.parent_pid = os.getppid()
        self._mem_checked = 0.0
        self.mean: dict[str, float] = {}  # job -> seconds per task, to size sub-batches
        self.committer = Committer(backend, self.id, self.host, stopping=self.stopping)
        self.preempted_at: float | None = None
        self._spot: SpotWatcher | None = None
        self.machine = self._describe_machine()
        self._paused_checked = -math.inf
        self._is_paused = False
        self._trouble: str | None = None
        self._aside: dict[str, int] = {}  # message of a job we cannot run -> times met
        self._aside_jobs: set[str] = set()
        self._live_seen: tuple[float, list[WorkerRecord]] | None = None
        self._aside_seen: dict[str, tuple[float, set[str]]] = {}  # job -> (when, aside keys)
        # the job this worker is on (from its first chunk until the queue has no work
        # for it), and since when: the record says so at once on a change, so tasks
        # shorter than a heartbeat are seen running (one write per change, not per task)
        self.on_job: str | None = None
        self.on_job_since = 0.0
        # what it offers its tasks: a retry_memory retry that needs more is left to others
        self.memory_offered = self.options.worker_memory or meminfo()[0]
        self._heartbeat = Heartbeat(backend, self)

    # ---------------------------------------------------------------- main loop

    def _describe_machine(self) -> dict[str, str]:
        """Instance id, type and market from instance metadata, when there is some."""
        if not self.options.metadata_url:
            return {}
        imds, out = Imds(self.options.metadata_url), dict[str, str]()
        for key, path in (
            ("instance", "instance-id"),
            ("instance_type", "instance-type"),
            ("market", "instance-life-cycle"),
        ):
            try:
                value = imds.get(path)
            except OSError:
                return out
            if value:
                out[key] = value[:100]
        return out

    def request_stop(self, *_: Any) -> None:
        self.stopping.set()
        self._wake()

    def _wake(self) -> None:
        """End the main thread's wait, on its task or on the queue (safe in a signal
        handler)."""
        self.wakeup.ring()
        self.queue.wakeup()

    def on_preempt(self, notice: dict | None = None) -> None:
        """A spot interruption notice (or the cost deadline): finish or checkpoint,
        hand work back, leave."""
        if self.preempted_at is None:
            log.warning("leaving: %s", (notice or {}).get("action", "preempted"))
            self.preempted_at = time.monotonic()
            self.runner.preempt()
            self._wake()

    def orphaned(self) -> bool:
        """The client that started this worker is gone."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def trouble(self) -> str | None:
        """What is going wrong, in words, for the heartbeat record (None: nothing)."""
        return self.committer.trouble or self._trouble

    # ---------------------------------------------------------------- for the heartbeat

    def leases(self) -> list[Lease]:
        held = self.committer.held()
        chunk = self.current
        if chunk is not None and not chunk.lost:
            held.append(chunk.lease)
        return held

    def lease_lost(self, lease: Lease) -> None:
        chunk = self.current
        if chunk is not None and lease is chunk.lease:
            chunk.lost = True

    def check_every(self) -> float:
        """How often the heartbeat calls :meth:`tick`: every ``check_interval`` while a
        chunk runs (cancellation); idle, only for the cost deadline."""
        every = self.data.check_interval if self.current is not None else 10.0
        stop_at = self.options.stop_at
        if stop_at and self.preempted_at is None:
            every = min(every, max(0.0, stop_at - time.time()) + 0.01)
        return max(0.2, every)

    def tick(self) -> None:
        chunk = self.current
        if chunk is not None and not chunk.job.cancelled and self.data.is_cancelled(chunk.job):
            self.wakeup.ring()  # the running task may have to stop now
        stop_at = self.options.stop_at
        if stop_at and time.time() > stop_at and self.preempted_at is None:
            self.on_preempt({"action": "the cluster's cost deadline has passed"})

    def record(self) -> dict[str, Any]:
        chunk = self.current
        st = self.runner.status() if self.runner.alive else None
        job = chunk.job_id if chunk else self.on_job
        state = "preempted" if self.preempted_at else "busy" if job else "idle"
        return {
            "id": self.id,
            "host": self.host,
            "pid": os.getpid(),
            "provider": self.provider,
            "version": __version__,
            "backend": self.backend.url,
            "started": self.started,
            "last_seen": time.time(),
            "every": self.every,
            "state": state,
            "job": job,
            "busy_since": self.on_job_since if job else None,
            "task": st.index if st and st.index >= 0 else None,
            "progress": st.progress if st and st.progress >= 0 else None,
            "message": st.message if st else "",
            "tasks_done": self.tasks_done,
            "failures": self.failures,
            "rss": self.runner_rss() if self.runner.alive else 0,
            "load": os.getloadavg()[0],
            "error": self.trouble(),
            "cluster": self.cluster,
            "python": PYTHON,
            "memory": self.memory_offered,
            **self.machine,
        }

    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self._heartbeat.start()
        if self.options.metadata_url:
            self._spot = SpotWatcher(self.options.metadata_url, self.on_preempt)
            self._spot.start()
        log.info("worker %s serving %s", self.id, self.backend.url)
        try:
            self._loop()
        finally:
            if self._spot is not None:
                self._spot.stop()
            self.committer.close()
            self._heartbeat.stop()
            self.runner.close()
            self.wakeup.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
            why = " (preempted)" if self.preempted_at else ""
            log.info("worker %s stopped after %d tasks%s", self.id, self.tasks_done, why)

    def _loop(self) -> None:
        idle_since = time.monotonic()
        backoff = _Backoff(self.stopping)
        while not self.stopping.is_set() and self.preempted_at is None:
            if self.committer.failing:
                self._wait_for_store(backoff)
                continue
            try:
                paused = self._paused()
                leases = (
                    []
                    if paused
                    else self.queue.lease(1, self.options.lease, wait_s=self.backend.idle_wait)
                )
            except Exception as e:  # a backend hiccup: try again, do not leave
                self._trouble = f"cannot take work from the queue: {_said(e)}"
                log.warning("%s (retrying in %.1f s)", self._trouble, backoff.pause)
                backoff.sleep()
                continue
            backoff.reset()
            self._trouble = None
            if paused:
                time.sleep(self.backend.idle_wait)
            # (a message set aside for another worker is no work: it does not keep us here)
            if [self._process(lease) for lease in leases].count(True):
                idle_since = time.monotonic()
            elif not leases and self.on_job is not None:
                self._switch_job(None)  # nothing to do: say so now, not a heartbeat later
            elif self._should_exit(time.monotonic() - idle_since):
                return

    def _wait_for_store(self, backoff: _Backoff) -> None:
        """The store refused every write: take no work until a probe write succeeds."""
        log.warning("the store refuses writes; probing again in %.0f s", backoff.pause)
        backoff.sleep()
        if self.stopping.is_set():
            return
        probe = keys.probe(self.id)
        try:
            self.store.put(probe, b"probe")
            self.store.delete(probe)
        except Exception as e:
            log.warning("the store still refuses writes: %s", _said(e))
        else:
            log.info("the store accepts writes again; taking work")
            self.committer.recovered()
            backoff.reset()

    def _paused(self) -> bool:
        """``cloudloop pause`` (checked every two heartbeats, at least every 10 s): take no
        new work."""
        now = time.monotonic()
        if now - self._paused_checked > min(10.0, 2 * self.every):
            self._paused_checked = now
            self._is_paused = paused(self.backend)
        return self._is_paused

    def _should_exit(self, idle: float) -> bool:
        limit = self.options.idle_exit
        if self.orphaned():  # the client is gone: finish what is queued, then leave
            limit = min(limit if limit is not None else math.inf, 5.0)
        return limit is not None and idle >= limit

    # ---------------------------------------------------------------- one message

    def _process(self, lease: Lease) -> bool:
        """Handle one message; whatever goes wrong, the worker goes on. False if it was
        set aside for workers of another Python, or with what its job requires."""
        try:
            return self._handle(lease)
        except Exception as e:
            self._message_failed(lease, e)
            return True
        finally:
            self.current = None

    def _message_failed(self, lease: Lease, err: Exception) -> None:
        self.runner.close()  # its state is unknown: the next message gets a fresh one
        try:
            self._give_back(lease, err)
        except Exception as e:  # the backend is failing too: the lease expires by itself
            log.warning("message %s: could not hand it back either: %s", lease.id, _said(e))

    def _give_back(self, lease: Lease, err: Exception) -> None:
        reason = _said(err)
        if is_transient(err):
            log.warning("message %s: backend error (%s); handing it back", lease.id, reason)
            self._trouble = f"backend error: {reason}"
            self.committer.finish(lease, ack=False)
            _Backoff(self.stopping, first=1.0).sleep()
            return
        log.exception("message %s: could not be handled (delivery %d)", lease.id, lease.attempt)
        if lease.attempt < _POISON_TRIES:
            self.committer.finish(lease, ack=False)
            return
        why = (
            f"the worker could not handle this task's queue message ({lease.attempt} "
            f"deliveries failed; last: {reason}); it was dead-lettered"
        )
        self._deadletter(lease, why, fail_tasks=True)

    def _set_aside(self, lease: Lease, job: JobInfo) -> None:
        """A job pickled by another Python minor version, or requiring distributions
        this worker lacks (:meth:`_lacks`): its tasks are not ours to run, nor to fail
        or to dead-letter.

        While a live worker that can run it is about (its heartbeat record says which
        Python it runs; it has not said that it lacks what the job requires), this
        worker hands the message back at once and waits before leasing again (2 s,
        doubling to 30 s for a message met again), so that worker takes it. With none
        about, the message is hidden from every worker for a while (2.5 s, doubling to
        a minute) and this one goes on to the messages behind it. Either way the
        deliveries it adds (an SQS queue counts them) fall to a few a minute; the
        job's status says when no live worker can run it.
        """
        m, lacks = job.manifest, job.lacks or ()
        if m.id not in self._aside_jobs:
            self._aside_jobs.add(m.id)
            if lacks:
                self._say_aside(m.id, lacks)
            else:
                log.warning("job %s needs Python %s; this worker runs %s: leaving its tasks "
                            "to workers that can", m.id, m.python, PYTHON)  # fmt: skip
        if len(self._aside) > 10_000:  # message ids: forget the oldest half
            self._aside = dict(list(self._aside.items())[5_000:])
        met = self._aside[lease.id] = self._aside.get(lease.id, 0) + 1
        if self._someone_runs(m.id, m.python, bool(lacks)):
            self.committer.finish(lease, ack=False)
            _Backoff(self.stopping, first=min(30.0, 2.0 * 2 ** (met - 1))).sleep()
        else:
            self.queue.extend([lease], min(60.0, 2.5 * 2 ** (met - 1)))

    def _lacks(self, job: JobInfo) -> tuple[tuple[str, str], ...]:
        """The job's pins (``requires``) this worker's Python does not satisfy, each
        with the version it has: looked up once per job, not per task."""
        if job.lacks is None:
            job.lacks = environment.missing(job.manifest.requires)
        return job.lacks

    def _say_aside(self, job_id: str, lacks: tuple[tuple[str, str], ...]) -> None:
        """Say once, in the log and beside the job (for its status), what we lack."""
        have = ", ".join(f"{p.partition('==')[0]} {v or '(none)'}" for p, v in lacks)
        log.warning("job %s needs %s; this worker has %s: leaving its tasks to workers "
                    "that have them", job_id, ", ".join(p for p, _ in lacks), have)  # fmt: skip
        rec = SetAside(self.id, tuple(p for p, _ in lacks), tuple(v for _, v in lacks), time.time())
        try:
            self.backend.put_record(keys.aside(job_id, self.id), dataclasses.asdict(rec))
        except Exception as e:  # the job's status will not say why: the log does
            log.warning("cannot record why job %s is left alone: %s", job_id, _said(e))

    def _someone_runs(self, job_id: str, python: str, lacking: bool) -> bool:
        """Whether another live worker of the backend can run the job: one that runs
        ``python`` and (``lacking``: we lack what the job requires) has not said that
        it lacks it too. Worker records and the job's ``aside/`` listing are re-read
        every 10 s at most."""
        live = self._seen_workers()
        if not lacking:
            return any(r.python == python for r in live)
        able = {keys.aside(job_id, r.id) for r in live if r.id != self.id}
        able -= {keys.aside(job_id, r.id) for r in live if r.python not in ("", python or PYTHON)}
        return bool(able - self._aside_keys(job_id))

    def _seen_workers(self) -> list[WorkerRecord]:
        now, seen = time.monotonic(), self._live_seen
        if seen is None or now - seen[0] > 10.0:
            try:
                live = [r for r in worker_records(self.backend) if r.live()]
            except Exception as e:  # a listing that fails: as if nobody could
                log.warning("cannot list the workers: %s", _said(e))
                live = []
            seen = self._live_seen = (now, live)
        return seen[1]

    def _aside_keys(self, job_id: str) -> set[str]:
        now, seen = time.monotonic(), self._aside_seen.get(job_id)
        if seen is None or now - seen[0] > 10.0:
            if len(self._aside_seen) > 1_000:
                self._aside_seen.clear()
            try:
                listed = set(self.store.list(keys.aside_prefix(job_id)))
            except Exception as e:
                log.warning("cannot list job %s's set-aside records: %s", job_id, _said(e))
                listed = set()
            seen = self._aside_seen[job_id] = (now, listed)
        return seen[1]

    def _deadletter(self, lease: Lease, why: str, fail_tasks: bool) -> None:
        """Keep the message's bytes and the reason; fail its tasks if it verifies; drop it."""
        at = time.time()
        name = keys.deadletter(lease.id, at)
        self.store.put(name, lease.body)
        reason = DeadLetterReason(why, at, self.id)
        self.backend.put_record(keys.deadletter_reason(name), dataclasses.asdict(reason))
        if fail_tasks:
            try:
                header, _ = codec.decode_message(self.key, lease.body)
                h = MessageHeader.from_dict(header)
                job = self.data.job(h.job)
            except (TamperedError, ValueError):
                job = None
            if job is not None:
                chunk = _Chunk(lease, h, job, {i: lease.attempt for i in h.tasks()}, b"", False)
                self._fail_all(chunk, CorruptMessage(why))
                self._flush(chunk)
        self.committer.finish(lease, ack=True)

    def _handle(self, lease: Lease) -> bool:
        """Run a message's tasks; False if they were set aside (another Python, or
        distributions the job requires that this worker lacks)."""
        try:
            raw, payload = codec.decode_message(self.key, lease.body)
            header = MessageHeader.from_dict(raw)
        except (TamperedError, ValueError) as e:
            self._corrupt(lease, e)
            return True
        try:
            job = self.data.job(header.job)
        except TamperedError as e:
            self._deadletter(lease, f"its job's manifest {e}", fail_tasks=False)
            return True
        if job is None:
            log.warning("dropping message %s: job %s no longer exists", lease.id, header.job)
            self.committer.finish(lease, ack=True)
            return True
        if self.data.is_cancelled(job, force=True):
            self.committer.finish(lease, ack=True)
            return True
        if job.manifest.python not in ("", PYTHON) or self._lacks(job):
            self._set_aside(lease, job)
            return False
        if header.memory is not None and (done := self._too_big(lease, header, job)) is not None:
            return done
        todo = dict.fromkeys(header.tasks(), header.attempt)
        careful = lease.attempt > 1
        if careful:
            for i in self.data.done(job.manifest.id, todo):
                todo.pop(i, None)
        chunk = _Chunk(lease, header, job, todo, payload, careful)
        self.current = chunk
        if self.on_job != chunk.job_id:
            self._switch_job(chunk.job_id)
        self._heartbeat.nudge()
        try:
            if todo:
                self._run_chunk(chunk)
            self._flush(chunk)
        except TamperedError as e:
            self._fail_all(chunk, CorruptMessage(f"chunk input failed verification: {e}"))
            self._flush(chunk)
        if chunk.todo:  # stopped early: let another worker take the rest at once
            self._forget_starts(chunk)
        self.committer.finish(lease, ack=not chunk.todo)
        if self.runner.alive and self.runner.log_size() > 64 << 20:
            self.committer.drain()  # every log byte is read; start the file afresh
            self.runner.truncate_log()
        return True

    def _too_big(self, lease: Lease, header: MessageHeader, job: JobInfo) -> bool | None:
        """A retry_memory retry: None if it runs here. Not while this worker offers or
        has free less than it needs: it is handed back for a worker that offers enough
        (False); if no live worker does, it is hidden for a while (2.5 s, then 5 s) and
        looked at again, and the third time its tasks fail saying so (True). A worker
        that has handed it back 40 times (about 6 minutes) fails it too: whoever offers
        enough never had it free."""
        need = header.memory or 0
        free = min(self.memory_offered, meminfo()[1] or self.memory_offered)
        if need <= free:
            return None
        met = self._aside[lease.id] = self._aside.get(lease.id, 0) + 1
        best = max([self.memory_offered, *(r.memory for r in self._seen_workers())])
        if need > best:  # nobody offers it: look again (a big worker may be starting)
            self._live_seen = None
            best = max([self.memory_offered, *(r.memory for r in self._seen_workers())])
        if need > best and met < _BIG_ENOUGH_LOOKS:
            self.queue.extend([lease], 2.5 * 2 ** (met - 1))  # hidden a while; look again
            return False
        waited = met >= _MEMORY_HANDBACKS  # offered somewhere, but never free: give up
        if need > best or waited:
            todo = dict.fromkeys(header.tasks(), header.attempt)
            chunk = _Chunk(lease, header, job, todo, b"", False)
            why = (
                f"no worker offers that much (the most is {_fmt_bytes(best)})"
                if need > best
                else f"this worker has had at most {_fmt_bytes(free)} free each of the "
                f"{met} times it met it"
            )
            err = MemoryLimitExceeded(
                f"killed for memory, this task needs {_fmt_bytes(need)} now (retry_memory), "
                f"and {why}: start workers with more memory, then "
                f"`cloudloop retry {job.manifest.id}`"
            )
            self._fail_all(chunk, err)
            self._flush(chunk)
            self.committer.finish(lease, ack=True)
            return True
        self.committer.finish(lease, ack=False)
        _Backoff(self.stopping, first=min(10.0, 0.5 * 2 ** (met - 1))).sleep()
        return False

    def _switch_job(self, job: str | None) -> None:
        """Now on ``job`` (None: idle); the heartbeat writes the record at once."""
        self.on_job, self.on_job_since = job, time.time()
        self._heartbeat.write_soon()

    # ---------------------------------------------------------------- running

    def _corrupt(self, lease: Lease, err: Exception) -> None:
        """A message that failed verification: keep its bytes and drop it. Nothing in it
        is believed, so it fails no task (a forger could otherwise fail a real job's)."""
        job = codec.peek_header(lease.body).job
        log.error(
            "message %s (claiming job %r) failed verification (%s); dead-lettered",
            lease.id,
            job,
            err,
        )
        self._deadletter(lease, f"failed verification: {err}", fail_tasks=False)
