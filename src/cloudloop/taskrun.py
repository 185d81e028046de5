"""Running one leased chunk: sub-batches in the task runner, outcomes, logs, splits.

::

    _Chunk(todo) ─► sub-batch (sized to ~0.2 s of work) ─► RunnerProcess ─► outcome rows
         │              │ submit() jobs: each task claimed first (a cancel claim wins)
         │              │ a redelivered chunk: one task at a time, with a start marker
         │              ├─ "call" from the task (checkpoint, restore, outputs, shared
         │              │   arguments) ─► done here, signed under that task's keys only
         │              ├─ timeout / memory / cancel / stop ─► kill the task's process tree
         │              └─ runner died ─► TaskCrashed, or a retry (``retries``)
         ├─ rows, logs ─► committer (write-behind), flushed every flush_interval
         └─ running > split_after, queue empty ─► the unstarted tail re-queued

Everything the runner sends is plain data, checked before it is believed: rows
must be well formed and for tasks of the running batch, each once; calls may
only touch the running tasks' own keys. A runner that breaks this is killed
and its batch fails (:class:`TaskCrashed`).

:class:`ChunkRunner` is a mixin of :class:`cloudloop.worker.Worker`: it uses
the worker's runner, backend, committer, options and counters.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import select
import signal
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from . import codec, keys, outputs
from .backends import Backend, Queue, Store
from .cache import CacheWrite, read_task_keys
from .commit import Committer
from .errors import (
    JobCancelled,
    MemoryLimitExceeded,
    TamperedError,
    TaskCrashed,
    TaskTimeout,
    WorkerLost,
)
from .jobdata import JobData, JobInfo
from .model import Lease, MessageHeader, OutcomeRow, RunnerJob, WorkerOptions, runs_of
from .runner import RunnerDied, RunnerProcess

log = logging.getLogger("cloudloop.worker")

_BATCH_TARGET = 0.2  # seconds of work per sub-batch sent to the runner
_LIVE_LOG_EVERY = 2.0
_MEMORY_EVERY = 0.1  # how often a task with a memory limit has its memory measured
_LOOK_AGAIN = 0.05  # no task has started yet: when to look at the runner's status again
_MAX_WAIT = 5.0  # the longest a worker waits on its runner without looking around
_SESSION_AHEAD = 4  # tasks of a submit() job claimed (and so RUNNING) before they start


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


class _Wakeup:
    """A self-pipe: what the worker's main thread waits on beside its runner's pipe,
    so a stop (a signal handler), a spot notice or a cancellation (other threads) ends
    its wait at once instead of at its next look around. Safe to ring from a signal
    handler: one non-blocking write."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)

    def ring(self) -> None:
        try:
            os.write(self.w, b"!")
        except OSError:  # full (it is rung already) or closed (the worker has ended)
            pass

    def drain(self) -> None:
        try:
            while os.read(self.r, 4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


def tree_rss(pid: int) -> int | None:
    """Resident memory of ``pid`` and every descendant, in bytes, read from their own
    ``/proc`` entries (``task/*/children``), not from a scan of every process on the
    machine; None where the kernel does not list children."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * page
            tids = os.listdir(f"/proc/{p}/task")
        except (OSError, IndexError, ValueError):
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children", "rb") as f:
                    todo.extend(int(c) for c in f.read().split())
            except FileNotFoundError:
                if p == pid and tid == str(pid) and os.path.exists(f"/proc/{p}"):
                    return None  # no children files on this kernel
            except (OSError, ValueError):
                continue
    return total


class _Flag:
    """A stop flag safe to set from a signal handler (``threading.Event.set``
    takes a lock, and a second signal arriving inside it would deadlock)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass(frozen=True)
class _Stop:
    """Why a chunk ends before its last task. With an ``error``, its unfinished tasks
    get it as their outcome (a ``JobCancelled`` records them as cancelled); without,
    they are handed back to the queue for another worker (stopping, preempted)."""

    why: str
    error: Exception | None = None

    @classmethod
    def hand_back(cls, why: str) -> _Stop:
        return cls(why)

    @classmethod
    def cancel(cls, job_id: str) -> _Stop:
        return cls("cancelled", JobCancelled(f"job {job_id} was cancelled"))

    @classmethod
    def fail(cls, error: Exception) -> _Stop:
        return cls(str(error), error)


@dataclass(frozen=True)
class _Kill:
    """The worker kills the running batch: the chunk stops (``stop``), or only the
    running task fails (``error``: over its timeout or memory)."""

    stop: _Stop | None = None
    error: Exception | None = None


@dataclass
class _Unstored:
    """Outcomes, logs and finished checkpoints taken from the runner, not yet handed
    to the committer (every flush_interval, and at the chunk's end)."""

    blobs: list[bytes] = field(default_factory=list)  # packed outcome rows
    indices: list[int] = field(default_factory=list)  # the tasks in blobs
    nfail: int = 0
    logs: dict[int, list] = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)  # tasks done: drop their checkpoint


@dataclass
class _Chunk:
    lease: Lease
    header: MessageHeader
    job: JobInfo
    todo: dict[int, int]  # index -> attempt to run next
    payload: bytes
    careful: bool
    t0: float = field(default_factory=time.monotonic)
    out: _Unstored = field(default_factory=lambda: _Unstored())  # for the committer
    streamed: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    last_flush: float = field(default_factory=time.monotonic)
    split_probed: float = -math.inf
    last_stream: float = field(default_factory=time.monotonic)
    busy: float = 0.0
    ran: int = 0
    idle_deaths: int = 0
    lost: bool = False
    running: frozenset[int] = frozenset()  # the sub-batch the runner has now
    stop: _Stop | None = None  # why the chunk ends before its last task
    cache: CacheWrite | None = None  # a cached job's task keys (read at its first flush)
    cache_read: bool = False

    @property
    def job_id(self) -> str:
        return self.job.manifest.id

    @property
    def memory(self) -> int | None:
        """The tasks' memory limit: the job's, or a retry_memory retry's."""
        return self.header.memory or self.job.manifest.options.memory


class ChunkRunner:
    """How a worker runs a chunk (see the module docstring); mixed into Worker."""

    # what it uses of its Worker (set in Worker.__init__)
    id: str
    backend: Backend
    store: Store
    queue: Queue
    key: bytes
    memory_offered: int
    options: WorkerOptions
    scratch: Path
    runner: RunnerProcess
    runner_job: str | None
    data: JobData
    committer: Committer
    mean: dict[str, float]
    stopping: _Flag
    preempted_at: float | None
    tasks_done: int
    failures: int
    _mem_checked: float
    wakeup: _Wakeup

    def runner_rss(self) -> int:
        """Resident memory of the task runner and everything it started."""
        proc = self.runner.proc
        if proc is None:
            return 0
        rss = tree_rss(proc.pid)
        return self.runner.rss() if rss is None else rss

    def _load(self, chunk: _Chunk) -> None:
        h, m = chunk.header, chunk.job.manifest
        if not chunk.payload and h.spill:
            spilled = self.backend.get_signed(h.spill, "chunk input")
            if spilled is None:
                raise TamperedError(f"chunk input {h.spill} is missing from the store")
            chunk.payload = spilled
        payload = chunk.payload
        job = RunnerJob.of(m, str(self.scratch / "work"), self.data.files(chunk.job))
        fns = {ref: self.data.fn(m.id, ref) for ref in h.fns}
        load = {"lo": h.lo, "nested": h.nested, "payload": payload, "fns": fns, "job": job}
        if h.swap:  # a retry with a fixed function: its tasks name the old one
            load["swap"] = dict(h.swap)
        self.runner.send("load", load)
        self.runner_job = _trust_domain(chunk.job)

    def _ensure_runner(self, chunk: _Chunk) -> None:
        if not self.runner.alive:
            self.runner.close()
            self.runner.start()
            self._load(chunk)

    def _run_chunk(self, chunk: _Chunk) -> None:
        if self.runner.alive and self.runner_job != _trust_domain(chunk.job):
            # a fresh interpreter for every submitting client: nothing one client's
            # code leaves behind reaches another's tasks
            self.runner.close()
        if self.runner.alive:
            self._load(chunk)
        mean = self.mean.get(chunk.job_id)
        batch = 1 if mean is None else max(1, min(4096, int(_BATCH_TARGET / max(mean, 1e-6))))
        while chunk.todo and chunk.stop is None and self.preempted_at is None:
            if chunk.job.cancelled:  # cancelled, running tasks allowed to finish: they have
                chunk.stop = _Stop.cancel(chunk.job_id)
                break
            self._ensure_runner(chunk)
            if chunk.careful:
                sub = self._careful_next(chunk)
                if sub is None:
                    continue
            else:
                sub = list(islice(chunk.todo, batch))
            if chunk.job.manifest.session:
                # a claimed task is RUNNING for its Future and can no longer be cancelled:
                # claim only a few ahead (ProcessPoolExecutor hands out workers + 1)
                sub = self._claim(chunk, sub[:_SESSION_AHEAD])
                if not sub:
                    continue
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
        if chunk.stop is not None and chunk.stop.error is not None:
            self._fail_all(chunk, chunk.stop.error)  # (a handed-back chunk keeps its todo)

    def _claim(self, chunk: _Chunk, sub: list[int]) -> list[int]:
        """Tasks of an Executor's submit() job are claimed one by one before they run:
        a claim already made by ``Future.cancel()`` means the task is cancelled."""
        out = []
        for i in sub:
            name = keys.claim(chunk.job_id, i)
            if not self.backend.put_signed(name, b"run", if_absent=True):
                try:
                    was = self.backend.get_signed(name)
                except TamperedError:
                    was = None  # a forged claim cancels nothing
                if was == b"cancel":
                    del chunk.todo[i]
                    self._add_rows(chunk, [OutcomeRow.cancellation(i)])
                    continue
            out.append(i)
        return out

    def _careful_next(self, chunk: _Chunk) -> list[int] | None:
        i = next(iter(chunk.todo))
        n = self._starts(chunk.job_id, i)
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
        self.backend.put_signed(keys.start(chunk.job_id, i, self.id), b"")
        return [i]

    def _starts(self, job_id: str, index: int) -> int:
        """How many workers started this task before (verified start markers only)."""
        n = 0
        for key in self.store.list(keys.starts_prefix(job_id, index)):
            try:
                n += self.backend.get_signed(key) is not None
            except TamperedError:
                log.warning("ignoring %s: not a start marker a worker wrote", key)
        return n

    def _run_batch(self, chunk: _Chunk, sub: list[int]) -> None:
        t0 = time.monotonic()
        chunk.running = frozenset(sub)
        try:
            self.runner.send("run", [(i, chunk.todo[i]) for i in sub])
            while True:
                msg = self._next_message(chunk)
                if msg is not None:
                    kind, data = _message(msg)
                    if kind == "end":
                        return
                    if kind == "call":
                        self._serve(chunk, *data)
                        continue
                    chunk.ran += self._accept(chunk, *data)
                    chunk.busy += time.monotonic() - t0
                    t0 = time.monotonic()
                kill = self._watch(chunk)
                if kill is not None:
                    self.runner.kill()
                    self._on_death(chunk, None, kill)
                    return
        except RunnerDied as died:
            self._on_death(chunk, died.returncode, None)
        except TamperedError as e:  # the task runner broke its protocol: end it
            self.runner.kill()
            chunk.stop = _Stop.fail(TaskCrashed(f"the task process was killed: {e}"))
        finally:
            chunk.running = frozenset()

    def _next_message(self, chunk: _Chunk) -> Any | None:
        """The runner's next message, or None once something may be due (see
        :meth:`_due`). It waits blocked on the runner's pipe and the worker's wake-up
        pipe, so a worker whose task sleeps sleeps too."""
        msg = self.runner.recv(0)
        if msg is not None:
            return msg
        timeout = self._due(chunk)
        fd = self.runner.fileno()
        if fd is None or timeout <= 0:
            return self.runner.recv(max(0.0, timeout))
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self.wakeup.r, select.POLLIN)
        ready = poller.poll(timeout * 1000)
        if any(fd == self.wakeup.r for fd, _ in ready):
            self.wakeup.drain()
        return self.runner.recv(0)

    def _due(self, chunk: _Chunk) -> float:
        """Seconds until :meth:`_watch` may have something to do: the running task's
        timeout, its next memory check (with a memory limit), its next live log, a
        flush of stored-up outcomes, the end of a preemption's grace. A stop, a
        cancellation or a spot notice ring the wake-up pipe instead."""
        now = time.monotonic()
        due = now + _MAX_WAIT
        opts = chunk.job.manifest.options
        if self.preempted_at is not None:
            due = min(due, self.preempted_at + self.options.preempt_grace)
        out = chunk.out
        if out.indices or out.logs or out.checkpoints:
            due = min(due, chunk.last_flush + max(self.backend.flush_interval, 1.0) + 0.001)
        st = self.runner.status()
        if st.index < 0:  # between tasks, or the first one not yet begun: look again soon
            return max(0.0, min(due, now + _LOOK_AGAIN) - now)
        ran = time.time() - st.started
        if opts.timeout is not None:
            due = min(due, now + opts.timeout - ran + 0.001)
        if chunk.memory is not None:
            due = min(due, self._mem_checked + _MEMORY_EVERY)
        live = max(now + _LIVE_LOG_EVERY - ran, chunk.last_stream + _LIVE_LOG_EVERY)
        due = min(due, live + 0.001)
        return max(0.0, due - now)

    def _serve(self, chunk: _Chunk, op: Any, index: Any, args: Any) -> None:
        """Do a store call for the running task, under its own keys only."""
        job = chunk.job_id
        try:
            if index not in chunk.running or not isinstance(args, tuple):
                raise ValueError("not a call for a task of the running batch")
            if op == "checkpoint" and len(args) == 1 and isinstance(args[0], bytes):
                self.backend.put_signed(keys.checkpoint(job, index), args[0])
                value: Any = None
            elif op == "restore" and not args:
                value = self.backend.get_signed(keys.checkpoint(job, index))
            elif op == "outputs" and len(args) == 1 and isinstance(args[0], str):
                value = outputs.upload(self.backend, self._task_dir(args[0]), job, index)
            elif op == "shared" and len(args) == 1 and isinstance(args[0], str):
                if not args[0].startswith(keys.shared(job, "")):
                    raise ValueError("a shared argument of another job")
                value = self.backend.get_signed(args[0])
                if value is None:
                    raise KeyError(f"shared argument {args[0]} is missing from the store")
            else:
                raise ValueError(f"unknown call {str(op)[:40]!r}")
        except Exception as e:
            self.runner.reply(False, _said(e))
        else:
            self.runner.reply(True, value)

    def _task_dir(self, path: str) -> Path:
        root = (self.scratch / "work").resolve()
        p = Path(path).resolve()
        if root not in p.parents:
            raise ValueError("an output directory outside the task's working area")
        return p

    def _watch(self, chunk: _Chunk) -> _Kill | None:
        """While a batch runs: whether to kill it now, and why (None: let it run)."""
        st = self.runner.status()
        opts = chunk.job.manifest.options
        if self.stopping.is_set():
            return _Kill(stop=_Stop.hand_back("the worker is stopping"))
        if self.preempted_at and time.monotonic() - self.preempted_at > self.options.preempt_grace:
            return _Kill(stop=_Stop.hand_back("the machine is being preempted"))
        if chunk.job.cancelled and chunk.job.cancel_running:
            return _Kill(stop=_Stop.cancel(chunk.job_id))
        reason: Exception | None = None
        if st.index >= 0:
            ran = time.time() - st.started
            if opts.timeout is not None and ran > opts.timeout:
                reason = TaskTimeout(
                    f"task {st.index} ran for {ran:.1f} s, over its timeout of "
                    f"{opts.timeout:g} s; it and every process it started were killed"
                )
            elif chunk.memory is not None and time.monotonic() - self._mem_checked >= _MEMORY_EVERY:
                self._mem_checked = time.monotonic()
                rss = self.runner_rss()
                if rss > chunk.memory:
                    reason = MemoryLimitExceeded(
                        f"task {st.index} used {_fmt_bytes(rss)} (its processes together), "
                        f"over its memory limit of {_fmt_bytes(chunk.memory)}; it was killed. "
                        "Raise memory= (or retry_memory=) or make the task hold less at once."
                    )
            if reason is None and ran >= _LIVE_LOG_EVERY:
                self._stream_log(chunk, st.index, st.attempt, st.log_offset)
        if reason is not None:
            return _Kill(error=reason)
        if time.monotonic() - chunk.last_flush > max(self.backend.flush_interval, 1.0):
            self._flush(chunk)
        return None

    def _on_death(self, chunk: _Chunk, rc: int | None, kill: _Kill | None) -> None:
        """The task runner is gone: it died (``rc``), or the worker killed it (``kill``)."""
        st = self.runner.status()
        self.runner.close()
        if kill is not None and kill.stop is not None:
            chunk.stop = kill.stop  # the running task is handed back or cancelled, not failed
            return
        if st.index < 0 or st.index not in chunk.todo:
            if kill is None:
                chunk.idle_deaths += 1
                if chunk.idle_deaths >= 3:
                    chunk.stop = _Stop.fail(
                        TaskCrashed(
                            f"the task process died outside any task three times (last status {rc})"
                        )
                    )
            return
        i, attempt = st.index, st.attempt
        err = (kill.error if kill is not None else None) or describe_death(i, rc)
        segment = (attempt, st.log_offset, self.runner.log_size())
        self._add_logs(chunk, i, [segment])
        if chunk.job.manifest.options.retry_after(attempt):
            if self._retry_bigger(chunk, i, attempt, err, kill):
                return
            chunk.todo[i] = attempt + 1
            return
        del chunk.todo[i]
        self._record_error(chunk, i, attempt, err, started=st.started)

    def _retry_bigger(
        self, chunk: _Chunk, i: int, attempt: int, err: Exception, kill: _Kill | None
    ) -> bool:
        """A task killed for memory, in a job with ``retry_memory``: queue it again with
        its limit multiplied, for a worker that offers that much (maybe not this one).
        True if it was; the chunk then has nothing more to do for it."""
        factor = chunk.job.manifest.options.retry_memory
        oom = kill is None and isinstance(err, TaskCrashed) and "out-of-memory" in str(err)
        if factor is None or not (isinstance(err, MemoryLimitExceeded) or oom):
            return False
        need = int((chunk.memory or self.memory_offered) * factor)
        h = chunk.header
        spill = h.spill or keys.inputs(chunk.job_id, h.chunk)
        if not h.spill:
            self.backend.put_signed(spill, chunk.payload, if_absent=True)
        header = dataclasses.replace(
            h, runs=((i, i),), spill=spill, memory=need, attempt=attempt + 1
        )
        self.queue.put([codec.encode_message(self.key, header.to_dict())])
        del chunk.todo[i]
        log.warning("task %s of job %s was killed for memory; queued again with a limit "
                    "of %s", i, chunk.job_id, _fmt_bytes(need))  # fmt: skip
        return True

    # ---------------------------------------------------------------- outcomes

    def _accept(self, chunk: _Chunk, packed: Any, indices: Any, side: Any) -> int:
        """Take a batch of outcomes from the runner, checked: plain rows, for tasks it
        was asked to run, each once."""
        where = f"outcomes from the task runner of job {chunk.job_id}"
        rows = codec.loads_data(packed) if isinstance(packed, bytes) else None
        if not isinstance(side, list):
            raise TamperedError(f"{where} are malformed")
        got = codec.row_indices(rows, where)
        if got != indices or len(set(got)) != len(got) or not chunk.running.issuperset(got):
            raise TamperedError(f"{where} name tasks it was not given")
        for i in got:
            chunk.todo.pop(i, None)
        chunk.out.blobs.append(packed)
        chunk.out.indices.extend(got)
        for entry in side:
            index, segments, checkpointed, failed = _side_entry(entry, chunk.running, where)
            self._add_logs(chunk, index, segments)
            if checkpointed and not failed:
                chunk.out.checkpoints.append(index)
            chunk.out.nfail += failed
            self.failures += failed
        self.tasks_done += len(got)
        return len(got)

    def _add_rows(self, chunk: _Chunk, rows: list[OutcomeRow]) -> None:
        chunk.out.blobs.append(codec.pack_rows(rows))
        chunk.out.indices.extend(r.index for r in rows)
        failed = sum(1 for r in rows if r.error is not None)
        chunk.out.nfail += failed
        self.failures += failed
        self.tasks_done += len(rows)

    def _record_error(
        self, chunk: _Chunk, index: int, attempt: int, err: Exception, started: float | None = None
    ) -> None:
        info = codec.error_info(err, f"{type(err).__name__}: {err}\n")
        row = OutcomeRow.failure(index, attempt, info, time.time() if started is None else started)
        self._add_rows(chunk, [row])

    def _fail_all(self, chunk: _Chunk, err: Exception) -> None:
        if isinstance(err, JobCancelled):
            self._add_rows(chunk, [OutcomeRow.cancellation(i, a) for i, a in chunk.todo.items()])
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
                chunk.out.logs.setdefault(index, []).append([attempt, part, text])

    def _stream_log(self, chunk: _Chunk, index: int, attempt: int, offset: int) -> None:
        """What the running task printed since the last look, stored as it runs: looked
        at every _LIVE_LOG_EVERY seconds (:meth:`_due` wakes the worker for it)."""
        now = time.monotonic()
        if now - chunk.last_stream < _LIVE_LOG_EVERY:
            return
        chunk.last_stream = now
        if index not in chunk.todo:
            # the status record can still name a task whose outcome (and its whole
            # log) was already taken: streaming it again would duplicate the log
            return
        sent, part = chunk.streamed.get((index, attempt), (offset, 0))
        size = self.runner.log_size()
        if size > sent:
            text = self.runner.read_log(sent, size).decode(errors="replace")
            chunk.streamed[(index, attempt)] = (size, part + 1)
            record = {index: [[attempt, part, text]]}
            self.backend.put_record(keys.logs(chunk.job_id, index, index), record)

    def _flush(self, chunk: _Chunk) -> None:
        """Hand the chunk's finished outcomes and logs to the committer."""
        out = chunk.out
        if out.indices or out.logs or out.checkpoints:
            self.committer.flush(
                chunk.job_id,
                out.blobs,
                out.indices,
                out.nfail,
                out.logs,
                out.checkpoints,
                wait=chunk.careful,
                cache=self._cache_target(chunk) if out.indices else None,
            )
            chunk.out = _Unstored()
        chunk.last_flush = time.monotonic()

    def _cache_target(self, chunk: _Chunk) -> CacheWrite | None:
        """Where a cached job's outcomes are packed (None: not a cached job, or a retry
        with another function, whose outcomes do not belong to the tasks' keys)."""
        m, h = chunk.job.manifest, chunk.header
        if not chunk.cache_read:
            chunk.cache_read = True
            if m.cache_key and m.options.cache and not h.swap:
                try:
                    got = read_task_keys(self.backend, m.id, h.chunk)
                except Exception as e:  # the cache goes without them; the results do not
                    log.warning("chunk %s of job %s: no cache keys: %s", h.chunk, m.id, e)
                    got = None
                if got is not None and len(got) == h.hi - h.lo + 1:
                    chunk.cache = CacheWrite(m.cache_key, dict(enumerate(got, h.lo)))
        return chunk.cache

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
        spill = h.spill or keys.inputs(chunk.job_id, h.chunk)
        if not h.spill:
            self.backend.put_signed(spill, chunk.payload, if_absent=True)
        per = max(1, math.ceil(opts.split_after / max(mean, 1e-6)), math.ceil(len(tail) / 64))
        bodies = []
        for s in range(0, len(tail), per):
            piece = tail[s : s + per]
            header = dataclasses.replace(h, runs=runs_of(piece), spill=spill)
            bodies.append(codec.encode_message(self.key, header.to_dict()))
        self.queue.put(bodies)
        for i in tail:
            del chunk.todo[i]
        chunk.t0 = time.monotonic()
        log.info(
            "chunk %s of job %s: handed %d tasks back as %d messages",
            h.chunk,
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


def _trust_domain(job: JobInfo) -> str:
    """Jobs that may share a task runner: those submitted by the same client process
    (its signed manifest says which), whose code trusts itself anyway. Reusing the
    runner saves an interpreter start (~0.2 s) for every job a loop submits."""
    return job.manifest.client


def _said(e: BaseException) -> str:
    """An error in one line, bounded."""
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:500]


def _message(msg: Any) -> tuple[str, Any]:
    if not (isinstance(msg, tuple) and len(msg) == 2 and msg[0] in ("end", "call", "outcomes")):
        raise TamperedError("the task runner sent a message of an unknown kind")
    kind, data = msg
    if kind != "end" and not (isinstance(data, tuple) and len(data) == 3):
        raise TamperedError(f"the task runner sent a malformed {kind!r} message")
    return kind, data


def _side_entry(entry: Any, running: frozenset[int], where: str) -> tuple:
    ok = isinstance(entry, tuple) and len(entry) == 4 and entry[0] in running
    if ok:
        index, segments, checkpointed, failed = entry
        ok = (
            isinstance(segments, list)
            and all(
                isinstance(s, tuple) and len(s) == 3 and all(type(x) is int for x in s)
                for s in segments
            )
            and isinstance(checkpointed, bool)
            and isinstance(failed, bool)
        )
    if not ok:
        raise TamperedError(f"{where} carry a malformed log or status entry")
    return entry
