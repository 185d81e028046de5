"""The client API: ``Executor`` (a real ``concurrent.futures.Executor``), ``map``, ``attach``.

::

    submit(fn, *a) ─► pickle now (errors name the culprit) ─► _Session buffer
                                                                │ _Session thread: every few ms
                                                                ▼
                                          one queue message per batch of submits
    Future ◄── set_result / set_exception ◄── _Session thread polls results/ of the session job

    map(fn, *its) / map_job(...) ─► JobWriter streams chunks ─► Job (results read in order)

``submit`` calls share one durable "session" job per executor; every
``map``/``map_job`` call is a job of its own. Workers come from the profile's
provider (local processes by default) and are stopped by ``shutdown``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import codec, keys
from .backends import Backend, open_backend
from .config import Profile, job_options, load_profile, worker_options
from .errors import ConfigError
from .job import Job, attach_job
from .model import JOB_OPTION_NAMES, WORKER_OPTION_NAMES, JobOptions
from .providers import WorkerPool, get_provider
from .submit import JobWriter, chunk_sizes, length_hint, zip_items

_LINGER = 0.002
log = logging.getLogger("cloudloop")


class _Future(cf.Future):
    """A stdlib Future whose ``cancel`` also tells workers to skip the task."""

    def __init__(self, session: _Session, index: int):
        super().__init__()
        self._session, self._index = session, index

    def cancel(self) -> bool:
        with self._condition:
            if self._state != cf._base.PENDING:
                return super().cancel()
        if self._session.cancel_task(self._index):
            return super().cancel()
        with self._condition:  # a worker has it: too late, as the stdlib says
            if self._state == cf._base.PENDING:
                self._state = cf._base.RUNNING
        return False


class _Session(threading.Thread):
    """Batches ``submit`` calls into messages and resolves their futures."""

    def __init__(self, backend: Backend, options: JobOptions, workers: int):
        super().__init__(name="cloudloop-session", daemon=True)
        self.backend = backend
        self.writer = JobWriter.create(
            backend, options.replace(name=options.name or "submit"), session=True
        )
        self.job = Job(backend, self.writer.id, self.writer.manifest)
        self.workers = max(workers, 1)
        self.cond = threading.Condition()
        self.buffer: list[tuple[int, bytes, str]] = []
        self.futures: dict[int, _Future] = {}
        self.next_index = 0
        self.closing = False
        self.read: set[str] = set()
        self.start()

    def submit(self, fn: Callable, args: tuple, kwargs: dict) -> _Future:
        ref = self.writer.add_fn(fn)
        name = getattr(fn, "__qualname__", "fn")
        packed = codec.dumps((ref, args, kwargs), f"an argument of {name}()")
        with self.cond:
            index = self.next_index
            self.next_index += 1
            fut = _Future(self, index)
            self.futures[index] = fut
            self.buffer.append((index, packed, ref))
            self.cond.notify()
        return fut

    def cancel_task(self, index: int) -> bool:
        """Claim the task for cancellation; False if a worker claimed it first."""
        name = keys.claim(self.writer.id, index)
        if self.backend.put_signed(name, b"cancel", if_absent=True):
            return True
        return self.backend.get_signed(name) == b"cancel"

    def pending(self) -> list[_Future]:
        with self.cond:
            return [f for f in self.futures.values() if not f.done()]

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.join()

    def _send(self) -> None:
        with self.cond:
            batch, self.buffer = self.buffer, []
        size = max(1, len(batch) // (self.workers * 4))
        for s in range(0, len(batch), size):
            part = batch[s : s + size]
            self.writer.add_packed(part[0][0], [p for _, p, _ in part], {r for _, _, r in part})
        self.writer.flush()

    def _collect(self) -> None:
        store = self.backend.store
        for key in store.list(keys.results_prefix(self.writer.id)):
            if key in self.read:
                continue
            self.read.add(key)
            for o in self.job._read(key):
                fut = self.futures.get(o.index)
                if fut is None or fut.done() or o.cancelled:
                    continue
                if o.ok:
                    fut.set_result(codec.loads(o.value))
                else:
                    fut.set_exception(codec.rebuild_exception(o.error))
        with self.cond:
            for i in [i for i, f in self.futures.items() if f.done()]:
                del self.futures[i]

    def run(self) -> None:
        pause = self.backend.poll_interval
        while True:
            with self.cond:
                if not self.buffer and not self.closing:
                    self.cond.wait(pause if self.futures else None)
                closing = self.closing and not self.futures and not self.buffer
            if closing:
                return
            if self.buffer:
                time.sleep(_LINGER)
                self._send()
            try:
                self._collect()
            except Exception as e:  # a flaky backend read: the next poll retries
                log.warning("could not read results of %s: %s", self.writer.id, e)
                time.sleep(pause)


class Executor(cf.Executor):
    """Run functions on cloudloop workers; a drop-in ``concurrent.futures.Executor``.

    Args:
        backend: where jobs live (URL); default: the profile's backend.
        workers: workers to start through the profile's provider (0: none,
            serve with external ``cloudloop worker`` processes); default: the
            profile's ``workers``, else one per CPU.
        profile: a profile name from ``cloudloop.toml`` (else
            ``$CLOUDLOOP_PROFILE``, else local).
        **options: job options (``retries``, ``timeout``, ``memory``, ``seed``,
            ``chunksize``, ``name``, ``max_deliveries``, ``env``) and worker
            options (``lease``, ``idle_exit``, ``split_after``, ...).
    """

    def __init__(
        self,
        backend: str | None = None,
        workers: int | None = None,
        profile: str | None = None,
        **options: Any,
    ):
        self._profile: Profile = load_profile(profile)
        unknown = set(options) - JOB_OPTION_NAMES - WORKER_OPTION_NAMES
        if unknown:
            known = sorted(JOB_OPTION_NAMES | WORKER_OPTION_NAMES)
            raise ConfigError(f"unknown option(s) {sorted(unknown)}; known: {known}")
        self._job_options = job_options(
            self._profile.job, **{k: v for k, v in options.items() if k in JOB_OPTION_NAMES}
        )
        self._worker_options = worker_options(
            self._profile.worker, **{k: v for k, v in options.items() if k in WORKER_OPTION_NAMES}
        )
        self.backend: Backend = open_backend(backend or self._profile.backend)
        if workers is None:
            workers = self._profile.workers
        if workers is None:  # locally one per core; elsewhere `cloudloop up` manages workers
            workers = (os.cpu_count() or 1) if self._profile.provider == "local" else 0
        if workers < 0:
            raise ConfigError(f"workers must be >= 0, not {workers}")
        self.workers = workers
        self._lock = threading.Lock()
        self._shutdown = False
        self._session: _Session | None = None
        self._jobs: list[Job] = []
        self._pool: WorkerPool | None = None
        if workers:
            provider = get_provider(
                self._profile.provider, self._profile.provider_options, self._profile.name
            )
            self._pool = provider.start(self.backend.connect_url, workers, self._worker_options)

    # ---------------------------------------------------------------- stdlib API

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        return self._open_session().submit(fn, args, kwargs)

    def session_job(self) -> Job:
        """The durable job that ``submit`` calls share (made on first use)."""
        return self._open_session().job

    def _open_session(self) -> _Session:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._session is None:
                self._session = _Session(self.backend, self._job_options, self.workers)
            return self._session

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: results in order, lazily.

        ``chunksize=1`` (the default) lets cloudloop choose how many tasks
        share a queue message; a larger value fixes it.
        """
        end = None if timeout is None else time.monotonic() + timeout
        job = self.map_job(fn, *iterables, chunksize=None if chunksize == 1 else chunksize)
        return _ordered(job, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        session = self._session
        if cancel_futures:
            if session is not None:
                for f in session.pending():
                    f.cancel()
            for job in self._jobs:
                if not job.done():
                    job.cancel()
        if wait:
            self._drain()
        else:
            threading.Thread(target=self._drain, name="cloudloop-shutdown").start()

    def _drain(self) -> None:
        if self._session is not None:
            cf.wait(self._session.pending())
            self._session.close()
        for job in self._jobs:
            job.wait()
        if self._pool is not None:
            self._pool.stop()

    # ---------------------------------------------------------------- durable jobs

    def map_job(self, fn: Callable, *iterables: Iterable, **options: Any) -> Job:
        """Submit ``fn(*args)`` for each element of the zipped iterables as one durable job.

        Returns once every task is in the queue (submission streams, a chunk
        at a time). Options override the executor's job options for this job.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new jobs after shutdown")
        if not iterables:
            raise TypeError("map_job() needs at least one iterable")
        opts = job_options(self._job_options, **options)
        writer = JobWriter.create(self.backend, opts.replace(name=opts.name or _fn_name(fn)))
        writer.add_fn(fn)  # refuse an unpicklable function before any task is queued
        sizes = chunk_sizes(length_hint(iterables), self.workers or 8, opts.chunksize)
        writer.write_items(fn, zip_items(iterables), sizes)
        writer.seal()
        job = Job(self.backend, writer.id, writer.manifest)
        self._jobs.append(job)
        return job

    def command_job(
        self,
        command: str,
        items: Iterable[Any],
        files: dict[str, bytes] | None = None,
        **options: Any,
    ) -> Job:
        """Run a shell command template once per item (see :mod:`cloudloop.commands`).

        Args:
            command: e.g. ``"Rscript fit.R --alpha {alpha}"``; fields are shell-quoted.
            items: dicts (or scalars, as ``{item}``), one task each.
            files: name -> bytes copied into every task's working directory.
        """
        opts = job_options(self._job_options, **options)
        writer = JobWriter.create(
            self.backend,
            opts.replace(name=opts.name or command.split()[0]),
            kind="command",
            command=command,
            files=files,
        )
        sizes = chunk_sizes(length_hint((items,)), self.workers or 8, opts.chunksize)
        writer.write_items(None, ((x,) for x in items), sizes)
        writer.seal()
        job = Job(self.backend, writer.id, writer.manifest)
        self._jobs.append(job)
        return job

    def attach(self, job_id: str) -> Job:
        return attach_job(self.backend, job_id)


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _ordered(job: Job, end: float | None) -> Iterator[Any]:
    finished = False
    try:
        yield from job.iter_results(deadline=end)
        finished = True
    finally:
        if not finished and not job.done():
            job.cancel()


def map(
    fn: Callable,
    *iterables: Iterable,
    backend: str | None = None,
    workers: int | None = None,
    profile: str | None = None,
    progress: bool = False,
    return_exceptions: bool = False,
    **options: Any,
) -> list[Any]:
    """``[fn(*args) for args in zip(*iterables)]`` on cloudloop workers, in input order.

    Takes the keyword arguments of :class:`Executor` and the job options.
    """
    worker_opts = {k: options.pop(k) for k in list(options) if k in WORKER_OPTION_NAMES}
    with Executor(backend=backend, workers=workers, profile=profile, **worker_opts) as ex:
        job = ex.map_job(fn, *iterables, **options)
        job.wait(progress=progress)
        return job.results(return_exceptions=return_exceptions)


def attach(job_id: str, backend: str | None = None, profile: str | None = None) -> Job:
    """A handle on an existing job, from any process or machine that can reach its backend."""
    url = backend or load_profile(profile).backend
    return attach_job(open_backend(url), job_id)


__all__ = ["Executor", "attach", "map"]
