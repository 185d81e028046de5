"""Futures for ``Executor.submit``: one durable session job per executor.

::

    submit(fn, *a) ─► pickle now (errors name the culprit) ─► _Session buffer
                                                                │ _Session thread: every few ms
                                                                ▼
                                          one queue message per batch of submits
                          worker: claims/<i> = "run" (if absent) ─► runs task i ─► results/
    Future ◄── RUNNING ◄── _Session thread lists claims/ (while a future is PENDING)
    Future ◄── set_result / set_exception ◄── _Session thread polls results/ of the session job
    Future.cancel() ─► claims/<i> = "cancel" (if absent): True only if no worker claimed it

How this keeps the ``concurrent.futures`` contract (RUNNING, ``cancel()``,
every future completing) is told in :mod:`cloudloop.executor`'s docstring;
the :class:`Executor` owns one :class:`_Session` and starts it on the first
``submit``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import codec, keys
from .backends import Backend
from .errors import CloudloopError, InitializerFailed, TamperedError
from .job import Job
from .model import JobOptions, Outcome
from .results import ResultParts, read_outcome
from .submit import JobWriter

_LINGER = 0.002
_PENDING, _RUNNING, _CANCELLED = cf._base.PENDING, cf._base.RUNNING, cf._base.CANCELLED
log = logging.getLogger("cloudloop")
_futures_log = logging.getLogger("concurrent.futures")  # where the stdlib reports initializers


class Future(cf.Future):
    """A ``concurrent.futures.Future`` for one task of an executor's session job:
    RUNNING once a worker has claimed the task, and ``cancel()`` races the
    workers for that claim (see the module docstring)."""

    def __init__(self, session: _Session, index: int):
        super().__init__()
        self._session, self._index = session, index

    def cancel(self) -> bool:
        with self._condition:
            if self._state != _PENDING:
                return super().cancel()
        try:
            won = self._session.cancel_task(self._index)
        except Exception as e:  # the store cannot say: so it cannot be called cancelled
            log.warning("could not cancel task %d: %s: %s", self._index, type(e).__name__, e)
            return False
        if not won:
            self._mark_running()  # a worker has it: too late, as the stdlib says
            return False
        if not super().cancel():
            return False
        with self._condition:  # no worker will run it: wake wait() and as_completed() now
            if self._state == _CANCELLED:
                self.set_running_or_notify_cancel()
        return True

    def _mark_running(self) -> None:
        with self._condition:
            if self._state == _PENDING:
                self._state = _RUNNING


class _Session(threading.Thread):
    """Batches ``submit`` calls into messages and completes their futures."""

    def __init__(
        self,
        backend: Backend,
        options: JobOptions,
        workers: int,
        wrap: Callable[[Any], Any] | None = None,
        relay: bool = True,
        requires: tuple[str, ...] = (),
    ):
        super().__init__(name="cloudloop-session", daemon=True)
        self.backend = backend
        self.writer = JobWriter.plan(
            backend,
            options.replace(name=options.name or "submit"),
            session=True,
            wrap=wrap,
            requires=requires,
        )
        self.job = Job(backend, self.writer.id, self.writer.manifest)
        # its own reader: the Job is the user's too (Executor.session_job), read from their thread
        self.parts = ResultParts(backend, self.writer.id, problems=self.job.parts.problems)
        self.workers = max(workers, 1)
        self.relay = relay
        self.cond = threading.Condition()
        self.buffer: list[tuple[int, bytes, str]] = []
        self.futures: dict[int, Future] = {}
        self.next_index = 0
        self.closing = False
        self.abandon = False  # at exit without workers of our own: send, do not wait
        self.broken: str | None = None
        self.read: set[str] = set()
        self.claims: set[str] = set()  # claim keys already read
        self.start()

    def submit(self, fn: Callable, args: tuple, kwargs: dict) -> Future:
        ref, blob = self.writer.prepare_fn(fn)
        name = getattr(fn, "__qualname__", "fn")
        packed = codec.dumps((ref, args, kwargs), f"an argument of {name}()")
        if blob is not None:  # stored only now: nothing unpicklable leaves a job behind
            self.writer.store_fn(fn, ref, blob)
        with self.cond:
            if self.broken:
                raise InitializerFailed(self.broken)
            index = self.next_index
            self.next_index += 1
            fut = Future(self, index)
            self.futures[index] = fut
            self.buffer.append((index, packed, ref))
            self.cond.notify()
        return fut

    def cancel_task(self, index: int) -> bool:
        """Claim the task for cancellation; False if a worker claimed it first."""
        name = keys.claim(self.writer.id, index)
        if self.backend.put_signed(name, b"cancel", if_absent=True):
            return True
        try:
            return self.backend.get_signed(name) == b"cancel"
        except TamperedError:  # a forged claim: workers ignore it, so the task runs
            return False

    def pending(self) -> list[Future]:
        with self.cond:
            return [f for f in self.futures.values() if not f.done()]

    def close(self, abandon: bool = False) -> None:
        """Stop once every future is done (``abandon``: once every task is sent)."""
        with self.cond:
            self.closing = True
            self.abandon = self.abandon or abandon
            self.cond.notify()
        if threading.current_thread() is not self:  # shutdown() from a done-callback
            self.join()

    # ------------------------------------------------------------ the thread

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a bug here must not leave every future pending
            self._fail_all(e)
            raise

    def _loop(self) -> None:
        pause = self.backend.poll_interval
        while True:
            with self.cond:
                if not self.buffer and not self.closing:
                    self.cond.wait(pause if self.futures else None)
                buffered, watching = bool(self.buffer), bool(self.futures)
                stop = self.closing and not buffered and (self.abandon or not watching)
            if stop:
                self._last_round()
                return
            try:
                if buffered:
                    time.sleep(_LINGER)
                    self._send()
                elif self.writer.unsent:
                    self.writer.flush()
                if watching:
                    outcomes = self._gather()
                    if self.relay:  # logs are stored before results: print, then complete
                        _relay(self.job)
                    for o in outcomes:
                        self._complete(o)
                    with self.cond:  # cancelled ones too: no worker has to confirm them
                        for i in [i for i, f in self.futures.items() if f.done()]:
                            del self.futures[i]
                    self._mark_started()
                pause = self.backend.poll_interval
            except Exception as e:  # a flaky backend: the next round retries
                log.warning("session job %s: %s: %s", self.writer.id, type(e).__name__, e)
                time.sleep(pause)
                pause = min(pause * 2, self.backend.poll_max)

    def _last_round(self) -> None:
        try:
            self.writer.flush()
            if self.relay:
                _relay(self.job)
        except Exception as e:
            log.error("session job %s: tasks not sent at close: %s", self.writer.id, e)

    def _send(self) -> None:
        with self.cond:
            batch, self.buffer = self.buffer, []
        size = max(1, len(batch) // (self.workers * 4))
        for s in range(0, len(batch), size):
            part = batch[s : s + size]
            try:
                self.writer.add_packed(part[0][0], [p for _, p, _ in part], {r for _, _, r in part})
            except Exception as e:  # e.g. a big batch that cannot spill to the store
                err = CloudloopError(f"the task could not be queued: {type(e).__name__}: {e}")
                err.__cause__ = e
                for index, _, _ in part:
                    self._settle(self.futures.get(index), False, err)
        self.writer.flush()

    def _gather(self) -> list[Outcome]:
        """The outcomes of result parts not read before (forged ones count for nothing)."""
        parts = self.parts
        parts.refresh()
        # a part joins self.read once read: a read that fails leaves it (and the rest) to retry
        out: list[Outcome] = []
        try:
            for outcomes in parts.unread(self.read):
                out += outcomes
        except Exception as e:  # the parts read before it are in self.read: keep theirs
            if not out:
                raise
            log.warning("session job %s: %s: %s", self.writer.id, type(e).__name__, e)
        return out

    def _complete(self, o: Outcome) -> None:
        fut = self.futures.get(o.index)
        if fut is None or fut.done():
            return
        if o.cancelled:  # a claim said "cancel" (this future's cancel(), or another client)
            if cf.Future.cancel(fut):
                with fut._condition:
                    if fut._state == _CANCELLED:
                        fut.set_running_or_notify_cancel()
            return
        ok, value = read_outcome(o, self.writer.id)
        if not ok and isinstance(value, InitializerFailed):
            self._break(value)
        self._settle(fut, ok, value)

    def _settle(self, fut: Future | None, ok: bool, value: Any) -> None:
        if fut is None:
            return
        try:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        except cf.InvalidStateError:  # cancelled meanwhile
            pass
        except BaseException as e:  # a done-callback raised past the stdlib's own guard
            log.error("a done-callback of %r raised %s: %s", fut, type(e).__name__, e)

    def _mark_started(self) -> None:
        """Futures whose task a worker has claimed become RUNNING (verified claims only)."""
        with self.cond:
            waiting = [(i, f) for i, f in self.futures.items() if f._state == _PENDING]
        if not waiting:
            return
        listed = set(self.backend.store.list(keys.claims_prefix(self.writer.id)))
        for i, fut in waiting:
            name = keys.claim(self.writer.id, i)
            if name not in listed or name in self.claims:
                continue
            self.claims.add(name)
            try:
                if self.backend.get_signed(name) == b"run":
                    fut._mark_running()
            except TamperedError as e:
                log.warning("ignoring %s: %s", name, e)

    def _break(self, err: InitializerFailed) -> None:
        """The initializer failed: as the stdlib, the executor is broken for good."""
        _futures_log.critical("Exception in initializer:\n%s", err.__cause__ or err)
        with self.cond:
            self.broken = self.broken or (
                "an initializer failed: the executor is not usable anymore "
                f"(cloudloop session job {self.writer.id}): {err}"
            )
            futures = list(self.futures.values())
        for fut in futures:
            if not fut.done():
                try:
                    self.cancel_task(fut._index)
                except Exception:
                    pass
                self._settle(fut, False, InitializerFailed(self.broken))

    def _fail_all(self, e: BaseException) -> None:
        err = CloudloopError(
            f"cloudloop's session thread stopped ({type(e).__name__}: {e}); the task may "
            f"still run: cl.attach({self.writer.id!r}) reads its result"
        )
        err.__cause__ = e
        for fut in self.pending():
            self._settle(fut, False, err)


def _relay(job: Job) -> None:
    """Write what the job's tasks printed, since the last call, to this process's stdout."""
    wrote = False
    for _, text in job.new_log_lines():
        sys.stdout.write(text)
        wrote = True
    if wrote:
        sys.stdout.flush()
