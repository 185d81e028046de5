"""A durable job, seen from any client: progress, results, failures, logs.

A :class:`Job` holds no state of its own that matters: everything is read
from the backend's store (see :mod:`cloudloop.keys`), so ``attach(id)`` from a
new process, or another machine, sees exactly what the submitting client saw.
Progress comes from listing result part names (which say which tasks they
hold), so polling a job never reads its results; parts and logs are read
through :mod:`cloudloop.results`, the reader the session and the dashboard
share.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import TimeoutError as _CfTimeout
from dataclasses import asdict, dataclass
from typing import Any

from . import codec, keys
from .backends import Backend
from .display import job_html, progress_display
from .errors import JobCancelled, JobNotFound, RemoteTraceback, TamperedError
from .heartbeat import worker_records
from .model import (
    Cancelled,
    DeadLetterReason,
    Finished,
    JobManifest,
    JobState,
    JobStatus,
    Outcome,
    Sealed,
    SetAside,
    WorkerRecord,
)
from .results import LogParts, ResultParts, better, read_outcome

log = logging.getLogger("cloudloop")
# what concurrent.futures raises on a timeout, and also the builtin TimeoutError
# (they are one class since Python 3.11; on 3.10 both must catch it)
FuturesTimeout = (
    _CfTimeout
    if issubclass(_CfTimeout, TimeoutError)
    else type("TimeoutError", (_CfTimeout, TimeoutError), {})
)
_HEARTBEAT_FRESH = 30.0
_HEARTBEAT_STALE = 86400.0


@dataclass
class FailedTask:
    """One failed task, as ``Job.failures()`` reports it."""

    index: int
    exception: BaseException
    traceback: str
    attempt: int
    log: str
    worker: str
    host: str

    def __str__(self) -> str:
        e, row = self.exception, f"row {self.index + 1} (task {self.index}): "
        msg = str(e)  # a command task's message names its row first: said once, in front
        who = row[:-2] if msg.startswith(row) else f"task {self.index}"
        msg = msg[len(row) :] if msg.startswith(row) else msg
        return f"{who} (attempt {self.attempt}, {self.host}): {type(e).__name__}: {msg}"


class Job:
    """A handle on a job in a backend. Cheap to create; safe to have many."""

    def __init__(self, backend: Backend, job_id: str, manifest: JobManifest | None = None):
        self.backend = backend
        self.id = job_id
        self._manifest = manifest
        self._suspect: dict[str, str] = {}  # what failed verification, in words
        self._parts = ResultParts(backend, job_id, problems=self._suspect)
        self._logs = LogParts(backend, job_id)  # what new_log_lines() has relayed
        self._total: int | None = None
        self._cancelled = False
        self._cancel_checked = -math.inf  # when the cancelled marker was last read
        self._failed = 0
        self._samples: list[tuple[float, int]] = []
        self._finished_at: float | None = None
        self._workers: tuple[float, list[WorkerRecord]] = (0.0, [])
        self._aside: dict[str, SetAside | None] = {}  # aside/ key -> record (None: unusable)
        self._aside_read = -math.inf
        self.retried = 0  # tasks the last retry() queued again

    # ---------------------------------------------------------------- identity

    @property
    def manifest(self) -> JobManifest:
        if self._manifest is None:
            data = self.backend.get_signed(keys.manifest(self.id), f"manifest of job {self.id}")
            if data is None:
                raise JobNotFound(
                    f"job {self.id!r} is not on backend {self.backend.url}; "
                    "`cloudloop status` lists the jobs there"
                )
            try:
                self._manifest = JobManifest.from_dict(json.loads(data))
            except (TypeError, KeyError, ValueError) as e:
                raise TamperedError(f"manifest of job {self.id} is malformed: {e}") from None
        return self._manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def parts(self) -> ResultParts:
        """The job's result parts, as listed by the last :meth:`status` (or results read)."""
        return self._parts

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.name!r} on {self.backend.url}>"

    def _repr_html_(self) -> str:
        """Jupyter shows a job as a progress card (a snapshot: evaluate it again to refresh)."""
        return job_html(self.status(), self.backend.url)

    # ---------------------------------------------------------------- progress

    def _refresh(self) -> None:
        self._parts.refresh()
        if self._total is None:
            self._total = self._sealed_total()
        # a cancellation by another client is seen within check_interval (the
        # marker is a billed GET on S3: not one per poll of the results)
        now = time.monotonic()
        if not self._cancelled and now - self._cancel_checked >= self.backend.check_interval:
            self._cancel_checked = now
            self._cancelled = self._marked(keys.cancelled(self.id)) is not None
        self._failed = self._parts.failed()

    def _sealed_total(self) -> int | None:
        rec = self._marked(keys.sealed(self.id))
        if rec is None:
            return None
        try:
            return Sealed.from_dict(rec).tasks
        except ValueError:
            raise TamperedError(
                f"the sealed record of job {self.id} is malformed: {rec!r:.80}"
            ) from None

    def _marked(self, name: str) -> Any:
        """A signed marker record (None if absent; a forged one is ignored, said once
        in the log and kept among :attr:`JobStatus.problems`)."""
        try:
            return self.backend.get_record(name)
        except TamperedError as e:
            if name not in self._suspect:
                log.warning("ignoring %s: %s", name, e)
                self._suspect[name] = f"{name} was not written by this backend's clients: {e}"
            return None

    def workers(self) -> list[WorkerRecord]:
        """Heartbeat records of workers seen in the last 30 s (cached ~2 s), verified."""
        at, cached = self._workers
        if time.monotonic() - at > (self.backend.workers_cache if cached else 0.5):
            recs = worker_records(self.backend, prune_after=_HEARTBEAT_STALE)
            cached = [r for r in recs if r.live()]
            self._workers = (time.monotonic(), cached)
        return cached

    def status(self) -> JobStatus:
        """A snapshot of the job's progress (reads a listing, not the results)."""
        manifest = self.manifest
        self._refresh()
        if self._total is not None and self._parts.done >= self._total:
            self._parts.verify()  # before it is called finished: names alone can be forged
        done, total = self._parts.done, self._total
        failed = self._failed
        live = self.workers()
        # a worker is on this job from its first chunk until the queue has none for it
        # (its record says so at once); never more than the tasks left
        running = sum(1 for w in live if w.job == self.id and w.state == "busy")
        if total is not None:
            running = min(running, max(0, total - done))
        now = time.time()
        if self._cancelled:
            state = JobState.CANCELLED
        elif total is None:
            state = JobState.SUBMITTING
        elif done >= total:
            state = JobState.FAILED if failed else JobState.COMPLETED
        elif done == 0 and running == 0:
            state = JobState.QUEUED
        else:
            state = JobState.RUNNING
        if state.finished:
            running = 0  # a stale record of a worker that was on it runs nothing now
        if state.finished and self._finished_at is None:
            self._finished_at = self._finish_time(observed=bool(self._samples))
        elapsed = (self._finished_at or now) - manifest.created
        ran = done - self._parts.cached  # the rate of work, not of cache hits
        self._samples = [s for s in self._samples if now - s[0] < 30] + [(now, ran)]
        t0, d0 = self._samples[0]
        rate = (ran - d0) / (now - t0) if now - t0 > 2 else ran / max(elapsed, 1e-9)
        eta = (
            (total - done) / rate if total is not None and rate > 0 and not state.finished else None
        )
        problems = tuple(self._suspect.values()) + tuple(
            f"worker {w.id}: {w.error}" for w in live if w.error
        )
        if not state.finished:
            problems += _runnable_by(manifest.python, live)
            if manifest.requires and live and not running:
                problems += _lacking(manifest.python, live, self._set_aside())
        return JobStatus(
            self.id,
            manifest.name,
            state,
            total,
            done,
            failed,
            running,
            len(live),
            manifest.created,
            elapsed,
            rate,
            eta,
            problems,
            self._parts.cached,
        )

    def _set_aside(self) -> list[SetAside]:
        """What workers that leave this job alone said they lack (``aside/``: listed at
        most every 5 s, each record read once)."""
        if time.monotonic() - self._aside_read > max(5.0, self.backend.workers_cache):
            self._aside_read = time.monotonic()
            for key in self.backend.store.list(keys.aside_prefix(self.id)):
                if key not in self._aside:
                    self._aside[key] = _aside_record(key, self._marked(key))
        return [r for r in self._aside.values() if r is not None]

    def problems(self) -> list[str]:
        """What is keeping this job from finishing, in words: workers' troubles (a store
        that refuses writes) and messages of this job that were dead-lettered.

        A dead-lettered message that failed verification is not believed: what it
        claims (its job and tasks) is only reported here, so the user can re-run
        those tasks; no task is failed because of it.
        """
        out = list(self.status().problems)
        for name in self.backend.store.list(keys.DEADLETTER):
            if keys.is_deadletter_reason(name):
                continue
            claimed = codec.peek_header(self.backend.store.get_or_none(name) or b"")
            if claimed.job != self.id:
                continue
            runs = claimed.runs
            tasks = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs) if runs else "?"
            try:
                rec = self.backend.get_record(keys.deadletter_reason(name))
                why = "" if rec is None else DeadLetterReason.from_dict(rec).why
            except TamperedError:
                why = "(its reason record failed verification)"
            except ValueError as e:
                why = f"(its reason record is malformed: {e})"
            out.append(f"a queue message for tasks {tasks} was dead-lettered ({name}): {why}")
        return out

    def _finish_time(self, observed: bool) -> float:
        """When the job finished: recorded by the first client to see it finish."""
        rec = self._marked(keys.finished(self.id))
        try:
            if rec is not None:
                return Finished.from_dict(rec).at
        except ValueError as e:  # said and left: a new time cannot replace it (if_absent)
            log.warning("ignoring %s: %s", keys.finished(self.id), e)
        if observed:  # this handle watched it run: now is within one poll of the end
            at = time.time()
        else:  # it finished unwatched: the last task's end time, from the results
            ends = [
                o.ended for k in list(self._parts.spans) for o in self._parts.read(k) if o.ended
            ]
            at = max(ends) if ends else time.time()
        self.backend.put_record(keys.finished(self.id), asdict(Finished(at)), if_absent=True)
        return at

    def done(self) -> bool:
        return self.status().state.finished

    def wait(
        self, timeout: float | None = None, progress: bool = False, logs: bool = False
    ) -> JobStatus:
        """Block until every task has a result (or the job is cancelled).

        Args:
            timeout: seconds to wait at most; raises TimeoutError after.
            progress: draw a progress bar on stderr.
            logs: relay the tasks' output to stderr as it arrives.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = progress_display(self.backend.url) if progress else None
        pause, last_done, stalled_since, warned = (
            self.backend.poll_interval,
            -1,
            time.monotonic(),
            False,
        )
        while True:
            st = self.status()
            if logs:
                self._relay_logs()
            if bar is not None:
                bar.update(st, final=st.state.finished)
            if st.state.finished:
                return st
            if st.done != last_done:
                last_done, stalled_since, pause = (
                    st.done,
                    time.monotonic(),
                    self.backend.poll_interval,
                )
            elif not warned and time.monotonic() - stalled_since > 30:
                warned = self._warn_stalled(st)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} not finished after {timeout} s: {st}")
            time.sleep(
                pause if deadline is None else max(0, min(pause, deadline - time.monotonic()))
            )
            pause = min(pause * 1.5, self.backend.poll_max)

    def _warn_stalled(self, st: JobStatus) -> bool:
        """Nothing finished for 30 s: say why, if anything says so. True once said."""
        problems = self.problems()
        if st.workers == 0:
            probe = keys.probe(f"client-{os.getpid()}")
            try:
                self.backend.store.put(probe, b"probe")
                self.backend.store.delete(probe)
            except Exception as e:
                problems.append(f"the store refuses writes: {type(e).__name__}: {e}")
        for p in problems:
            log.warning("job %s: %s", self.id, p)
        if st.workers == 0:
            log.warning(
                "job %s: no worker has been seen for 30 s; start some with "
                "`cloudloop worker --backend %s` (or use Executor(workers=N))",
                self.id,
                self.backend.url,
            )
        return bool(problems) or st.workers == 0

    def retry(self, tasks: Iterable[int] | None = None, fn: Any = None) -> int:
        """Run the failed tasks of this finished job again (or exactly ``tasks``, by
        index), keeping every other result; with ``fn``, run it in their function's
        place. The job keeps its id. Returns how many tasks were queued; workers
        must be there to run them (``Executor.retry`` starts its own).

        Raises:
            NotRetryable: the job is still running, holds ``submit()`` calls, or
                kept no inputs for a task.
            JobCancelled: the job was cancelled.
        """
        from .retry import retry_job

        ref = None
        if fn is not None:
            from .submit import pickle_fn

            ref, blob = pickle_fn(fn)
            self.backend.put_signed(keys.fn(self.id, ref), blob, if_absent=True)
        return retry_job(self, tasks, ref)

    def forget_finish(self) -> None:
        """Tasks run again: the job's end is still to come (a retry)."""
        self._finished_at = None
        self._samples = []

    def cancel(self, running: bool = True) -> None:
        """Stop the job: queued tasks are dropped; running ones are killed, or, with
        ``running=False``, allowed to finish (what ``concurrent.futures`` does when
        ``map``'s iterator is abandoned or ``shutdown(cancel_futures=True)``)."""
        record = Cancelled(time.time(), running=running)
        self.backend.put_record(keys.cancelled(self.id), asdict(record))
        self._cancelled = True

    # ---------------------------------------------------------------- results

    def outcomes(self) -> dict[int, Outcome]:
        """Every stored outcome by task index (the best one when a task ran twice)."""
        self._refresh()
        return self._parts.best()

    def results(self, return_exceptions: bool = False, timeout: float | None = None) -> list[Any]:
        """Every task's return value, in input order (waits for the job first).

        Raises the first failed task's exception (remote traceback as its
        ``__cause__``) unless ``return_exceptions``, which puts exceptions in
        the list instead.
        """
        self.wait(timeout)
        return list(self.iter_results(return_exceptions=return_exceptions))

    def iter_results(
        self, return_exceptions: bool = False, deadline: float | None = None
    ) -> Iterator[Any]:
        """Yield values in input order as they become available, holding little in memory."""
        # pending: index -> the pickled value of a task that succeeded (the usual
        # case, kept as bytes: no Outcome is built), or the best other Outcome
        nxt, consumed, pending = 0, set[str](), dict[int, Any]()
        pause = self.backend.poll_interval
        loads = pickle.loads
        while True:
            total = self._total
            if total is not None and nxt >= total:
                return
            while nxt in pending:
                o = pending.pop(nxt)
                nxt += 1
                ok = True
                if type(o) is bytes:
                    try:
                        value = loads(o)
                    except KeyboardInterrupt:
                        raise
                    except BaseException:  # read_outcome says why, in an UnreadableResult
                        ok, value = read_outcome(Outcome(nxt - 1, 0, o), self.id)
                else:
                    ok, value = read_outcome(o, self.id)
                if not ok and not return_exceptions:
                    raise value
                box = [value]  # hold no reference to what was yielded (as the stdlib's map)
                del value
                yield box.pop()
                pause = self.backend.poll_interval
            if total is not None and nxt >= total:
                return
            keys_here = [k for k in self._parts.containing(nxt) if k not in consumed]
            if keys_here:
                for key in keys_here:
                    consumed.add(key)
                    self._take(key, nxt, pending)
                continue
            self._refresh()
            if self._parts.containing(nxt) and any(
                k not in consumed for k in self._parts.containing(nxt)
            ):
                continue
            if self._cancelled:
                if not return_exceptions:
                    raise JobCancelled(f"job {self.id} was cancelled")
                pending[nxt] = Outcome(nxt, 0, cancelled=True)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise FuturesTimeout(f"result {nxt} of job {self.id} not ready in time")
            time.sleep(pause)
            pause = min(pause * 1.5, self.backend.poll_max)

    def _take(self, key: str, nxt: int, pending: dict[int, Any]) -> None:
        """Put a part's outcomes for tasks ``nxt`` on in ``pending`` (see iter_results):
        a success wins over anything; otherwise :func:`better` decides."""
        got = self._parts.read_rows(key)
        if got is None:
            return
        worker, host, rows = got
        odd = []
        for r in rows:
            i = r[0]
            if i < nxt:
                continue
            if r[3] is None and r[6] is False and type(r[2]) is bytes:
                if type(pending.get(i)) is not bytes:
                    pending[i] = r[2]
            else:
                odd.append(r)
        if odd:
            try:
                others = codec.outcomes(odd, worker, host, key)
            except TamperedError as e:
                self._parts._distrust(key, e)
                return
            for o in others:
                old = pending.get(o.index)
                if type(old) is not bytes and better(o, old):
                    pending[o.index] = o

    def _exception(self, o: Outcome) -> BaseException:
        return read_outcome(o, self.id)[1]

    def outputs(self, index: int | None = None):
        """Files the tasks wrote in their output directories (see :mod:`cloudloop.outputs`)."""
        from .outputs import list_outputs

        return list_outputs(self, index)

    def failures(self) -> list[FailedTask]:
        """Every failed task: index, exception, traceback, attempt, and that attempt's log."""
        out = []
        for index, o in sorted(self.outcomes().items()):
            if o.error is not None:
                out.append(
                    FailedTask(
                        index,
                        self._exception(o),
                        o.error.traceback,
                        o.attempt,
                        self.logs(index, attempt=o.attempt),
                        o.worker,
                        o.host,
                    )
                )
        return out

    # ---------------------------------------------------------------- logs

    def logs(self, index: int, attempt: int | None = None) -> str:
        """Everything task ``index`` printed (all attempts, or one)."""
        reader = LogParts(self.backend, self.id, keep=True)
        reader.refresh()
        return reader.log(index, attempt)

    def new_log_lines(self) -> Iterator[tuple[int, str]]:
        """(task index, text) for log segments not returned before by this handle."""
        self._logs.refresh()
        for part in self._logs.unread():
            for i, segments in part.items():
                for _, _, text in segments:
                    yield i, text

    def _relay_logs(self) -> None:
        for i, text in self.new_log_lines():
            for line in text.splitlines():
                sys.stderr.write(f"[task {i}] {line}\n")


def _runnable_by(needs: str, live: list[WorkerRecord]) -> tuple[str, ...]:
    """A problem when workers are up but none runs the Python the job was pickled with
    (they set its tasks aside: it would wait for ever without a word)."""
    have = {w.python for w in live}
    if not needs or not live or needs in have or "" in have:  # "" : a worker too old to say
        return ()
    return (
        f"no worker can run this job: it needs Python {needs}, workers have "
        f"{', '.join(sorted(have))} (start workers with Python {needs})",
    )


def _aside_record(key: str, data: Any) -> SetAside | None:
    if data is None:
        return None
    try:
        return SetAside.from_dict(data)
    except ValueError as e:
        log.warning("ignoring %s: %s", key, e)
        return None


def _lacking(python: str, live: list[WorkerRecord], aside: list[SetAside]) -> tuple[str, ...]:
    """A problem when every live worker that runs the job's Python has said it lacks
    distributions the job requires (they set its tasks aside: it would wait for ever)."""
    said = {r.worker: r for r in aside}
    able = [w for w in live if not python or w.python in (python, "")]
    if not able or any(w.id not in said for w in able):
        return ()
    have: dict[str, set[str]] = {}
    for w in able:
        for pin, version in zip(said[w.id].needs, said[w.id].have):
            have.setdefault(pin, set()).add(version or "none")
    needs = "; ".join(f"{p}, workers have {', '.join(sorted(v))}" for p, v in sorted(have.items()))
    it = "it" if len(have) == 1 else "them"
    return (
        f"no worker can run this job: it needs {needs} (install {it}, or let the provider "
        f'install requirements = "auto")',
    )


def list_jobs(backend: Backend) -> list[Job]:
    """Every job on a backend, oldest first (index entries that are not job ids are skipped)."""
    out = []
    for k in backend.store.list(keys.INDEX):
        try:
            out.append(Job(backend, keys.check_job_id(keys.index_job(k))))
        except JobNotFound:
            log.warning("ignoring %s: not a job id", k)
    return out


def attach_job(backend: Backend, job_id: str) -> Job:
    job = Job(backend, keys.check_job_id(job_id))
    job.manifest  # noqa: B018 - raises JobNotFound early
    return job


__all__ = ["FailedTask", "Job", "RemoteTraceback", "attach_job", "list_jobs"]
