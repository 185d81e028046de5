"""Reading a job's results and logs from the store: the one reader every client shares.

::

    store                                          reader
    jobs/<job>/results/<lo>-<hi>-<nfail>-<nonce> ─list─► ResultParts: each part's span, the
                                                          tasks they cover together (progress
                                                          from names alone), the parts whose
                                                          names say they hold failures
                                                 ─get──► ResultParts.read(key): the part's
                                                          Outcomes, verified; a forged or
                                                          vanished part is dropped and counts
                                                          for nothing from then on
    jobs/<job>/logs/<lo>-<hi>-<nonce>            ─list─► LogParts: each part's span
                                                 ─get──► LogParts.unread(): each part read
                                                          once; LogParts.log(i) joins task i's
                                                          segments, attempt after attempt

:class:`~cloudloop.job.Job` (status, results, failures, logs), the Executor's
session thread (its futures) and the dashboard (and the static report through
it) all read through here, so a part that fails verification counts for
nothing everywhere, and which outcome wins when a task ran twice has one
answer (:func:`better`). :func:`read_outcome` turns an outcome into the value
or the exception a caller gets.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import CancelledError
from typing import Any

from . import codec, keys
from .backends import Backend
from .errors import TamperedError, UnreadableResult
from .model import Outcome

log = logging.getLogger("cloudloop")

Segment = tuple[int, int, str]  # a piece of a task's log: (attempt, part, text)


_KEEP_BYTES = 16 << 20  # parts held between verify() and their read


def better(new: Outcome, old: Outcome | None) -> bool:
    """Which outcome wins when a task ran twice: success, then failure, then cancel."""
    if old is None:
        return True
    rank = lambda o: 0 if o.ok else (1 if o.error is not None else 2)  # noqa: E731
    return rank(new) < rank(old)


class ResultParts:
    """The result parts of one job: their spans, what they cover, their outcomes.

    Cheap to keep: a :meth:`refresh` is one listing, and nothing is read until
    asked for. Every outcome handed out was verified (its part's signature
    covers its bytes and its key).

    Args:
        backend: the job's backend.
        job_id: the job.
        problems: where a part that fails verification is said, in words, by
            its key (a caller may pass its own, to keep its troubles in one place).
    """

    def __init__(self, backend: Backend, job_id: str, problems: dict[str, str] | None = None):
        self.backend, self.job_id = backend, job_id
        self.spans: dict[str, tuple[int, int, int]] = {}  # key -> (lo, hi, failures)
        self.problems = {} if problems is None else problems
        self.done = 0  # tasks with at least one part holding them
        self.cached = 0  # tasks held by parts taken from the cache
        self._junk: set[str] = set()
        self._merged: list[tuple[int, int]] = []
        self._verified: set[str] = set()
        self._failed: dict[int, bool] = {}  # index -> still failed, for failing parts read
        self._read_failing: set[str] = set()
        self._kept: dict[str, bytes] = {}  # parts verify() read, for the read that follows
        self._kept_bytes = 0

    def refresh(self) -> bool:
        """List the job's parts again; True if the listing changed."""
        listed = self.backend.store.list(keys.results_prefix(self.job_id))
        new = [k for k in listed if k not in self.spans and k not in self._junk]
        gone = set(self.spans).difference(listed)  # parts removed (a retry rewrote them)
        for key in gone:
            self.forget(key)
        if not new:  # (a count would miss a part removed while another was added)
            return bool(gone)
        for key in new:
            try:
                self.spans[key] = keys.parse_result(key)
            except ValueError:  # not a part's name: nothing a worker wrote
                self._junk.add(key)
                log.warning("ignoring %s: not a result part", key)
        self._merge()
        return True

    def forget(self, key: str) -> None:
        """A part that is gone from the store (not a forged one: it may come back)."""
        if self.spans.pop(key, None) is not None:
            self._verified.discard(key)
            self._failed.clear()  # counted again from the parts still listed
            self._read_failing.clear()
            blob = self._kept.pop(key, None)
            self._kept_bytes -= len(blob) if blob is not None else 0
            self._merge()

    def drop(self, key: str) -> None:
        """A part that failed verification: it counts for nothing from now on."""
        blob = self._kept.pop(key, None)
        self._kept_bytes -= len(blob) if blob is not None else 0
        if self.spans.pop(key, None) is not None:
            self._junk.add(key)
            self._merge()

    def _merge(self) -> None:
        merged: list[list[int]] = []
        for lo, hi, _ in sorted(self.spans.values()):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self._merged = [(a, b) for a, b in merged]
        self.done = sum(b - a + 1 for a, b in self._merged)
        self.cached = sum(
            hi - lo + 1 for k, (lo, hi, _) in self.spans.items() if keys.is_cached_part(k)
        )

    def covers(self, index: int) -> bool:
        """Whether some part listed holds task ``index``."""
        i = bisect.bisect_right(self._merged, (index, float("inf"))) - 1
        return i >= 0 and self._merged[i][0] <= index <= self._merged[i][1]

    def containing(self, index: int) -> list[str]:
        """The keys of the parts listed that hold task ``index``."""
        return [k for k, (lo, hi, _) in self.spans.items() if lo <= index <= hi]

    def failing(self) -> list[str]:
        """The keys of the parts whose names say they hold failures."""
        return [k for k, (_, _, nfail) in self.spans.items() if nfail]

    def failed(self) -> int:
        """How many tasks failed, not counting one a later run of it succeeded.

        Reads only the parts whose names say they hold failures (each once),
        and, for a task that failed, the other parts holding it.
        """
        for key in self.failing():
            if key not in self._read_failing:
                self._read_failing.add(key)
                for o in self.read(key):
                    if o.error is not None:
                        self._failed.setdefault(o.index, True)
        for index, still in list(self._failed.items()):
            if still and len(self.containing(index)) > 1:
                ok = any(
                    o.ok for k in self.containing(index) for o in self.read(k) if o.index == index
                )
                self._failed[index] = not ok
        return sum(self._failed.values())

    def _distrust(self, key: str, e: TamperedError) -> None:
        log.warning("ignoring %s: %s", key, e)
        self.problems[key] = f"{key} was not written by this backend's workers: {e}"
        self.drop(key)

    def verify(self) -> None:
        """Check the signature of every part not checked yet (a forged one is dropped):
        an HMAC over its bytes, without unpickling its rows."""
        for key in list(self.spans):
            if key in self._verified:
                continue
            blob = self.backend.store.get_or_none(key)
            try:
                if blob is None:
                    raise TamperedError("it was removed")
                codec.verify(self.backend.key, blob, key, f"result part {key}")
            except TamperedError as e:
                self._distrust(key, e)
            else:
                self._verified.add(key)
                self._keep(key, blob)

    def _keep(self, key: str, blob: bytes) -> None:
        """Hold a part :meth:`verify` read for the :meth:`read_rows` that usually
        follows (``results()`` after ``wait()``): a second GET of it on S3 saved,
        within a small memory budget."""
        if self._kept_bytes + len(blob) <= _KEEP_BYTES:
            self._kept[key] = blob
            self._kept_bytes += len(blob)

    def read(self, key: str) -> list[Outcome]:
        """The outcomes of one part, verified (a key not listed before is parsed here;
        ValueError if it is not a part's name)."""
        got = self.read_rows(key)
        if got is None:
            return []
        worker, host, rows = got
        try:
            return codec.outcomes(rows, worker, host, key)
        except TamperedError as e:
            self._distrust(key, e)
            return []

    def read_rows(self, key: str) -> tuple[str, str, list[tuple[Any, ...]]] | None:
        """(worker, host, rows) of one part, verified (see :func:`codec.part_rows`);
        None if it is gone or fails verification. For a reader that wants speed:
        each row is ``(index, attempt, value, error, started, ended, cancelled)``."""
        span = self.spans.get(key) or keys.parse_result(key)
        blob = self._kept.pop(key, None)
        if blob is not None:
            self._kept_bytes -= len(blob)
        else:
            blob = self.backend.store.get_or_none(key)
        if blob is None:  # removed since it was listed
            self.drop(key)
            return None
        try:
            got = codec.part_rows(self.backend.key, blob, key, span[:2])
        except TamperedError as e:  # not written by a worker of this backend: worth nothing
            self._distrust(key, e)
            return None
        self._verified.add(key)
        return got

    def unread(self, seen: set[str]) -> Iterator[list[Outcome]]:
        """The outcomes of each part listed and not in ``seen``, a part at a time.

        A part joins ``seen`` once the caller has taken its outcomes and asked
        for the next (so a read that fails leaves it for next time), and only
        one part's outcomes are held at once.
        """
        for key in list(self.spans):
            if key not in seen:
                yield self.read(key)
                seen.add(key)

    def best(self) -> dict[int, Outcome]:
        """Every outcome of the parts listed, by task index (the best when a task ran twice)."""
        out: dict[int, Outcome] = {}
        for key in sorted(self.spans):
            for o in self.read(key):
                if better(o, out.get(o.index)):
                    out[o.index] = o
        return out


def read_outcome(o: Outcome, job_id: str) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, exception)`` for one outcome; never raises.

    A value or an exception that cannot be unpickled here (its class is missing
    on this client, or unpickling it raises, even ``SystemExit``) gives an
    :class:`UnreadableResult` with the unpickling error as its cause, so a
    future or a results list always gets an answer.
    """
    if o.cancelled:
        return False, CancelledError(f"task {o.index} of job {job_id} was cancelled")
    try:
        if o.ok and o.value is not None:
            return True, codec.loads(o.value)
        if o.error is None:
            raise ValueError("the outcome holds neither a value nor an error")
        return False, codec.rebuild_exception(o.error)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        return False, _unreadable(o, job_id, e)


def _unreadable(o: Outcome, job_id: str, e: BaseException) -> UnreadableResult:
    if o.ok:
        what = "result"
    else:
        err = o.error
        what = "exception" + (f" ({err.type_name}: {err.message[:200]})" if err else "")
    hint = (
        "its class must be importable here too (the same packages and modules as the workers)"
        if isinstance(e, (ImportError, AttributeError))
        else "unpickling it raised"
    )
    out = UnreadableResult(
        f"the {what} of task {o.index} of job {job_id} cannot be unpickled on this client: "
        f"{hint}: {type(e).__name__}: {e}"
    )
    out.__cause__ = e
    return out


# ---------------------------------------------------------------- logs


class LogParts:
    """The log parts of one job, each read at most once.

    Args:
        backend: the job's backend.
        job_id: the job.
        keep: keep what was read, by task, for :meth:`log` (a reader that only
            relays new output, :meth:`unread`, keeps nothing).
    """

    def __init__(self, backend: Backend, job_id: str, keep: bool = False):
        self.backend, self.job_id, self.keep = backend, job_id, keep
        self.spans: dict[str, tuple[int, int]] = {}  # key -> (lo, hi)
        self.kept: dict[int, list[Segment]] = {}  # index -> segments read (with keep)
        self._junk: set[str] = set()
        self._read: set[str] = set()

    def refresh(self) -> None:
        """List the job's log parts again (reads none of them)."""
        for key in self.backend.store.list(keys.logs_prefix(self.job_id)):
            if key not in self.spans and key not in self._junk:
                try:
                    self.spans[key] = keys.parse_logs(key)
                except ValueError:  # not a log part's name: nothing a worker wrote
                    self._junk.add(key)

    def unread(self, index: int | None = None) -> Iterator[dict[int, list[Segment]]]:
        """Each part listed and not read yet (only those holding task ``index``, if
        given), read now: {task index: [(attempt, part, text)]}."""
        for key, (lo, hi) in list(self.spans.items()):
            if key in self._read or (index is not None and not lo <= index <= hi):
                continue
            self._read.add(key)
            segments = read_log_part(self.backend, key, (lo, hi))
            if self.keep:  # segments of other tasks in this part too: they were paid for
                for i, segs in segments.items():
                    self.kept.setdefault(i, []).extend(segs)
            yield segments

    def log(self, index: int, attempt: int | None = None) -> str:
        """Everything task ``index`` printed in the parts listed (all attempts, or one),
        reading only the parts that hold it and were not read before (needs ``keep``)."""
        for _ in self.unread(index):
            pass
        return task_log(self.kept.get(index, []), attempt)


def task_log(segments: Iterable[Segment], attempt: int | None = None) -> str:
    """A task's log from its segments, in order; with more than one attempt and no
    ``attempt`` chosen, each attempt's output under a ``--- attempt N ---`` line."""
    segs = sorted(s for s in segments if attempt is None or s[0] == attempt)
    several = attempt is None and len({a for a, _, _ in segs}) > 1
    out, last = [], None
    for a, _, text in segs:
        if several and a != last:
            out.append(f"--- attempt {a} ---\n")
        last = a
        out.append(text)
    return "".join(out)


def read_log_part(backend: Backend, key: str, span: tuple[int, int]) -> dict[int, list[Segment]]:
    """One log part: {task index: [(attempt, part, text)]}, verified and checked.

    A part that is missing, forged or malformed reads as one segment per task
    of its span saying so (the rest of the log stays readable).
    """
    try:
        rec = backend.get_record(key, f"log part {key}")
        if rec is None:
            return {}
        return _check_log_part(rec, span, key)
    except (TamperedError, ValueError) as e:
        log.warning("skipping %s: %s", key, e)
        note = f"[cloudloop: a part of this log could not be read and was left out: {e}]\n"
        lo, hi = span
        return {i: [(0, 0, note)] for i in range(lo, min(hi, lo + 1000) + 1)}


def _check_log_part(rec: Any, span: tuple[int, int], key: str) -> dict[int, list[Segment]]:
    if not isinstance(rec, dict):
        raise ValueError(f"log part {key} is not a JSON object")
    out: dict[int, list[Segment]] = {}
    for i, segments in rec.items():
        index = int(i)
        if not span[0] <= index <= span[1] or not isinstance(segments, list):
            raise ValueError(f"log part {key} holds task {index} outside its span")
        for seg in segments:
            if not (
                isinstance(seg, list)
                and len(seg) == 3
                and type(seg[0]) is int
                and type(seg[1]) is int
                and isinstance(seg[2], str)
            ):
                raise ValueError(f"log part {key} holds a malformed segment")
            out.setdefault(index, []).append((seg[0], seg[1], seg[2]))
    return out
