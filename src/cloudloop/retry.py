"""Re-running some tasks of a finished job in place: its failures, or tasks named.

::

    jobs/<job>/results/...    list (a snapshot) ─► which tasks failed (parts whose names
                                                   say so, read; a later success wins)
    jobs/<job>/chunks/<c0>-<c1>-<lo>-<hi>  get ─► the chunks' messages as first sent (verified)
        └► the same message, naming only the tasks to re-run (and, with a fixed
           function, running it where the tasks name the old one) ─put─► QUEUE
    each part of the snapshot holding one of them: its other rows ─put─► a new part,
        then the old part is removed (the tasks count as not done again)
    jobs/<job>/finished       removed: the job finishes again when they are done
    jobs/<job>/starts/...     the re-run tasks' start markers removed (poison counting)
    jobs/<job>/retry-fn       with a fixed function: remembered, so later retries run it

The job keeps its id, its manifest and every other result, so ``status()``,
``results()`` and ``attach`` from any client see one job whose tasks are
running again. Nothing of the original client is needed: the messages kept
at submission hold the tasks' arguments.

The order loses no result in a crash. Messages go out before any part is
touched: a client that dies right after them leaves the old failures listed,
so the job reads as finished (failed) while the tasks run again, until their
new outcomes win (a success beats the old failure wherever outcomes are
compared); a second retry then would only run them twice. Only the
parts listed before the messages were sent are rewritten, so a fast worker's
fresh outcome is never taken for an old one; a new part is written before
its old part is removed, so no moment loses a success. A task re-run with a
fixed function is not packed into the cache: its outcome does not belong to
the key its arguments had with the old function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import codec, keys
from .errors import CloudloopError, JobCancelled, TamperedError
from .model import JobState, MessageHeader, runs_of

if TYPE_CHECKING:
    from .job import Job

_SEND_BATCH = 64


class NotRetryable(CloudloopError):
    """The job cannot be retried as asked (still running, cancelled, or its tasks'
    inputs were not kept); the message says what to do instead."""


def retry_job(job: Job, tasks: Iterable[int] | None = None, fn_ref: str | None = None) -> int:
    """Queue again the failed tasks of ``job`` (or exactly ``tasks``); with ``fn_ref``,
    a function already stored in the job runs in place of the one they named.
    Returns how many tasks were queued (0: nothing failed)."""
    if job.manifest.session:
        raise NotRetryable(
            f"job {job.id} holds Executor.submit() calls, which are not kept for a retry: "
            "submit them again"
        )
    st = job.status()
    if st.state is JobState.CANCELLED:
        raise JobCancelled(f"job {job.id} was cancelled: submit its tasks as a new job")
    if not st.state.finished or st.total is None:
        raise NotRetryable(
            f"job {job.id} is still {st.state.value} ({st.counts()}): wait for it to "
            f"finish (`cloudloop status {job.id}`), then retry"
        )
    snapshot = dict(job.parts.spans)  # only these are rewritten (see the module's words)
    wanted = _failed(job) if tasks is None else _named(tasks, st.total, job.id)
    if not wanted:
        job.retried = 0
        return 0
    fn_ref = _function_for(job, fn_ref)
    bodies = _messages(job, wanted, fn_ref)
    _forget_starts(job, wanted)  # a retry's first delivery is a first start again
    for i in range(0, len(bodies), _SEND_BATCH):
        job.backend.queue.put(bodies[i : i + _SEND_BATCH])
    _uncover(job, wanted, snapshot)
    job.backend.store.delete(keys.finished(job.id))
    job.forget_finish()
    job.retried = len(wanted)
    return len(wanted)


def _function_for(job: Job, fn_ref: str | None) -> str | None:
    """The function a retry runs: ``fn_ref`` (remembered for the retries after it),
    or the one an earlier retry fixed the job with, if any."""
    name = keys.retry_fn(job.id)
    if fn_ref is not None:
        job.backend.put_record(name, {"ref": fn_ref})
        return fn_ref
    rec = job.backend.get_record(name, f"retry function of job {job.id}")
    ref = rec.get("ref") if isinstance(rec, dict) else None
    if ref is None:
        return None
    if not (isinstance(ref, str) and len(ref) <= 64 and all(c in "0123456789abcdef" for c in ref)):
        raise TamperedError(f"{name} does not name a function")
    return ref


def _forget_starts(job: Job, wanted: set[int]) -> None:
    """Drop the start markers of the tasks re-run (poison detection counts those)."""
    store = job.backend.store
    for key in store.list(keys.starts_all(job.id)):
        try:
            index = int(key.split("/starts/", 1)[1].split("/", 1)[0])
        except ValueError:
            continue
        if index in wanted:
            store.delete(key)


def _named(tasks: Iterable[int], total: int, job_id: str) -> set[int]:
    out = set()
    for t in tasks:
        if type(t) is not int or not 0 <= t < total:
            raise NotRetryable(
                f"{t!r} is not a task of job {job_id}: tasks are numbered 0 to {total - 1}"
            )
        out.add(t)
    return out


def _failed(job: Job) -> set[int]:
    """Tasks whose best outcome is a failure or a cancellation."""
    return {i for i, o in job.outcomes().items() if not o.ok}


def _messages(job: Job, wanted: set[int], fn_ref: str | None) -> list[bytes]:
    backend, left = job.backend, set(wanted)
    bodies = []
    for key in backend.store.list(keys.chunks_prefix(job.id)):
        try:
            first, last, lo, hi = keys.parse_chunk_record(key)
        except ValueError:
            continue
        if not any(lo <= i <= hi for i in left):
            continue
        for header, payload in _kept_messages(job, key, first, last):
            mine = sorted(i for i in left if header.lo <= i <= header.hi)
            if not mine:
                continue
            new = dataclasses.replace(header, runs=runs_of(mine))
            if fn_ref is not None:
                swap = tuple((old, fn_ref) for old in header.fns)
                new = dataclasses.replace(new, fns=(fn_ref,), swap=swap)
            bodies.append(codec.encode_message(backend.key, new.to_dict(), payload))
            left -= set(mine)
    if left:
        shown = ", ".join(map(str, sorted(left)[:10]))
        raise NotRetryable(
            f"job {job.id} kept no inputs for tasks {shown}{'...' if len(left) > 10 else ''} "
            "(it was submitted by an older cloudloop): submit them as a new job"
        )
    return bodies


def _kept_messages(job: Job, key: str, first: int, last: int) -> list[tuple[MessageHeader, Any]]:
    """The messages of chunks ``first..last`` as first sent, verified (the record's
    signature covers its name; each message's, its bytes) and checked against the
    record's name."""
    blob = job.backend.get_signed(key, f"chunk record {key}")
    if blob is None:
        raise NotRetryable(f"{key} vanished while job {job.id} was being retried: retry again")
    bodies = codec.loads_data(blob)
    if not (isinstance(bodies, list) and all(type(b) is tuple and len(b) == 1 for b in bodies)):
        raise TamperedError(f"{key} is not a list of messages")
    out = []
    for (body,) in bodies:
        try:
            raw, payload = codec.decode_message(
                job.backend.key, body if type(body) is bytes else b""
            )
            header = MessageHeader.from_dict(raw)
        except ValueError as e:
            raise TamperedError(f"{key} holds something that is not a message: {e}") from None
        if header.job != job.id or not first <= header.chunk <= last:
            raise TamperedError(f"{key} holds another chunk's message")
        out.append((header, payload))
    return out


def _uncover(job: Job, wanted: set[int], snapshot: dict[str, tuple[int, int, int]]) -> None:
    """Rewrite every part of the snapshot holding a task of ``wanted`` without it."""
    backend = job.backend
    for key, (lo, hi, _) in snapshot.items():
        if not any(lo <= i <= hi for i in wanted):
            continue
        got = job.parts.read_rows(key)
        if got is None:  # gone or forged: nothing of it counts anyway
            continue
        worker, host, rows = got
        kept = sorted((r for r in rows if r[0] not in wanted), key=lambda r: r[0])
        run: list[tuple] = []
        for r in [*kept, None]:
            if run and (r is None or r[0] != run[-1][0] + 1):
                nfail = sum(1 for x in run if x[3] is not None)
                name = keys.result(
                    job.id, run[0][0], run[-1][0], nfail, cached=keys.is_cached_part(key)
                )
                blob = codec.encode_part(backend.key, name, worker, host, [codec.pack_rows(run)])
                backend.store.put(name, blob)
                run = []
            if r is not None and not (run and r[0] == run[-1][0]):
                run.append(r)
        backend.store.delete(key)
        job.parts.forget(key)
