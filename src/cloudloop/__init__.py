"""cloudloop: run the for-loop you already have, here, on your machines, or on spot CPUs.

::

    import cloudloop as cl
    results = cl.map(fit, grid, workers=4)
"""

__version__ = "0.1.0"

from .chunks import chunk_lines, chunks, read_chunk
from .context import (
    checkpoint,
    preempted,
    progress,
    restore,
    task_index,
    task_rng,
    task_seed,
)
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
from .executor import Executor, attach, map
from .job import FailedTask, Job
from .model import JobState, JobStatus
from .outputs import OutputFile, output_dir

from . import joblib  # isort: skip  # cloudloop.joblib.register(); see install()

joblib.install()  # backend="cloudloop" once the user imports joblib (joblib is not imported here)

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
