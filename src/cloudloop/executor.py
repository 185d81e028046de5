"""The client API: ``Executor`` (a real ``concurrent.futures.Executor``), ``map``, ``attach``.

::

    submit(fn, *a) ─► _Session (one durable job per executor; see cloudloop.session) ─► Future
    map(fn, *its) / map_job(...) ─► JobWriter streams chunks ─► Job (results read in order)

``submit`` calls share one durable "session" job per executor; every
``map``/``map_job`` call is a job of its own. Workers come from the profile's
provider (local processes by default) and are stopped by ``shutdown``.

Where the ``concurrent.futures`` contract meets a durable job (CPython's own
executor tests run against this class: ``tests/test_executor_cpython.py``):

* RUNNING and ``cancel()``. A worker claims each task of a session job before
  it runs it, by creating ``claims/<index>`` if it is absent; ``cancel()``
  creates the same key as "cancel". Whoever creates it first wins, so
  ``cancel()`` returns True exactly when no worker will run the task, and False
  once one has it (the future is then RUNNING, as the stdlib's would be). The
  session thread lists the claims while some future is still PENDING, no more
  often than it polls results, and moves claimed futures to RUNNING; a claim
  that fails verification is ignored.
* Every future completes: with its value or exception, or, when either cannot
  be unpickled on this client, with :class:`~cloudloop.errors.UnreadableResult`
  (the unpickling error as cause). Nothing raised while reading results,
  sending tasks or running done-callbacks stops the session thread; should it
  stop anyway, every pending future gets the reason.
* Interpreter exit joins executors as the stdlib's do (``threading._register_atexit``):
  every buffered submit is sent and, if the executor started workers, exit
  waits for the pending futures of ``submit()`` (relaying their output), then
  stops those workers, which would otherwise be orphans. Durable jobs
  (``map``, ``map_job``) are not waited for: their tasks are in the queue, the
  workers finish them and then exit by themselves, and any client can
  ``attach`` later. Without workers of its own (``workers=0``), exit only sends
  what was buffered. ``submit()`` after exit began raises ``RuntimeError``.
* Output: what tasks of ``submit()`` and ``map()`` print is written to this
  process's stdout as it reaches the store, as a ``ProcessPoolExecutor``'s
  children share the terminal (``relay_output=False``: only in the store).
* ``initializer(*initargs)`` runs once in each process that runs the
  executor's tasks, before the first of them; if it raises, the executor is
  broken as the stdlib's: pending futures fail with ``InitializerFailed`` (a
  ``BrokenProcessPool``) and ``submit()`` raises it.
* An argument that cannot be pickled is refused by ``submit()`` itself, naming
  the culprit; ``SerializationError`` is the ``pickle.PicklingError`` that the
  stdlib's future would raise later. ``max_workers`` is the stdlib's name for
  ``workers`` and, like the stdlib's, must be at least 1.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from . import cachekey, environment, keys
from .backends import Backend, open_backend
from .cache import describe
from .commands import check_served, compile_template
from .config import (
    Profile,
    auto_requirements,
    check_known,
    check_workers,
    job_options,
    load_profile,
    worker_options,
)
from .errors import CloudloopError, ConfigError, InitializerFailed, JobNotFound
from .job import Job, attach_job
from .model import JOB_OPTION_NAMES, WORKER_OPTION_NAMES, JobOptions
from .providers import WorkerPool, provider_for
from .retry import retry_job
from .session import _relay, _Session
from .submit import JobWriter, chunk_sizes, length_hint, pickle_fn, zip_items

_RELAY_EVERY = 0.5  # seconds between output relays while map() results are read
_DONE = object()
log = logging.getLogger("cloudloop")

_live: set[Executor] = set()  # not shut down yet: interpreter exit joins them
_exiting = False


def _python_exit() -> None:
    global _exiting
    _exiting = True
    for ex in list(_live):
        try:
            ex._at_exit()
        except Exception as e:  # one executor's trouble must not keep another's work unsent
            log.error("cloudloop: at exit: %s: %s", type(e).__name__, e)


# as concurrent.futures does: run before non-daemon threads are joined, and before atexit
(getattr(threading, "_register_atexit", None) or atexit.register)(_python_exit)


class Executor(cf.Executor):
    """Run functions on cloudloop workers; a drop-in ``concurrent.futures.Executor``.

    Args:
        backend: where jobs live (URL); default: the profile's backend.
        workers: workers to start through the profile's provider (0: none,
            serve with external ``cloudloop worker`` processes); default: the
            profile's ``workers``, else one per CPU.
        profile: a profile name from ``cloudloop.toml`` (else
            ``$CLOUDLOOP_PROFILE``, else local).
        max_workers: the ``concurrent.futures`` name for ``workers``; as there,
            at least 1 (give one of the two).
        initializer: called as ``initializer(*initargs)`` once in each process
            that runs this executor's tasks, before the first of them.
        initargs: its arguments.
        relay_output: write what tasks of ``submit()`` and ``map()`` print to
            this process's stdout (False: only to the store, ``job.logs(i)``).
        **options: job options (``retries``, ``timeout``, ``memory``, ``seed``,
            ``chunksize``, ``name``, ``max_deliveries``, ``env``,
            ``requirements="auto"``) and worker options (``lease``,
            ``idle_exit``, ``split_after``, ...).

    ``requirements="auto"`` (or the profile's ``requirements = "auto"``): each
    job records the distributions its function imports, as installed here
    (``JobManifest.requires``); a worker that lacks one, or has another
    version, leaves the job to workers that have them, and ``job.status()``
    says so. With the profile's, the provider installs what the waiting jobs
    pin, so an executor's own workers start once its first job is stored.

    Raises:
        ValueError: ``max_workers`` below 1 or ``workers`` below 0 (a
            :class:`~cloudloop.errors.ConfigError`), or an unknown option.
    """

    def __init__(
        self,
        backend: str | None = None,
        workers: int | None = None,
        profile: str | None = None,
        *,
        max_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        relay_output: bool = True,
        **options: Any,
    ):
        workers = _worker_count(workers, max_workers)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, not {initializer!r}")
        self._profile: Profile = load_profile(profile)
        check_known(options, JOB_OPTION_NAMES | WORKER_OPTION_NAMES | {"requirements"})
        self._auto = (
            auto_requirements(options["requirements"])
            if "requirements" in options
            else self._profile.auto_requirements
        )
        self._job_options = job_options(
            self._profile.job, **{k: v for k, v in options.items() if k in JOB_OPTION_NAMES}
        )
        self._worker_options = worker_options(
            self._profile.worker, **{k: v for k, v in options.items() if k in WORKER_OPTION_NAMES}
        )
        self.backend: Backend = open_backend(backend or self._profile.backend)
        if workers is None:
            workers = self._profile.workers
        provider = provider_for(self._profile)
        if workers is None:  # locally one per core; elsewhere `cloudloop up` manages workers
            workers = provider.default_workers()
        self.workers = workers
        self._wrap = None if initializer is None else _Initializer(initializer, tuple(initargs))
        self._relay = bool(relay_output)
        self._lock = threading.Lock()
        self._shutdown = False
        self._left = False  # left by an exception (Ctrl-C): interpreter exit waits for nothing
        self._session: _Session | None = None
        self._jobs: list[Job] = []
        self._pool: WorkerPool | None = None
        self._provider = provider
        self._pool_lock = threading.Lock()
        # the provider installs what the waiting jobs pin: it starts once one is stored
        self._deferred = bool(workers) and self._profile.auto_requirements
        if workers and not self._deferred:
            self._pool = provider.start(self.backend.connect_url, workers, self._worker_options)
        _live.add(self)

    def _start_deferred(self) -> None:
        """Start this executor's workers, if they waited for its first job."""
        if self._deferred:
            with self._pool_lock:
                if self._deferred:
                    self._deferred = False
                    self._pool = self._provider.start(
                        self.backend.connect_url, self.workers, self._worker_options
                    )

    def _pins(self, fn: Any, auto: bool) -> tuple[str, ...]:
        """What workers must have installed to run ``fn`` (nothing unless ``auto``)."""
        if not auto or fn is None:
            return ()
        return environment.pins_for(fn if self._wrap is None else self._wrap(fn))

    # ---------------------------------------------------------------- stdlib API

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        future = self._open_session(fn).submit(fn, args, kwargs)
        self._start_deferred()
        return future

    def session_job(self) -> Job:
        """The durable job that ``submit`` calls share (made on first use; with
        ``requirements="auto"`` it pins what the first function submitted imports)."""
        session = self._open_session()
        session.writer.open()
        self._start_deferred()
        return session.job

    @property
    def _broken(self) -> str | bool:
        """Why the executor cannot take work anymore (False if it can), as the stdlib's."""
        session = self._session
        return (session.broken if session is not None else None) or False

    def _open_session(self, fn: Any = None) -> _Session:
        with self._lock:
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._session is None:
                self._session = _Session(
                    self.backend,
                    self._job_options,
                    self.workers,
                    self._wrap,
                    self._relay,
                    requires=self._pins(fn, self._auto),
                )
            if self._session.broken:
                raise InitializerFailed(self._session.broken)
            return self._session

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: results in order, lazily.

        Every task is queued before this returns (as the stdlib submits every
        call); ``timeout`` counts from this call; leaving the iterator early
        (an exception, ``close()``) cancels the tasks not done. ``chunksize=1``
        (the default) lets cloudloop choose how many tasks share a queue
        message; a larger value fixes it.
        """
        if type(chunksize) is not int or chunksize < 1:
            raise ConfigError(f"chunksize must be >= 1, not {chunksize!r}")
        end = None if timeout is None else time.monotonic() + timeout
        job = self.map_job(fn, *iterables, chunksize=None if chunksize == 1 else chunksize)
        return _ordered(job, end, self._relay)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        session = self._session
        if cancel_futures:
            if session is not None:
                for f in session.pending():
                    f.cancel()
            for job in self._jobs:
                try:
                    if not job.done():
                        job.cancel(running=False)  # as the stdlib: running calls finish
                except CloudloopError as e:  # the backend is gone: nothing left to cancel
                    log.warning("could not cancel job %s: %s", job.id, e)
        if wait:
            self._drain()
        else:  # a daemon: interpreter exit does the stdlib's waiting (_at_exit)
            threading.Thread(target=self._drain, name="cloudloop-shutdown", daemon=True).start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        """Leaving ``with``: normally, as the stdlib, wait for the work (``shutdown()``).
        Left by an exception (Ctrl-C, ``sys.exit``, any error), do not wait: the jobs
        are durable and go on without this process (``docs/how-it-fails.md``, Ctrl-C);
        a KeyboardInterrupt says so, with how to re-attach and cancel."""
        if exc_type is None:
            self.shutdown(wait=True)
            return False
        self._left = True
        try:
            if issubclass(exc_type, KeyboardInterrupt):
                _say_left(self)
        finally:
            self.shutdown(wait=False)
        return False

    def _drain(self) -> None:
        try:
            if self._session is not None:
                cf.wait(self._session.pending())
                self._session.close()
            for job in self._jobs:
                try:
                    job.wait()
                except CloudloopError as e:  # a backend that broke: say so, stop the workers
                    log.warning("stopped waiting for job %s: %s", job.id, e)
        finally:
            if self._pool is not None:
                self._pool.stop()
            _live.discard(self)

    def _at_exit(self) -> None:
        """Interpreter exit (see the module docstring): send what submit() buffered;
        with workers of our own, wait for submit()'s futures, then stop those
        workers unless a durable job still has tasks for them."""
        session = self._session
        if session is not None:
            pool, gone = self._pool, 0
            while pool is not None and session.pending() and not self._left:
                gone = gone + 1 if pool.alive() == 0 or getattr(pool, "failed", None) else 0
                if gone > 1:  # no worker of ours is left to finish them
                    break
                cf.wait(session.pending(), timeout=1.0)
            session.close(abandon=True)
        if self._pool is not None and all(_done_or_broken(job) for job in self._jobs):
            self._pool.stop()
        _live.discard(self)

    # ---------------------------------------------------------------- durable jobs

    def map_job(self, fn: Callable, *iterables: Iterable, **options: Any) -> Job:
        """Submit ``fn(*args)`` for each element of the zipped iterables as one durable job.

        Returns once every task is in the queue (submission streams, a chunk
        at a time). Options override the executor's job options for this job.
        If submission fails (an item cannot be pickled, an iterable raises),
        the job is cancelled and removed before the error is raised; an
        unpicklable function creates no job at all.
        """
        self._check_open("jobs")
        if not iterables:
            raise TypeError("map_job() needs at least one iterable")
        auto = self._requirements(options)
        opts = job_options(self._job_options, **options)
        writer = JobWriter.plan(
            self.backend,
            opts.replace(name=opts.name or _fn_name(fn)),
            wrap=self._wrap,
            requires=self._pins(fn, auto),
            cache_key=_cache_key(opts, lambda: self._function_key(fn, opts.cache_version)),
        )
        writer.add_fn(fn)  # the job is stored once its function is pickled
        self._start_deferred()
        sizes = chunk_sizes(length_hint(iterables), self.workers or 8, opts.chunksize)
        return self._write(writer, fn, zip_items(iterables), sizes)

    def command_job(
        self,
        command: str,
        items: Iterable[Any],
        files: dict[str, bytes] | None = None,
        serve: bool = False,
        **options: Any,
    ) -> Job:
        """Run a shell command template once per item (see :mod:`cloudloop.commands`).

        Args:
            command: e.g. ``"Rscript fit.R --alpha {alpha}"``; each field's value
                reaches the command as data, never as code (a template where it
                could be parsed again is refused here, with what to write instead).
            items: dicts (or scalars, as ``{item}``), one task each.
            files: name -> bytes copied into every task's working directory.
            serve: start the command once per worker and send it the rows, one
                JSON line each, on its stdin; it answers one JSON line per row on
                its stdout (:class:`cloudloop.commands.Server`). The template then
                holds no row fields.
        """
        self._check_open("jobs")
        compile_template(command)  # a refused template: before any job exists
        if serve:
            check_served(command)
        self._requirements(options)  # checked; a command job's rows need no package
        opts = job_options(self._job_options, **options)
        writer = JobWriter.plan(
            self.backend,
            opts.replace(name=opts.name or command.split()[0]),
            kind="command",
            command=command,
            files=files,
            serve=serve,
            cache_key=_cache_key(
                opts,
                lambda: cachekey.command_key(command, files or {}, serve, opts.cache_version),
            ),
        )
        sizes = chunk_sizes(length_hint((items,)), self.workers or 8, opts.chunksize)
        self._start_deferred()
        return self._write(writer, None, ((x,) for x in items), sizes)

    def _requirements(self, options: dict[str, Any]) -> bool:
        """Whether a job pins its requirements: its own ``requirements`` option (taken
        out of ``options``), else the executor's."""
        if "requirements" in options:
            return auto_requirements(options.pop("requirements"))
        return self._auto

    def _write(self, writer: JobWriter, fn: Any, items: Iterator, sizes: Iterator[int]) -> Job:
        m = writer.manifest
        if m.cache_key:
            describe(self.backend, m.cache_key, m.name, m.kind)
        try:
            writer.write_items(fn, items, sizes)
            writer.seal()
        except BaseException:  # half a job would sit in SUBMITTING for ever
            try:
                writer.discard()
            except Exception as e:
                log.error("job %s: could not remove it after a failed submit: %s", writer.id, e)
            raise
        job = Job(self.backend, writer.id, writer.manifest)
        self._jobs.append(job)
        return job

    def retry(
        self, job: Job | str, fn: Callable | None = None, tasks: Iterable[int] | None = None
    ) -> Job:
        """Run the failed tasks of a finished job again on this executor's workers (or
        exactly ``tasks``), with ``fn`` in place of their function if given; every
        other result stays and the job keeps its id (see :meth:`Job.retry`)."""
        self._check_open("jobs")
        job = self.attach(job if isinstance(job, str) else job.id)
        ref = None
        if fn is not None:
            ref, blob = pickle_fn(fn, self._wrap)
            self.backend.put_signed(keys.fn(job.id, ref), blob, if_absent=True)
        if retry_job(job, tasks, ref):
            self._start_deferred()  # workers for what was queued (none for nothing)
            self._jobs.append(job)
        return job

    def _function_key(self, fn: Any, version: Any) -> str:
        """``fn``'s cache key, with the executor's initializer and its arguments (they
        run before every task, so what they set up is part of what a task computes)."""
        key = cachekey.function_key(fn, version)
        init = self._wrap
        if init is None:
            return key
        return cachekey.task_key(key, (cachekey.function_key(init.fn),), {"initargs": init.args}, 0)

    def _check_open(self, what: str) -> None:
        with self._lock:
            if _exiting:
                raise RuntimeError(f"cannot schedule new {what} after interpreter shutdown")
            if self._shutdown:
                raise RuntimeError(f"cannot schedule new {what} after shutdown")

    def attach(self, job_id: str) -> Job:
        return attach_job(self.backend, job_id)


def _cache_key(opts: JobOptions, compute: Callable[[], str]) -> str:
    """The job's cache key if it asks for the cache ("" if not): what its tasks
    compute apart from their arguments, and the environment the job gives them."""
    if not opts.cache:
        return ""
    key = compute()
    return cachekey.task_key(key, (), {"env": dict(opts.env)}, 0) if opts.env else key


def _worker_count(workers: Any, max_workers: Any) -> int | None:
    """``workers`` (>= 0) or the stdlib's ``max_workers`` (>= 1), checked."""
    if max_workers is None:
        return check_workers(workers)
    if workers is not None:
        raise ConfigError("give workers or max_workers (its concurrent.futures name), not both")
    if type(max_workers) is not int or max_workers < 1:
        raise ConfigError(f"max_workers must be greater than 0, not {max_workers!r}")
    return max_workers


_initialized: set[tuple[str, int]] = set()  # in a task process: initializers that ran


class _Initializer:
    """Wraps each function of an executor with an initializer (what is pickled)."""

    def __init__(self, fn: Callable[..., Any], args: tuple):
        self.fn, self.args, self.token = fn, args, secrets.token_hex(8)

    def __call__(self, task_fn: Any) -> _Initialized:
        return _Initialized(task_fn, self)

    def ensure(self) -> None:
        # a function shipped by value brings its own copy of its module's globals:
        # the initializer runs once per copy it sees, so the task sees it initialised
        key = (self.token, id(getattr(self.fn, "__globals__", None)))
        if key in _initialized:
            return
        try:
            self.fn(*self.args)
        except BaseException as e:
            name = getattr(self.fn, "__qualname__", repr(self.fn))
            raise InitializerFailed(
                f"the executor's initializer {name}() raised {type(e).__name__}: {e}"
            ) from e
        _initialized.add(key)


class _Initialized:
    """A task function preceded, once per process, by the executor's initializer."""

    def __init__(self, fn: Any, init: _Initializer):
        self.__wrapped__ = fn  # inspect.signature() sees fn's (``rng`` parameters)
        self.init = init

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.init.ensure()
        return self.__wrapped__(*args, **kwargs)


def interrupted_message(jobs: list[Job], url: str, local_workers: int) -> str:
    """What one Ctrl-C leaves behind, in words: which jobs go on, how to see, re-attach
    to or cancel them, and what this process's local workers do now."""
    lines = ["cloudloop: stopped waiting (Ctrl-C)."]
    for job in jobs:
        try:
            st = job.status()
        except JobNotFound:  # nothing of it was stored: nothing goes on
            continue
        except (CloudloopError, OSError) as e:  # still say how to reach it
            state = f"its state could not be read ({type(e).__name__})"
            finished = False
        else:
            finished = st.state.finished
            total = "?" if st.total is None else st.total
            state = f"{st.state.value}, {st.done} of {total} finished"
        if finished:
            continue
        lines += [
            f"  job {job.id} ({state}) is kept in {url} and goes on without this process:",
            f"    see it:    cloudloop status {job.id}      results: cloudloop results {job.id}",
            f'    in Python: cl.attach("{job.id}").results()',
            f"    cancel it: cloudloop cancel {job.id}",
        ]
    if len(lines) == 1:
        return ""
    if local_workers:
        lines.append(
            f"  the {local_workers} local worker(s) this process started go on with its tasks "
            "and exit once the queue is empty (cancel the job to stop them now); "
            "Ctrl-C again: leave at once"
        )
    else:
        lines.append("  its tasks run on whichever workers serve this backend")
    return "\n".join(lines)


def _say_left(ex: Executor) -> None:
    jobs = list(ex._jobs)
    if ex._session is not None and ex._session.job not in jobs:
        jobs.append(ex._session.job)
    text = interrupted_message(
        jobs, ex.backend.url, (ex.workers or 0) if ex._pool is not None else 0
    )
    if text:
        tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        sys.stderr.write(("\n" if tty else "") + text + "\n")
        sys.stderr.flush()


def _done_or_broken(job: Job) -> bool:
    try:
        return job.done()
    except CloudloopError:  # its backend is gone: no worker can finish it
        return True


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _ordered(job: Job, end: float | None, relay: bool) -> Iterator[Any]:
    finished = False
    relayed = time.monotonic()
    results = job.iter_results(deadline=end)
    try:
        while True:
            box = [next(results, _DONE)]  # popped as it is yielded: no reference kept
            if box[0] is _DONE:
                break
            if relay and time.monotonic() - relayed >= _RELAY_EVERY:
                _relay(job)
                relayed = time.monotonic()
            yield box.pop()
        finished = True
        if relay:
            _relay(job)
    finally:
        if not finished and not job.done():
            job.cancel(running=False)  # as the stdlib's map: running calls finish


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
