"""Providers start and stop workers; they never touch the queue or the store.

A provider turns "N workers for backend URL" into running
``cloudloop worker --backend URL`` processes somewhere (this machine, hosts over
SSH, cloud instances). Workers only call out to the backend, so a provider's
only job is to start them and, on request, stop them.
"""

from __future__ import annotations

import abc
from typing import Any

from ..model import WorkerOptions


def worker_argv(worker: WorkerOptions) -> list[str]:
    """``cloudloop worker`` arguments that give a started worker exactly ``worker``.

    The flags are the whole record (``--no-profile``: the worker reads no
    profile of the machine it runs on, which could fill in a field the flags
    leave at its default). The backend URL is not among them: it travels in
    the environment (``CLOUDLOOP_BACKEND``), never on a command line ``ps`` shows.
    """
    return ["worker", "--no-profile", *worker.to_args()]


class WorkerPool(abc.ABC):
    """Workers started by a provider for one client."""

    @abc.abstractmethod
    def stop(self, timeout: float = 10.0) -> None:
        """Stop every worker this pool started (idempotent)."""

    @abc.abstractmethod
    def alive(self) -> int:
        """How many of its workers are still running."""


class Provider(abc.ABC):
    name: str = ""

    def __init__(self, options: dict[str, Any] | None = None, profile: str = ""):
        self.options = dict(options or {})
        self.profile = profile

    @abc.abstractmethod
    def start(self, backend_url: str, n: int, worker: WorkerOptions) -> WorkerPool:
        """Start ``n`` workers serving ``backend_url``."""
