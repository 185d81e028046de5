"""What a running task can ask of cloudloop: its seed, checkpoints, progress.

These functions work inside a task on any worker. Outside a task (plain local
code, tests) ``task_seed``/``task_rng`` fall back to fresh entropy, and
``checkpoint``/``restore``/``progress`` are no-ops, so the same function runs
unchanged in a plain for-loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import codec

_M64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derive_seed(job_seed: int, index: int) -> int:
    """The task's 63-bit seed: a mix of the job seed and the task index only,
    so it is the same however tasks are chunked or wherever they run."""
    return _splitmix64(_splitmix64(job_seed & _M64) ^ (index & _M64)) >> 1


@dataclass
class TaskContext:
    """What the runner knows about the running task. It holds no key and no
    store: ``call(op, *args)`` asks the worker to store or fetch on the task's
    behalf (the worker signs, and only under this task's own keys)."""

    job_id: str
    index: int
    attempt: int
    job_seed: int
    call: Callable[..., Any]
    report_progress: Callable[[float, str], None]
    is_preempted: Callable[[], bool] = lambda: False
    checkpointed: bool = False

    @property
    def seed(self) -> int:
        return derive_seed(self.job_seed, self.index)


_current: TaskContext | None = None


def _set(ctx: TaskContext | None) -> None:
    global _current
    _current = ctx


def current() -> TaskContext | None:
    """The running task's context, or None outside a task."""
    return _current


def task_index() -> int | None:
    return _current.index if _current else None


def task_seed() -> int:
    """This task's reproducible seed (fresh entropy outside a task)."""
    return _current.seed if _current else random.SystemRandom().getrandbits(63)


def task_rng():
    """A ``numpy.random.Generator`` seeded with :func:`task_seed`."""
    import numpy as np

    return np.random.default_rng(task_seed())


def checkpoint(state: Any) -> None:
    """Save ``state`` so a later attempt of this task can :func:`restore` it.

    Written to the job's store (signed by the worker), so it survives the
    worker: after a preemption, crash or timeout, the next attempt, on any
    machine, resumes.
    """
    ctx = _current
    if ctx is None:
        return
    ctx.call("checkpoint", codec.dumps(state, "checkpoint state"))
    ctx.checkpointed = True


def restore(default: Any = None) -> Any:
    """The last state saved by :func:`checkpoint` for this task, or ``default``."""
    ctx = _current
    if ctx is None:
        return default
    data = ctx.call("restore")
    return default if data is None else codec.loads(data)


def progress(fraction: float, message: str = "") -> None:
    """Report how far this task is (0..1); shown by ``status`` and the dashboard."""
    ctx = _current
    if ctx is not None:
        ctx.report_progress(max(0.0, min(1.0, float(fraction))), str(message))


def preempted() -> bool:
    """True once this task's machine has been told it will be taken away (spot).

    A long task can poll it between steps: ``cl.checkpoint(state)`` and return
    or raise, and the task resumes from the checkpoint on another machine.
    The worker also waits up to ``preempt_grace`` seconds for the running
    task to finish before it releases its work.
    """
    ctx = _current
    return ctx is not None and ctx.is_preempted()
