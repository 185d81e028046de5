"""cloudloop: run the for-loop you already have, here, on your machines, or on spot CPUs.

::

    import cloudloop as cl
    results = cl.map(fit, grid, workers=4)

The public names are imported when first used (PEP 562), so a worker or a
task runner, which imports only a few modules of the package, does not pay
for the executor, the configuration or the job API at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# chunks is both a module and a function: import the module now so that the
# function, bound below, is what ``cloudloop.chunks`` names (as before)
from .chunks import chunk_lines, chunk_rows, chunks, read_chunk
from .errors import (
    CloudloopError,
    CommandFailed,
    ConfigError,
    CorruptMessage,
    InitializerFailed,
    JobCancelled,
    JobNotFound,
    LeaseLost,
    MemoryLimitExceeded,
    Preempted,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TamperedError,
    TaskCrashed,
    TaskFailure,
    TaskTimeout,
    UnreadableResult,
    WorkerLost,
)

from . import joblib  # isort: skip  # cloudloop.joblib.register(); see install()

joblib.install()  # backend="cloudloop" once the user imports joblib (joblib is not imported here)

if TYPE_CHECKING:
    from .context import (
        checkpoint,
        preempted,
        progress,
        restore,
        task_index,
        task_rng,
        task_seed,
    )
    from .executor import Executor, attach, map
    from .job import FailedTask, Job
    from .model import JobState, JobStatus
    from .outputs import OutputFile, output_dir

_LAZY = {  # public name -> the submodule that defines it
    **dict.fromkeys(
        ["checkpoint", "preempted", "progress", "restore", "task_index", "task_rng", "task_seed"],
        "context",
    ),
    **dict.fromkeys(["Executor", "attach", "map"], "executor"),
    **dict.fromkeys(["FailedTask", "Job"], "job"),
    **dict.fromkeys(["JobState", "JobStatus"], "model"),
    **dict.fromkeys(["OutputFile", "output_dir"], "outputs"),
}


def __getattr__(name: str) -> Any:
    """Import a public name, or a submodule, on first use."""
    where = _LAZY.get(name)
    if where is not None:
        value = getattr(importlib.import_module(f".{where}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        # ``cloudloop.codec`` and the like worked after a bare ``import cloudloop``
        # when the package imported them eagerly; they still do
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "CloudloopError",
    "CommandFailed",
    "ConfigError",
    "CorruptMessage",
    "Executor",
    "FailedTask",
    "InitializerFailed",
    "Job",
    "JobCancelled",
    "JobNotFound",
    "JobState",
    "JobStatus",
    "LeaseLost",
    "MemoryLimitExceeded",
    "OutputFile",
    "Preempted",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "TamperedError",
    "TaskCrashed",
    "TaskFailure",
    "TaskTimeout",
    "UnreadableResult",
    "WorkerLost",
    "__version__",
    "attach",
    "checkpoint",
    "chunk_lines",
    "chunk_rows",
    "chunks",
    "joblib",
    "map",
    "output_dir",
    "preempted",
    "progress",
    "read_chunk",
    "restore",
    "task_index",
    "task_rng",
    "task_seed",
]
