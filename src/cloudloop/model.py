"""Plain records passed between the client, the worker and the task runner.

None of them holds a connection or does I/O; they are what flows through the
queue and the store, after :mod:`cloudloop.codec` has turned them into bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Lease:
    """A message held by one worker until ``ack``, ``release`` or expiry.

    Attributes:
        id: the message id (stable across deliveries).
        token: proof of this delivery (stale after the lease expires and the
            message is leased again).
        body: the message bytes, as put.
        attempt: how many times the message has been delivered, this one included.
    """

    id: str
    token: str
    body: bytes
    attempt: int


@dataclass(frozen=True)
class QueueStats:
    """Approximate message counts."""

    visible: int
    leased: int

    @property
    def total(self) -> int:
        return self.visible + self.leased


@dataclass(frozen=True)
class JobOptions:
    """What a job asks of every task.

    Attributes:
        retries: re-runs allowed after a task raises or crashes (user errors).
        timeout: per-task wall-clock limit in seconds (None: no limit).
        memory: per-task memory limit in bytes, all its processes together.
        seed: job seed; each task's seed stream derives from it and the task index.
        chunksize: tasks per queue message (None: chosen from the job size).
        name: a label shown by ``status``.
        max_deliveries: times a task may take its worker down with it before
            it is dead-lettered (lost workers do not count against ``retries``).
        env: extra environment variables for tasks.
        seed_globals: also seed ``random`` and ``numpy.random``'s global
            generators with each task's seed, so code that uses them directly
            is reproducible too (costs ~5 us per task, ~20 us with numpy).
    """

    retries: int = 0
    timeout: float | None = None
    memory: int | None = None
    seed: int | None = None
    chunksize: int | None = None
    name: str | None = None
    max_deliveries: int = 3
    env: dict[str, str] = field(default_factory=dict)
    seed_globals: bool = False

    def replace(self, **changes: Any) -> JobOptions:
        return dataclasses.replace(self, **changes)


JOB_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(JobOptions))


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker behaves (set per worker, not per job).

    Attributes:
        lease: seconds a leased chunk stays invisible; extended every third of it.
        idle_exit: exit after this many idle seconds (None: never).
        heartbeat: seconds between heartbeat records in the store (None: the
            backend's default, 5 s on SQLite and Redis, 30 s on AWS, where
            every record is a billed request).
        flush: seconds between result flushes while a chunk runs.
        split_after: a chunk still running after this many seconds hands its
            unstarted tail back to the queue so idle workers can take it.
        exit_when_orphaned: exit when idle and the process that started us is gone.
        metadata_url: instance metadata to watch for spot interruption notices
            (None: do not watch; EC2 workers use http://169.254.169.254).
        preempt_grace: after a notice, how long the running task may go on
            before its work is released to another machine.
        stop_at: unix time at which the worker leaves as if preempted (how
            an EC2 cluster keeps within its max_cost).
    """

    lease: float = 30.0
    idle_exit: float | None = None
    heartbeat: float | None = None
    flush: float = 0.5
    split_after: float = 2.0
    exit_when_orphaned: bool = False
    metadata_url: str | None = None
    preempt_grace: float = 60.0
    stop_at: float | None = None

    def replace(self, **changes: Any) -> WorkerOptions:
        return dataclasses.replace(self, **changes)


WORKER_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(WorkerOptions))


@dataclass(frozen=True)
class JobManifest:
    """Everything a worker needs to know about a job, stored once at submit."""

    id: str
    name: str
    kind: str  # "python" | "command"
    created: float
    options: JobOptions
    seed: int
    client: str  # host:pid of the submitting client
    version: str
    command: str | None = None  # command template for kind == "command"
    files: tuple[str, ...] = ()  # names of files shipped to each task's directory
    session: bool = False  # an Executor's submit() job: tasks may be cancelled one by one

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobManifest:
        data = dict(data)
        data["options"] = JobOptions(**data["options"])
        data["files"] = tuple(data.get("files", ()))
        return cls(**data)


@dataclass
class ErrorInfo:
    """A failure as stored: enough to re-raise it on the client.

    Attributes:
        type_name: qualified name of the exception type.
        message: ``str(exc)``.
        traceback: the remote traceback text.
        exc: the pickled exception (None if it could not be pickled).
    """

    type_name: str
    message: str
    traceback: str
    exc: bytes | None = None


@dataclass(slots=True)
class Outcome:
    """The final result of one task, as read back from the store.

    ``value`` holds the pickled return value (opaque to the worker); ``error``
    is set instead when the task failed. In the store an outcome is the row
    ``(index, attempt, value, error, started, ended, cancelled)``; worker and
    host are stored once per result part.
    """

    index: int
    attempt: int
    value: bytes | None = None
    error: ErrorInfo | None = None
    started: float = 0.0
    ended: float = 0.0
    worker: str = ""
    host: str = ""
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


class JobState(str, enum.Enum):
    SUBMITTING = "submitting"  # client still putting tasks
    QUEUED = "queued"  # nothing finished or running yet
    RUNNING = "running"
    COMPLETED = "completed"  # every task has a result, none failed
    FAILED = "failed"  # every task has a result, some failed
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job's progress, read from the store."""

    id: str
    name: str
    state: JobState
    total: int | None
    done: int
    failed: int
    running: int
    workers: int
    created: float
    elapsed: float
    rate: float  # tasks per second over the job so far
    eta: float | None  # seconds

    @property
    def pending(self) -> int | None:
        return None if self.total is None else max(0, self.total - self.done - self.running)

    def __str__(self) -> str:
        total = "?" if self.total is None else str(self.total)
        eta = "" if self.eta is None else f", eta {format_seconds(self.eta)}"
        return (
            f"{self.id} [{self.state.value}] {self.name}: {self.done}/{total} done, "
            f"{self.failed} failed, {self.running} running on {self.workers} workers, "
            f"{format_seconds(self.elapsed)} elapsed{eta}"
        )


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def now() -> float:
    return time.time()
