"""One exception tree for everything cloudloop raises itself.

    CloudloopError
     ├── ConfigError            bad URL, profile, option value
     ├── BackendError           the queue or store failed
     │    ├── ConnectionFailed  cannot reach the service
     │    └── LeaseLost         ack/extend with a token someone else now holds
     ├── SerializationError     a function, argument or result cannot be pickled
     │                          (also a pickle.PicklingError and a TypeError)
     ├── UnreadableResult       a result reached the client but cannot be unpickled here
     ├── InitializerFailed      an Executor's initializer raised: the executor is broken
     ├── TamperedError          a signed blob or message failed its HMAC check
     ├── JobNotFound
     ├── JobCancelled
     ├── Preempted              raised by a task to hand itself back after a spot notice
     └── TaskFailure            base of failures that are not the user's own exception
          ├── TaskTimeout       over its wall-clock limit
          ├── MemoryLimitExceeded
          ├── TaskCrashed       its process died (signal, os._exit, OOM kill)
          ├── WorkerLost        the worker running it vanished too many times
          ├── CommandFailed     a command task exited non-zero
          └── CorruptMessage    its queue message could not be verified

A user exception raised inside a task is re-raised on the client with its own
type, and a :class:`RemoteTraceback` as ``__cause__`` (like
``concurrent.futures.process``).

Where ``concurrent.futures`` has a name for the same failure, ours is also
that exception, so code written for ``ProcessPoolExecutor`` keeps catching
it: ``SerializationError`` is a ``pickle.PicklingError``; ``TaskCrashed``,
``WorkerLost`` and ``UnreadableResult`` are ``BrokenProcessPool``s (though
with cloudloop only that one future fails: the executor goes on), and so is
``InitializerFailed`` (which, as in the stdlib, does break the executor).
"""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool


class CloudloopError(Exception):
    """Base of every error cloudloop raises itself."""


class ConfigError(CloudloopError, ValueError):
    """A URL, profile or option is wrong; the message says what to do."""


class BackendError(CloudloopError):
    """The queue or store failed."""


class ConnectionFailed(BackendError):
    """The backend service cannot be reached."""


class LeaseLost(BackendError):
    """An ack or extend used a lease token that is no longer current.

    Another worker may now hold the message; the caller must not assume its
    work was recorded by the ack.
    """


class SerializationError(CloudloopError, TypeError, pickle.PicklingError):
    """A function, argument or result cannot be serialised.

    A ``pickle.PicklingError`` (what ``concurrent.futures`` raises for the
    same mistake) and a ``TypeError`` (what ``pickle`` raises for most of them).
    """


class UnreadableResult(CloudloopError, BrokenProcessPool):
    """A task's result (or the exception it raised) reached the client but cannot
    be unpickled here: its class is missing on this side, or unpickling it
    raised. The error unpickling raised is the ``__cause__``; the task's outcome
    is still in the store (``cl.attach(job).outcomes()``) for a client that can
    read it. ``ProcessPoolExecutor`` raises ``BrokenProcessPool`` in this case,
    hence the base; here only this future fails.
    """


class InitializerFailed(CloudloopError, BrokenProcessPool):
    """The ``initializer`` of an ``Executor`` raised in a worker's task process.

    As with the stdlib's executors, the executor is then broken: its pending
    futures fail with this error and ``submit()`` raises it. The initializer's
    own exception is the ``__cause__`` (on the client: its remote traceback).
    """


class TamperedError(CloudloopError):
    """A message or blob failed its signature check and was not unpickled."""


class JobNotFound(CloudloopError, LookupError):
    """No job with that id exists on the backend."""


class JobCancelled(CloudloopError):
    """The job (or this task) was cancelled."""


class Preempted(CloudloopError):
    """Raise inside a task, after ``cl.checkpoint(state)``, when ``cl.preempted()``
    is True: the task is handed to another machine at once and resumes there
    from its checkpoint. It is not a failure and does not count as a retry."""


class TaskFailure(CloudloopError):
    """A task failed for a reason other than an exception in user code."""


class TaskTimeout(TaskFailure, TimeoutError):
    """A task ran past its wall-clock timeout and its process group was killed."""


class MemoryLimitExceeded(TaskFailure, MemoryError):
    """A task's processes used more memory than its limit and were killed."""


class TaskCrashed(TaskFailure, BrokenProcessPool):
    """The process running a task died (a signal, ``os._exit``, the OOM killer).

    A ``BrokenProcessPool``, as ``ProcessPoolExecutor`` says when a worker dies;
    here the worker lives on and only this task failed.
    """


class WorkerLost(TaskFailure, BrokenProcessPool):
    """The worker running a task vanished too many times; the task is dead-lettered."""


class CommandFailed(TaskFailure):
    """A command task exited with a non-zero status.

    Attributes:
        returncode: the exit status (negative for a signal).
        stderr: the tail of its standard error.
    """

    def __init__(self, message: str, returncode: int = 1, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr

    def __reduce__(self):
        return (type(self), (self.args[0], self.returncode, self.stderr))


class CorruptMessage(TaskFailure):
    """A task's queue message failed verification; the task was not run."""


class RemoteError(CloudloopError):
    """Stands in for a remote exception that could not be pickled back.

    Attributes:
        type_name: the qualified name of the original exception type.
    """

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name

    def __reduce__(self):
        text = self.args[0]
        return (type(self), (self.type_name, text.split(": ", 1)[-1]))


class RemoteTraceback(Exception):
    """Carries a remote traceback's text; set as ``__cause__`` of re-raised errors."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
