"""Providers start and stop workers; they never touch the queue or the store's jobs.

A provider turns "N workers for backend URL" into running ``cloudloop worker``
processes somewhere (this machine, hosts over SSH, cloud instances). Workers
only call out to the backend, so a provider's job is to start them and, on
request, stop them. It does so in two ways:

* :meth:`Provider.start` gives one client (an :class:`~cloudloop.Executor`)
  a :class:`WorkerPool` of its own, stopped with that client;
* :meth:`Provider.cluster` gives the :class:`Cluster` of a profile: the
  workers ``cloudloop up`` starts, ``ls`` lists and ``down`` stops, from any
  client, long after the one that started them is gone.

Every provider implements ``up``/``down``/``ls`` the same way to the caller;
what only some can do (price their machines, set up an account, follow the
queue by themselves) is an optional capability, listed by
:meth:`Cluster.capabilities`, that the others refuse with :class:`Unsupported`.
The CLI asks for a capability, never for a provider by name.

A cluster's workers carry its name (``CLOUDLOOP_CLUSTER``) into their
heartbeat records (:attr:`~cloudloop.model.WorkerRecord.cluster`): that is how
``ls`` tells a profile's workers from the others on the same backend.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .. import keys
from ..errors import CloudloopError
from ..model import WorkerOptions, WorkerRecord, format_seconds

if TYPE_CHECKING:
    from ..backends import Backend

CLUSTER_ENV = "CLOUDLOOP_CLUSTER"  # the cluster a worker belongs to (into its heartbeat)


def worker_argv(worker: WorkerOptions) -> list[str]:
    """``cloudloop worker`` arguments that give a started worker exactly ``worker``.

    The flags are the whole record (``--no-profile``: the worker reads no
    profile of the machine it runs on, which could fill in a field the flags
    leave at its default). The backend URL is not among them: it travels in
    the environment (``CLOUDLOOP_BACKEND``), never on a command line ``ps`` shows.
    """
    return ["worker", "--no-profile", *worker.to_args()]


class Unsupported(CloudloopError):
    """A cluster capability its provider does not have (the message says which)."""


@dataclass(frozen=True)
class Report:
    """What a cluster command did: lines for the user, and whether it all worked."""

    lines: tuple[str, ...] = ()
    ok: bool = True

    def __str__(self) -> str:
        return "\n".join(self.lines)


class WorkerPool(abc.ABC):
    """Workers started by a provider for one client."""

    @abc.abstractmethod
    def stop(self, timeout: float = 10.0) -> None:
        """Stop every worker this pool started (idempotent)."""

    @abc.abstractmethod
    def alive(self) -> int:
        """How many of its workers are still running."""


class Cluster(abc.ABC):
    """The workers one profile keeps for its backend (``cloudloop up/ls/down``).

    Args:
        name: the cluster's name (a profile's, or what its settings say); its
            workers carry it in their heartbeat records.
        backend_url: the backend its workers serve (opened lazily).
        worker: the options its workers run with.
    """

    provider: ClassVar[str] = ""
    #: the optional methods a provider may implement (see :meth:`capabilities`)
    OPTIONAL: ClassVar[tuple[str, ...]] = ("cost", "job_cost", "init", "follow")

    def __init__(self, name: str, backend_url: str, worker: WorkerOptions):
        self.name, self.url, self.worker = name, backend_url, worker
        self._backend: Any = None  # a provider may hold a narrower kind (AwsBackend)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            from ..backends import open_backend

            self._backend = open_backend(self.url)
        backend: Backend = self._backend
        return backend

    # ------------------------------------------------------------ every provider

    @abc.abstractmethod
    def up(self, n: int | None = None) -> Report:
        """Start ``n`` workers now (None: as many as the provider thinks right);
        ``ok`` is False if none could start. Starting twice does not lose the first."""

    @abc.abstractmethod
    def down(self, purge: bool = False) -> Report:
        """Stop every worker (and machine) this cluster started, from any client;
        with ``purge`` also what the provider made to hold the backend. Idempotent."""

    def workers(self, others: bool = False) -> list[WorkerRecord]:
        """Heartbeat records of this cluster's live workers (verified, newest listing);
        with ``others``, those of the backend's other live workers instead (a client's
        own, another profile's, ones started by hand or by a batch system)."""
        return self._live_workers()[1 if others else 0]

    def _live_workers(self) -> tuple[list[WorkerRecord], list[WorkerRecord]]:
        """(this cluster's, the others'): live heartbeat records, from one listing."""
        from ..heartbeat import worker_records

        mine: list[WorkerRecord] = []
        others: list[WorkerRecord] = []
        for r in worker_records(self.backend):
            if r.live():
                (mine if r.cluster == self.name else others).append(r)
        return mine, others

    def _paused_note(self) -> tuple[str, ...]:
        """A line for ``up`` when the backend is paused (its workers take nothing yet)."""
        if not self.paused():
            return ()
        return ("the backend is paused: these workers take no tasks until `cloudloop resume`",)

    def ls(self) -> Report:
        """One line per live worker, then a summary (providers with machines add theirs)."""
        now = time.time()
        rows, other_rows = self._live_workers()  # one listing (a billed LIST on S3)
        lines = [_worker_line(w, now) for w in rows]
        summary = f"{len(rows)} worker(s) in cluster {self.name!r} ({self.provider})"
        others = len(other_rows)
        if others:
            summary += f"; {others} other worker(s) serve its backend"
        lines.append(summary)
        return Report(tuple(lines))

    def cleanup(self, purge: bool = False) -> Report:
        """Remove everything this cluster created (``down``, where it made nothing else)."""
        return self.down(purge=purge)

    # -------------------------------------------------------- backend-wide flag

    def paused(self) -> bool:
        from ..jobdata import paused

        return paused(self.backend)

    def pause(self) -> Report:
        """Every worker of the backend takes no new task and leaves when idle; a
        provider that scales starts no machines (its report says what it changed). The
        flag is the backend's, so it holds for workers of every cluster and of none."""
        self.backend.put_record(keys.PAUSED, {"at": time.time()})
        return Report()

    def resume(self) -> Report:
        self.backend.store.delete(keys.PAUSED)
        return Report()

    # ------------------------------------------------------ optional capabilities

    def capabilities(self) -> frozenset[str]:
        """The optional methods this provider implements (the rest raise Unsupported)."""
        mine = type(self)
        return frozenset(n for n in self.OPTIONAL if getattr(mine, n) is not getattr(Cluster, n))

    def _unsupported(self, what: str) -> Unsupported:
        return Unsupported(f"cluster {self.name!r} ({self.provider} provider) cannot {what}")

    def cost(self) -> tuple[float, float]:
        """(USD spent so far, USD per hour now)."""
        raise self._unsupported("say what it costs (its machines are not billed by cloudloop)")

    def job_cost(self, created: float, finished: float | None, eta: float | None) -> str:
        """One line for ``cloudloop status``: what the cluster cost while a job ran."""
        raise self._unsupported("say what a job cost")

    def init(self) -> Report:
        """Create what the cluster needs in an account before ``up`` (idempotent)."""
        raise self._unsupported("be set up in a cloud account (there is nothing to set up)")

    def follow(self, every: float, until_idle: bool, say: Callable[[str], None]) -> int:
        """Keep as many workers as the queue needs until stopped (or, with
        ``until_idle``, until the queue is empty and nothing runs); the exit status."""
        raise self._unsupported("follow the queue (start workers with `cloudloop up -n N`)")


def _worker_line(w: WorkerRecord, now: float) -> str:
    seen = format_seconds(max(0.0, now - w.last_seen))
    where = f"{w.host}:{w.pid}" if w.pid else w.host
    return f"{w.id:32s} {where:24s} {w.state or '?':9s} tasks {w.tasks_done:6d}  seen {seen} ago"


class Provider(abc.ABC):
    """A way of starting workers, with a profile's options (checked at construction)."""

    name: ClassVar[str] = ""

    def __init__(self, options: dict[str, Any] | None = None, profile: str = ""):
        self.options = dict(options or {})
        self.profile = profile

    def default_workers(self) -> int:
        """Workers an Executor starts for itself when neither it nor its profile says
        (0: the provider's workers are started with ``cloudloop up``)."""
        return 0

    @abc.abstractmethod
    def start(self, backend_url: str, n: int, worker: WorkerOptions) -> WorkerPool:
        """Start ``n`` workers serving ``backend_url`` for this client."""

    @abc.abstractmethod
    def cluster(self, backend_url: str, worker: WorkerOptions) -> Cluster:
        """The profile's cluster on ``backend_url``."""
