"""The worker loop: lease a chunk, run its tasks in a child, store results, ack.

::

    queue ──lease──► Worker.run ──decode + verify──► _Chunk(todo = its task indices)
      ▲                 │                               │
      │ extend (every   │  RunnerProcess: sub-batches of todo, sized to ~0.2 s of work
      │ lease/3, by     │     ├─ outcomes ─► buffer ─flush (every 0.5 s / chunk end)─► STORE results/, logs/
      │ _Heartbeat)     │     ├─ timeout / memory / crash ─► kill group, failure or retry
      │                 │     └─ chunk running > split_after ─► tail re-queued as new messages
      └──────ack────────┘  (only after every task of the message has a stored result)

    _Heartbeat thread: extends the lease, notices job cancellation, writes
    workers/<id> (host, pid, current task, progress, tasks done) to the store.

Results are stored before the ack, keyed by task index, so a worker that dies
anywhere in between costs at most a re-run, never a lost or doubled result
(the client keeps the first outcome it sees for an index). A message leased
again after its holder vanished is run carefully: tasks that already have
results are skipped, the rest run one at a time with a start marker each, and
a task that has taken ``max_deliveries`` workers down with it is failed as
:class:`WorkerLost` instead of looping forever.
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from . import codec, keys
from .backends import Backend
from .commit import Committer
from .errors import (
    CorruptMessage,
    JobCancelled,
    MemoryLimitExceeded,
    TamperedError,
    TaskCrashed,
    TaskTimeout,
    WorkerLost,
)
from .heartbeat import Heartbeat
from .jobdata import JobData, JobInfo
from .model import Lease, WorkerOptions
from .runner import RunnerDied, RunnerProcess
from .spot import Imds, SpotWatcher

log = logging.getLogger("cloudloop.worker")

_BATCH_TARGET = 0.2  # seconds of work per sub-batch sent to the runner
_LIVE_LOG_EVERY = 2.0


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def describe_death(index: int, rc: int | None) -> Exception:
    if rc is not None and rc < 0:
        sig = signal.Signals(-rc)
        if sig == signal.SIGKILL:
            return TaskCrashed(
                f"task {index}'s process was killed by SIGKILL, most likely by the kernel's "
                "out-of-memory killer (the machine ran out of memory). Give the job a "
                "memory= limit to get a clear error, or use machines with more memory."
            )
        desc = signal.strsignal(sig) or sig.name
        return TaskCrashed(
            f"task {index}'s process died with {sig.name} ({desc}), usually a crash in "
            "native code (a C extension, ctypes, a corrupt model file)."
        )
    return TaskCrashed(
        f"task {index}'s process exited with status {rc} before returning "
        "(os._exit(), or a native library calling exit())."
    )


class _Flag:
    """A stop flag safe to set from a signal handler (``threading.Event.set``
    takes a lock, and a second signal arriving inside it would deadlock)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass
class _Chunk:
    lease: Lease
    header: dict[str, Any]
    job: JobInfo
    todo: dict[int, int]  # index -> attempt to run next
    payload: bytes
    careful: bool
    t0: float = field(default_factory=time.monotonic)
    extended: float = field(default_factory=time.monotonic)
    blobs: list[bytes] = field(default_factory=list)  # packed outcome rows not yet stored
    indices: list[int] = field(default_factory=list)  # the tasks in blobs
    nfail: int = 0
    logs: dict[int, list] = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)
    streamed: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    last_flush: float = field(default_factory=time.monotonic)
    split_probed: float = -math.inf
    last_stream: float = field(default_factory=time.monotonic)
    busy: float = 0.0
    ran: int = 0
    idle_deaths: int = 0
    lost: bool = False
    stop_reason: Exception | None = None

    @property
    def job_id(self) -> str:
        return self.job.manifest.id


class Worker:
    """Pulls chunks from a backend's queue and runs them until told to stop."""

    def __init__(self, backend: Backend, options: WorkerOptions | None = None, provider: str = ""):
        self.backend = backend
        self.queue, self.store, self.key = backend.queue, backend.store, backend.key
        self.options = options or WorkerOptions()
        self.heartbeat_every = self.options.heartbeat or backend.heartbeat_default
        # $CLOUDLOOP_HOST names the machine when the hostname does not (containers,
        # network namespaces, hosts that all call themselves "localhost")
        self.host = os.environ.get("CLOUDLOOP_HOST") or socket.gethostname()
        self.id = f"{self.host}-{os.getpid()}-{secrets.token_hex(2)}"
        self.provider = provider or os.environ.get("CLOUDLOOP_PROVIDER", "external")
        self.scratch = Path(tempfile.mkdtemp(prefix="cloudloop-worker-"))
        env = {**os.environ, "CLOUDLOOP_WORKER_ID": self.id}
        self.runner = RunnerProcess(self.scratch, env)
        self.data = JobData(backend, self.scratch)
        self.current: _Chunk | None = None
        self.stopping = _Flag()
        self.tasks_done = 0
        self.failures = 0
        self.started = time.time()
        self._ppid = os.getppid()
        self._mem_checked = 0.0
        self.mean: dict[str, float] = {}  # job -> seconds per task, to size sub-batches
        self.committer = Committer(backend, self.id, self.host)
        self.preempted_at: float | None = None
        self._spot: SpotWatcher | None = None
        self.machine = self._describe_machine()
        self._paused_checked = -math.inf
        self._is_paused = False
        self._heartbeat = Heartbeat(self)

    # ---------------------------------------------------------------- main loop

    def _describe_machine(self) -> dict[str, str]:
        """Instance id, type and market from instance metadata, when there is some."""
        if not self.options.metadata_url:
            return {}
        imds, out = Imds(self.options.metadata_url), {}
        for key, path in (("instance", "instance-id"), ("instance_type", "instance-type"),
                          ("market", "instance-life-cycle")):  # fmt: skip
            try:
                value = imds.get(path)
            except OSError:
                return out
            if value:
                out[key] = value
        return out

    def request_stop(self, *_: Any) -> None:
        self.stopping.set()

    def on_preempt(self, notice: dict) -> None:
        """A spot interruption notice: finish or checkpoint, hand work back, leave."""
        if self.preempted_at is None:
            self.preempted_at = time.monotonic()
            self.runner.preempt()

    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self._heartbeat.start()
        if self.options.metadata_url:
            self._spot = SpotWatcher(self.options.metadata_url, self.on_preempt)
            self._spot.start()
        idle_since = time.monotonic()
        log.info("worker %s serving %s", self.id, self.backend.url)
        try:
            while not self.stopping.is_set() and self.preempted_at is None:
                if self._paused():
                    leases = []
                    time.sleep(self.backend.idle_wait)
                else:
                    leases = self.queue.lease(1, self.options.lease, wait_s=self.backend.idle_wait)
                if leases:
                    for lease in leases:
                        self._process(lease)
                    idle_since = time.monotonic()
                elif self._should_exit(time.monotonic() - idle_since):
                    break
        finally:
            if self._spot is not None:
                self._spot.stop()
            self.committer.close()
            self._heartbeat.stop()
            self.runner.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
            why = " (preempted)" if self.preempted_at else ""
            log.info("worker %s stopped after %d tasks%s", self.id, self.tasks_done, why)

    def _paused(self) -> bool:
        """``cloudloop pause`` (checked every 10 s): take no new work."""
        now = time.monotonic()
        if now - self._paused_checked > 10.0:
            self._paused_checked = now
            try:
                self._is_paused = self.store.exists(keys.PAUSED)
            except Exception as e:
                log.warning("could not check the pause flag: %s", e)
        return self._is_paused

    def _should_exit(self, idle: float) -> bool:
        limit = self.options.idle_exit
        if self.options.exit_when_orphaned and os.getppid() != self._ppid:
            limit = min(limit if limit is not None else math.inf, 5.0)
        return limit is not None and idle >= limit

    # ---------------------------------------------------------------- one message

    def _process(self, lease: Lease) -> None:
        try:
            header, payload = codec.decode_message(self.key, lease.body)
            job = self.data.job(header["job"])
        except TamperedError as e:
            self._corrupt(lease, e)
            return
        if job is None:
            log.warning("dropping message %s: job %s no longer exists", lease.id, header["job"])
            self.committer.finish(lease, ack=True)
            return
        if self.data.is_cancelled(job, force=True):
            self.committer.finish(lease, ack=True)
            return
        todo = {i: 1 for a, b in header["runs"] for i in range(a, b + 1)}
        careful = lease.attempt > 1
        if careful:
            for i in self.data.done(job.manifest.id, todo):
                del todo[i]
        chunk = _Chunk(lease, header, job, todo, payload, careful)
        if job.manifest.session:
            for key in self.store.list(keys.cancel_prefix(chunk.job_id)):
                i = int(key.rsplit("/", 1)[1])
                if todo.pop(i, None) is not None:
                    self._add_rows(chunk, [(i, 0, None, None, 0.0, 0.0, True)])
        self.current = chunk
        try:
            if todo:
                self._run_chunk(chunk)
            self._flush(chunk)
        except TamperedError as e:
            self._fail_all(chunk, CorruptMessage(f"chunk input failed verification: {e}"))
            self._flush(chunk)
        finally:
            self.current = None
        if chunk.todo:  # stopped early: let another worker take the rest at once
            self._forget_starts(chunk)
        self.committer.finish(lease, ack=not chunk.todo)
        if self.runner.alive and self.runner.log_size() > 64 << 20:
            self.committer.drain()  # every log byte is read; start the file afresh
            self.runner.truncate_log()

    # ---------------------------------------------------------------- running

    def _load(self, chunk: _Chunk) -> None:
        h, m = chunk.header, chunk.job.manifest
        payload = chunk.payload
        if not payload and h.get("spill"):
            payload = codec.verify(self.key, self.store.get(h["spill"]), "chunk input")
            chunk.payload = payload
        self.runner.send(
            "load",
            {
                "lo": h["lo"],
                "nested": h.get("nested", False),
                "payload": payload,
                "fns": {ref: self.data.fn(m.id, ref) for ref in h.get("fns", [])},
                "job": {
                    "id": m.id,
                    "seed": m.seed,
                    "kind": m.kind,
                    "command": m.command,
                    "retries": m.options.retries,
                    "seed_globals": m.options.seed_globals,
                    "env": m.options.env,
                    "backend": self.backend.url,
                    "key": self.key,
                    "workroot": str(self.scratch / "work"),
                    "files": self.data.files(chunk.job),
                },
            },
        )

    def _ensure_runner(self, chunk: _Chunk) -> None:
        if not self.runner.alive:
            self.runner.close()
            self.runner.start()
            self._load(chunk)

    def _run_chunk(self, chunk: _Chunk) -> None:
        if self.runner.alive:
            self._load(chunk)
        mean = self.mean.get(chunk.job_id)
        batch = 1 if mean is None else max(1, min(4096, int(_BATCH_TARGET / max(mean, 1e-6))))
        while chunk.todo and chunk.stop_reason is None and self.preempted_at is None:
            self._ensure_runner(chunk)
            if chunk.careful:
                sub = self._careful_next(chunk)
                if sub is None:
                    continue
            else:
                sub = list(islice(chunk.todo, batch))
            t = time.monotonic()
            ran_before = chunk.ran
            self._run_batch(chunk, sub)
            if chunk.ran > ran_before:
                mean = self.mean[chunk.job_id] = chunk.busy / chunk.ran
                batch = max(1, min(4096, int(_BATCH_TARGET / max(mean, 1e-6))))
            chunk.busy += 0 if chunk.ran > ran_before else time.monotonic() - t
            if chunk.careful or time.monotonic() - chunk.last_flush > self.backend.flush_interval:
                self._flush(chunk)
            if not chunk.careful:
                self._maybe_split(chunk, batch)
        if chunk.stop_reason is not None and not isinstance(chunk.stop_reason, InterruptedError):
            self._fail_all(chunk, chunk.stop_reason)

    def _careful_next(self, chunk: _Chunk) -> list[int] | None:
        i = next(iter(chunk.todo))
        n = len(self.store.list(keys.starts_prefix(chunk.job_id, i)))
        limit = chunk.job.manifest.options.max_deliveries
        if n >= limit:
            err = WorkerLost(
                f"task {i} was started {n + 1} times and each time its worker vanished "
                "before it finished (no result, no heartbeat): dead-lettered instead of "
                "retried forever. It probably exhausts the machine's memory or crashes "
                "the worker; run it alone to debug."
            )
            self._record_error(chunk, i, chunk.todo.pop(i), err)
            return None
        self.store.put(keys.start(chunk.job_id, i, self.id), b"")
        return [i]

    def _run_batch(self, chunk: _Chunk, sub: list[int]) -> None:
        t0 = time.monotonic()
        try:
            self.runner.send("run", [(i, chunk.todo[i]) for i in sub])
            while True:
                msg = self.runner.recv(0.05)
                if msg is not None:
                    kind, data = msg
                    if kind == "end":
                        return
                    chunk.ran += self._accept(chunk, *data)
                    chunk.busy += time.monotonic() - t0
                    t0 = time.monotonic()
                self._watch(chunk)
        except RunnerDied as died:
            cause = died.__cause__
            self._on_death(
                chunk, died.returncode, cause.reason if isinstance(cause, _Killed) else None
            )

    def _watch(self, chunk: _Chunk) -> None:
        st = self.runner.status()
        opts = chunk.job.manifest.options
        reason: Exception | None = None
        if self.stopping.is_set():
            reason = chunk.stop_reason = InterruptedError("worker stopping")
        elif (
            self.preempted_at and time.monotonic() - self.preempted_at > self.options.preempt_grace
        ):
            reason = chunk.stop_reason = InterruptedError("machine preempted")
        elif chunk.job.cancelled:
            reason = chunk.stop_reason = JobCancelled(f"job {chunk.job_id} was cancelled")
        elif st.index >= 0:
            ran = time.time() - st.started
            if opts.timeout is not None and ran > opts.timeout:
                reason = TaskTimeout(
                    f"task {st.index} ran for {ran:.1f} s, over its timeout of "
                    f"{opts.timeout:g} s; its process group was killed"
                )
            elif opts.memory is not None and time.monotonic() - self._mem_checked > 0.1:
                self._mem_checked = time.monotonic()
                rss = self.runner.rss()
                if rss > opts.memory:
                    reason = MemoryLimitExceeded(
                        f"task {st.index} used {_fmt_bytes(rss)} (its processes together), "
                        f"over its memory limit of {_fmt_bytes(opts.memory)}; it was killed. "
                        "Raise memory= or make the task hold less at once."
                    )
            if reason is None and ran > _LIVE_LOG_EVERY:
                self._stream_log(chunk, st.index, st.attempt, st.log_offset)
        if reason is not None:
            self.runner.kill()
            raise RunnerDied(None) from _Killed(reason)
        if time.monotonic() - chunk.last_flush > max(self.backend.flush_interval, 1.0):
            self._flush(chunk)

    def _on_death(self, chunk: _Chunk, rc: int | None, killed: Exception | None) -> None:
        st = self.runner.status()
        self.runner.close()
        if st.index < 0 or st.index not in chunk.todo:
            if killed is None:
                chunk.idle_deaths += 1
                if chunk.idle_deaths >= 3:
                    chunk.stop_reason = TaskCrashed(
                        f"the task process died outside any task three times (last status {rc})"
                    )
            return
        i, attempt = st.index, st.attempt
        if isinstance(killed, (InterruptedError, JobCancelled)):
            return  # stop_reason is set; the task is released or cancelled, not failed
        err = killed or describe_death(i, rc)
        segment = (attempt, st.log_offset, self.runner.log_size())
        self._add_logs(chunk, i, [segment])
        if attempt <= chunk.job.manifest.options.retries:
            chunk.todo[i] = attempt + 1
            return
        del chunk.todo[i]
        self._record_error(chunk, i, attempt, err, started=st.started)

    # ---------------------------------------------------------------- outcomes

    def _accept(self, chunk: _Chunk, packed: bytes, indices: list[int], side: list) -> int:
        """Take a batch of outcomes from the runner without unpickling them."""
        for i in indices:
            chunk.todo.pop(i, None)
        chunk.blobs.append(packed)
        chunk.indices.extend(indices)
        for index, segments, checkpointed, failed in side:
            self._add_logs(chunk, index, segments)
            if checkpointed and not failed:
                chunk.checkpoints.append(index)
            chunk.nfail += failed
            self.failures += failed
        self.tasks_done += len(indices)
        return len(indices)

    def _add_rows(self, chunk: _Chunk, rows: list[tuple]) -> None:
        chunk.blobs.append(codec.pack_rows(rows))
        chunk.indices.extend(r[0] for r in rows)
        failed = sum(1 for r in rows if r[3] is not None)
        chunk.nfail += failed
        self.failures += failed
        self.tasks_done += len(rows)

    def _record_error(self, chunk: _Chunk, index: int, attempt: int, err: Exception, **kw) -> None:
        info = codec.error_info(err, f"{type(err).__name__}: {err}\n")
        now = time.time()
        self._add_rows(chunk, [(index, attempt, None, info, kw.get("started", now), now, False)])

    def _fail_all(self, chunk: _Chunk, err: Exception) -> None:
        if isinstance(err, JobCancelled):
            self._add_rows(
                chunk, [(i, a, None, None, 0.0, 0.0, True) for i, a in chunk.todo.items()]
            )
        else:
            for i, attempt in list(chunk.todo.items()):
                self._record_error(chunk, i, attempt, err)
        chunk.todo.clear()

    def _add_logs(self, chunk: _Chunk, index: int, segments: list) -> None:
        for attempt, start, end in segments:
            sent, part = chunk.streamed.pop((index, attempt), (start, 0))
            data = self.runner.read_log(max(start, sent), end)
            if data:
                text = data.decode(errors="replace")
                chunk.logs.setdefault(index, []).append([attempt, part, text])

    def _stream_log(self, chunk: _Chunk, index: int, attempt: int, offset: int) -> None:
        if index not in chunk.todo:
            # the status record can still name a task whose outcome (and its whole
            # log) was already taken: streaming it again would duplicate the log
            return
        sent, part = chunk.streamed.get((index, attempt), (offset, 0))
        size = self.runner.log_size()
        if size > sent and time.monotonic() - chunk.last_stream > _LIVE_LOG_EVERY:
            text = self.runner.read_log(sent, size).decode(errors="replace")
            chunk.streamed[(index, attempt)] = (size, part + 1)
            body = codec.encode_json({index: [[attempt, part, text]]})
            self.store.put(keys.logs(chunk.job_id, index, index), body)
            chunk.last_stream = time.monotonic()

    def _flush(self, chunk: _Chunk) -> None:
        """Hand the chunk's finished outcomes and logs to the committer."""
        if chunk.indices or chunk.logs or chunk.checkpoints:
            self.committer.flush(
                chunk.job_id, chunk.blobs, chunk.indices, chunk.nfail, chunk.logs,
                chunk.checkpoints, wait=chunk.careful,
            )  # fmt: skip
            chunk.blobs, chunk.indices, chunk.nfail, chunk.logs, chunk.checkpoints = (
                [],
                [],
                0,
                {},
                [],
            )
        chunk.last_flush = time.monotonic()

    def _maybe_split(self, chunk: _Chunk, keep: int) -> None:
        opts = self.options
        if time.monotonic() - chunk.t0 < opts.split_after or len(chunk.todo) <= keep + 1:
            return
        mean = chunk.busy / max(chunk.ran, 1)
        tail = list(chunk.todo)[keep:]
        if len(tail) * mean < opts.split_after:
            return
        now = time.monotonic()  # asking the queue is a billed call on SQS: not every task
        if now - chunk.split_probed < max(opts.split_after, self.backend.check_interval):
            return
        chunk.split_probed = now
        if self.queue.stats().visible > 0:
            return
        h = chunk.header
        spill = h.get("spill") or keys.inputs(chunk.job_id, h["chunk"])
        if not h.get("spill"):
            self.store.put(spill, codec.sign(self.key, chunk.payload), if_absent=True)
        per = max(1, math.ceil(opts.split_after / max(mean, 1e-6)), math.ceil(len(tail) / 64))
        bodies = []
        for s in range(0, len(tail), per):
            piece = tail[s : s + per]
            header = {**h, "runs": _ranges(piece), "spill": spill}
            bodies.append(codec.encode_message(self.key, header))
        self.queue.put(bodies)
        for i in tail:
            del chunk.todo[i]
        chunk.t0 = time.monotonic()
        log.info(
            "chunk %s of job %s: handed %d tasks back as %d messages",
            h["chunk"],
            chunk.job_id,
            len(tail),
            len(bodies),
        )

    def _forget_starts(self, chunk: _Chunk) -> None:
        if chunk.careful:
            for i in chunk.todo:
                for key in self.store.list(keys.starts_prefix(chunk.job_id, i)):
                    if key.rsplit("/", 1)[1].startswith(self.id + "-"):
                        self.store.delete(key)

    def _corrupt(self, lease: Lease, err: Exception) -> None:
        """A message that failed verification: keep its bytes, fail its tasks, drop it."""
        self.store.put(keys.deadletter(lease.id, time.time()), lease.body)
        header = codec.peek_header(lease.body) or {}
        job_id, runs = header.get("job"), header.get("runs")
        log.error("message %s failed verification (%s); dead-lettered", lease.id, err)
        try:
            job = self.data.job(job_id) if isinstance(job_id, str) else None
        except (TamperedError, ValueError):
            job = None
        if job is not None and isinstance(runs, list):
            chunk = _Chunk(lease, header, job, {}, b"", False)
            try:
                todo = {int(i): lease.attempt for a, b in runs for i in range(int(a), int(b) + 1)}
            except (TypeError, ValueError):
                todo = {}
            if len(todo) <= 1_000_000:
                chunk.todo = todo
                self._fail_all(chunk, CorruptMessage(f"the queue message for this task {err}"))
                self._flush(chunk)
        self.committer.finish(lease, ack=True)


def _ranges(indices: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


class _Killed(Exception):
    """Why the worker killed the runner (chained onto RunnerDied)."""

    def __init__(self, reason: Exception):
        super().__init__(reason)
        self.reason = reason
