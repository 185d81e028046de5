"""The joblib backend: each joblib batch is one task of a cloudloop executor.

::

    Parallel(n_jobs=-1)(delayed(f)(x) ...)            cloudloop workers (any profile)
      │ configure(): start a cl.Executor ───────────►  (local processes, ssh hosts, ec2 spot)
      │ submit(batch) ─► Executor.submit(_run, batch) ─► QUEUE ─► worker: batch() ─► STORE
      │ callback ◄──── Future done ◄──────────── session thread polls results
      └ terminate(): executor.shutdown() (stops the workers it started)

joblib creates one backend object per ``parallel_config``/``parallel_backend``
block and calls ``configure``/``terminate`` around every ``Parallel`` call,
so each call (one ``GridSearchCV.fit``, one ``cross_val_score``) is one
cloudloop executor whose ``submit`` calls share one durable session job
(named ``joblib``); its results and logs stay in the store like any job's.

Batches are sized by joblib's auto-batching, tuned for a queue's latency
(a batch should take at least half a second). A task's own nested
``Parallel`` calls run sequentially: each worker is already one core's worth.

Large arguments (arrays, frames of 1 MB or more: the ``X`` and ``y`` that
every batch of a grid search carries) are stored once per job under
``jobs/<job>/shared/<digest>`` and travel as a small reference; each worker
process loads one once and keeps it for the batches that follow, like
Dask's ``scatter``.
"""

from __future__ import annotations

import copy
import os
import threading
from concurrent.futures import Future
from typing import Any

from joblib._parallel_backends import (
    AutoBatchingMixin,
    ParallelBackendBase,
    SequentialBackend,
)

from . import codec, context, keys
from .config import load_profile
from .errors import ConfigError
from .executor import Executor
from .providers import provider_for

SHARE_BYTES = 1 << 20  # arguments at least this large are stored once, not sent per batch
_loaded: dict[str, Any] = {}  # worker side: shared arguments already loaded, by key


class _Shared:
    """Stands for a large argument stored once in the job (see the module docstring)."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def load(self) -> Any:
        value = _loaded.get(self.key)
        if value is None:
            ctx = context.current()
            if ctx is None:
                raise RuntimeError("a shared joblib argument can only be loaded inside a task")
            value = codec.loads(ctx.call("shared", self.key))
            if len(_loaded) >= 8:  # a long-lived worker serves many jobs
                del _loaded[next(iter(_loaded))]
            _loaded[self.key] = value
        return value


def _size(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)  # numpy arrays, pandas Series
    if isinstance(nbytes, int):
        return nbytes
    usage = getattr(value, "memory_usage", None)  # pandas DataFrame
    if callable(usage) and type(value).__name__ == "DataFrame":
        try:
            return int(usage(index=True).sum())
        except Exception:
            return 0
    return 0


def _map_items(batch: Any, fn: Any) -> Any:
    """``batch`` (a joblib ``BatchedCalls``) with ``fn`` applied to every argument;
    a copy when anything changed, else ``batch`` itself."""
    items = getattr(batch, "items", None)
    if not isinstance(items, list):
        return batch
    changed, new = False, []
    for item in items:
        func, args, kwargs = item
        args2 = tuple(fn(a) for a in args)
        kwargs2 = {k: fn(v) for k, v in kwargs.items()}
        changed = changed or any(a is not b for a, b in zip(args, args2))
        changed = changed or any(kwargs2[k] is not v for k, v in kwargs.items())
        new.append((func, args2, kwargs2))
    if not changed:
        return batch
    clone = copy.copy(batch)
    clone.items = new
    return clone


def _run(batch: Any) -> Any:
    """Run one joblib batch (a ``BatchedCalls``) on a worker."""
    batch = _map_items(batch, lambda a: a.load() if isinstance(a, _Shared) else a)
    return batch()


def _ship_user_code(batch: Any) -> None:
    """Let workers without the user's project files unpickle its functions."""
    from .codec import ship_user_modules

    for item in getattr(batch, "items", ()):
        if item and callable(item[0]):
            ship_user_modules(item[0])


class CloudloopBackend(AutoBatchingMixin, ParallelBackendBase):
    """A joblib ``ParallelBackendBase`` running batches as cloudloop tasks.

    Args:
        profile: a profile from ``cloudloop.toml`` (else ``$CLOUDLOOP_PROFILE``,
            else local).
        url: a backend URL overriding the profile's (``sqlite:///dir``, ...).
        workers: workers to start; default: ``n_jobs`` (or one per core) on the
            local provider, the profile's ``workers`` elsewhere.
        **options: job and worker options of :class:`cloudloop.Executor`.
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_sharedmem = False
    MIN_IDEAL_BATCH_DURATION = 0.5
    MAX_IDEAL_BATCH_DURATION = 5.0

    def __init__(
        self,
        profile: str | None = None,
        url: str | None = None,
        workers: int | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **options: Any,
    ):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if workers is not None and workers < 0:
            raise ConfigError(f"workers must be >= 0, not {workers}")
        self.profile, self.url, self.workers = profile, url, workers
        self.options = {"name": "joblib", **options}
        self._executor: Executor | None = None
        self._futures: set[Future] = set()
        self._lock = threading.Lock()
        self._shared: dict[int, tuple[Any, _Shared]] = {}  # id(argument) -> (it, its reference)

    def __reduce__(self):  # a nested backend may be pickled; the executor never is
        return (CloudloopBackend, (self.profile, self.url, self.workers))

    # ---------------------------------------------------------------- sizing

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is not None and n_jobs > 0:
            return n_jobs
        total = self._capacity()
        if n_jobs is None:
            return total
        return max(total + 1 + n_jobs, 1)  # -1: all, -2: all but one, ...

    def _capacity(self) -> int:
        """How many tasks can run at once: started workers, else live ones, else cores."""
        if self._executor is not None and self._executor.workers:
            return self._executor.workers
        if self.workers:
            return self.workers
        prof = load_profile(self.profile)
        if prof.workers:
            return prof.workers
        if not provider_for(prof).default_workers():  # `cloudloop up` starts them: count them
            from .backends import open_backend
            from .job import Job

            live = len(Job(open_backend(self.url or prof.backend), "-").workers())
            if live:
                return live
        return os.cpu_count() or 1

    # ---------------------------------------------------------------- lifecycle

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any):
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        if self._executor is None:
            workers = self.workers
            if workers is None:
                prof = load_profile(self.profile)
                if prof.workers is None and provider_for(prof).default_workers():
                    workers = n  # the provider starts workers per client: as many as asked
            self._executor = Executor(
                backend=self.url, workers=workers, profile=self.profile, **self.options
            )
        return n

    def terminate(self) -> None:
        ex, self._executor = self._executor, None
        with self._lock:
            self._futures.clear()
            self._shared.clear()
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)

    def get_nested_backend(self):
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    # ---------------------------------------------------------------- tasks

    def submit(self, func: Any, callback: Any = None) -> Future:
        if self._executor is None:
            raise RuntimeError("the cloudloop joblib backend was used before configure()")
        _ship_user_code(func)
        fut = self._executor.submit(_run, _map_items(func, self._share))
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    def _share(self, value: Any) -> Any:
        """A large argument becomes a reference to one stored copy (same object: same copy)."""
        hit = self._shared.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        if _size(value) < SHARE_BYTES:
            return value
        ex = self._executor
        assert ex is not None, "configure() starts the executor before any submit"
        blob = codec.dumps(value, "a large argument of a joblib call")
        key = keys.shared(ex.session_job().id, codec.digest(blob))
        ex.backend.put_signed(key, blob, if_absent=True)
        ref = self._shared[id(value)] = (value, _Shared(key))
        return ref[1]

    def _forget(self, fut: Future) -> None:
        with self._lock:
            self._futures.discard(fut)

    def retrieve_result_callback(self, out: Future) -> Any:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel what has not run: joblib will not read those results."""
        with self._lock:
            pending = list(self._futures)
        for fut in pending:
            fut.cancel()
        if not ensure_ready:
            self.terminate()


__all__ = ["CloudloopBackend"]
