"""Plain records passed between the client, the worker and the task runner.

None of them holds a connection or does I/O; they are what flows through the
queue and the store, after :mod:`cloudloop.codec` has turned them into bytes:

* options: :class:`JobOptions`, :class:`WorkerOptions` (which is also the one
  translation to and from ``cloudloop worker`` flags);
* a job: :class:`JobManifest`, and the runner's view of it, :class:`RunnerJob`;
* a queue message: :class:`MessageHeader`; what a forged one claims:
  :class:`ClaimedHeader`;
* a task's result: :class:`OutcomeRow` on the wire, :class:`Outcome` as read;
* a worker: :class:`WorkerRecord` (its heartbeat);
* markers beside a job: :class:`Sealed`, :class:`Cancelled`, :class:`Finished`,
  :class:`SetAside` (a worker that lacks what the job requires), and beside a
  dead letter, :class:`DeadLetterReason`.

Whatever comes from another machine has one decode that checks every field
(``from_dict``, or :func:`cloudloop.codec.unpack_rows` for rows) and raises
ValueError naming the first wrong one; nothing else reads those dicts. (The
ec2 provider's bill record, :class:`cloudloop.providers.prices.LedgerRecord`,
lives beside its only writer.)
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, TypeGuard, TypeVar

from . import keys

PYTHON = "{}.{}".format(*sys.version_info[:2])  # this interpreter's minor version


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
        cache: take each task's result from the backend's cache when a task
            with the same function, arguments and seed ran before (any job, any
            client), and store new ones there (:mod:`cloudloop.cache`); ``"all"``
            also serves failures. With no ``seed``, a cached job's seed is 0, so
            that runs agree.
        cache_version: any text the user changes to make every cached result
            of the function miss (part of each key).
        retry_memory: a task killed for memory is retried (once per retry
            allowed) with its memory limit multiplied by this, by a worker that
            has that much memory free (None: retried like any crash).
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
    cache: bool | str = False
    cache_version: str | None = None
    retry_memory: float | None = None

    def replace(self, **changes: Any) -> JobOptions:
        return dataclasses.replace(self, **changes)

    def retry_after(self, attempt: int) -> bool:
        return retry_after(self.retries, attempt)


def retry_after(retries: int, attempt: int) -> bool:
    """Whether a task whose ``attempt`` failed (raised, or crashed its process) runs
    again: the one rule, for user errors in the runner and crashes in the worker."""
    return attempt <= retries


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
        split_after: a chunk still running after this many seconds hands its
            unstarted tail back to the queue so idle workers can take it.
        exit_when_orphaned: exit when idle and the process that started us is gone.
        metadata_url: instance metadata to watch for spot interruption notices
            (None: do not watch; EC2 workers use http://169.254.169.254).
        preempt_grace: after a notice, how long the running task may go on
            before its work is released to another machine.
        stop_at: unix time at which the worker leaves as if preempted (how
            an EC2 cluster keeps within its max_cost).
        worker_memory: bytes of memory this worker offers its tasks (None: the
            machine's); a task that needs more (a ``retry_memory`` retry) is
            left to a worker that offers enough.

    How often a worker stores the results of a running chunk is the backend's
    to say (``Backend.flush_interval``: every store write is a billed request
    on S3), not a worker option.

    A provider hands these to the workers it starts as ``cloudloop worker``
    flags: :meth:`to_args` writes them and :meth:`from_args` reads them back,
    the one translation between the record and a command line.
    """

    lease: float = 30.0
    idle_exit: float | None = None
    heartbeat: float | None = None
    split_after: float = 2.0
    exit_when_orphaned: bool = False
    metadata_url: str | None = None
    preempt_grace: float = 60.0
    stop_at: float | None = None
    worker_memory: int | None = None

    def replace(self, **changes: Any) -> WorkerOptions:
        return dataclasses.replace(self, **changes)

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of the field ``name`` (``split_after``: ``--split-after``)."""
        return "--" + name.replace("_", "-")

    def to_args(self) -> list[str]:
        """``cloudloop worker`` flags for every field that differs from its default.

        Numbers are written exactly (seconds, unix times), so
        ``WorkerOptions.from_args(o.to_args()) == o`` for every record.
        """
        out: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if value is True and f.default is False:
                out.append(self.flag(f.name))
            elif value is None or isinstance(value, bool):
                # a flag cannot say "unset" or "off": those are the defaults
                raise ValueError(f"worker option {f.name}={value!r} has no command-line form")
            elif isinstance(value, float):
                from decimal import Decimal  # here: only a provider starting workers writes flags

                # positional, never '1e-05' (a duration's syntax has no exponent)
                text = str(int(value)) if value.is_integer() else f"{Decimal(repr(value)):f}"
                out += [self.flag(f.name), text]
            else:
                out += [self.flag(f.name), str(value)]
        return out

    @classmethod
    def from_args(
        cls, argv: list[str] | tuple[str, ...], base: WorkerOptions | None = None
    ) -> WorkerOptions:
        """The record ``argv`` describes, over ``base`` (default: every field's default).

        ``argv`` holds flags as :meth:`to_args` writes them, or as a person
        types them (``--lease 30s``, ``--idle-exit=2m``); a flag given twice
        counts once, the last time.

        Raises:
            ConfigError: a flag that is no field, a missing value, or a value
                the field cannot take (checked as a profile's values are).
        """
        from .config import worker_options  # the value checks build on these records
        from .errors import ConfigError

        fields = {cls.flag(f.name): f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        args = iter(argv)
        for arg in args:
            flag, eq, text = arg.partition("=")
            f = fields.get(flag)
            if f is None:
                known = ", ".join(sorted(fields))
                raise ConfigError(f"{arg!r} is not a worker option; known: {known}")
            if f.default is False:  # a switch
                if eq:
                    raise ConfigError(f"{flag} takes no value")
                values[f.name] = True
                continue
            if not eq:
                given = next(args, None)
                if given is None or given.startswith("--"):
                    raise ConfigError(f"{flag} needs a value")
                text = given
            values[f.name] = cls._number(text) if f.name == "stop_at" else text
        return worker_options(base, **values)

    @staticmethod
    def _number(text: str) -> float | str:
        """A unix time's text as a number (text that is none stays, for the check to name)."""
        try:
            return float(text)
        except ValueError:
            return text


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
    # the Python minor version ("3.11") its pickles need ("": any, as for command jobs)
    python: str = ""
    # distributions its function imports, as the client has them ("scikit-learn==1.5.2"):
    # a worker that lacks one, or has another version, leaves the job alone
    requires: tuple[str, ...] = ()
    # a command job whose command serves many rows in one process (line protocol on
    # its stdin/stdout: see cloudloop.commands.Server)
    serve: bool = False
    # with the cache option: the key of what the tasks compute, apart from their
    # arguments (the function's code, or the command and its files; cloudloop.cachekey)
    cache_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobManifest:
        data = dict(data)
        data["options"] = JobOptions(**data["options"])
        data["files"] = tuple(data.get("files", ()))
        data["requires"] = check_pins(data.get("requires", ()), "a job manifest")
        key = data.get("cache_key", "")
        if not isinstance(key, str) or (key and not _CACHE_KEY.fullmatch(key)):
            raise ValueError("a job manifest: cache_key is not a cache key")
        return cls(**data)


MAX_PINS = 256  # pins one job may record
_PIN_LEN = 200
# name==version, as an installed distribution spells them (PEP 508 name, PEP 440 version)
_PIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?==[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}")


def check_pins(value: Any, what: str, name: str = "requires") -> tuple[str, ...]:
    """``value`` (the field ``name`` of ``what``) as pins: ``name==version``, at most
    :data:`MAX_PINS` of at most 200 characters each; else ValueError naming the first
    wrong one."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what}: {name} must be a list of name==version pins, "
                         f"not {type(value).__name__}")  # fmt: skip
    if len(value) > MAX_PINS:
        raise ValueError(f"{what}: {name} holds {len(value)} pins, at most {MAX_PINS}")
    for pin in value:
        if not isinstance(pin, str):
            raise ValueError(f"{what}: a pin is {type(pin).__name__}, not text")
        if len(pin) > _PIN_LEN:
            raise ValueError(f"{what}: pin {pin[:40]!r}... is longer than {_PIN_LEN} characters")
        if not _PIN.fullmatch(pin):
            raise ValueError(f"{what}: {pin!r} is not a name==version pin")
    return tuple(value)


def _count(x: Any) -> TypeGuard[int]:
    """A whole number >= 0 (not a bool)."""
    return type(x) is int and x >= 0


MAX_MESSAGE_TASKS = 10_000_000  # tasks one queue message may name (a chunk)
_REF = re.compile(r"^[0-9a-f]{1,64}$")
_CACHE_KEY = re.compile(r"[0-9a-f]{32}")
_JOB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class MessageHeader:
    """The JSON header of a task message: which job, which tasks, where their input is.

    ``runs`` lists the message's tasks as inclusive ranges; ``lo`` is the index
    of the payload's first task (its tasks are ``lo .. hi`` in order), so a
    message split off a chunk names a subset of the payload it points to.
    """

    job: str
    chunk: int
    lo: int
    hi: int
    runs: tuple[tuple[int, int], ...]
    fns: tuple[str, ...] = ()
    nested: bool = False
    spill: str | None = None
    # (old, new) function references: a retry with a fixed function runs ``new``
    # wherever the payload's tasks name ``old`` (Job.retry)
    swap: tuple[tuple[str, str], ...] = ()
    # a retry after the tasks were killed for memory (retry_memory): their limit
    # now, and the attempt they are on
    memory: int | None = None
    attempt: int = 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": 1,
            "job": self.job,
            "chunk": self.chunk,
            "lo": self.lo,
            "hi": self.hi,
            "runs": [list(r) for r in self.runs],
            "fns": list(self.fns),
            "nested": self.nested,
        }
        if self.spill is not None:
            out["spill"] = self.spill
        if self.swap:
            out["swap"] = [list(p) for p in self.swap]
        if self.memory is not None:
            out["memory"] = self.memory
        if self.attempt != 1:
            out["attempt"] = self.attempt
        return out

    @classmethod
    def from_dict(cls, d: Any) -> MessageHeader:
        """Check every field (ValueError naming the first wrong one)."""
        if not isinstance(d, dict) or d.get("v") != 1:
            raise ValueError("not a version-1 message header")
        job, chunk, lo, hi = d.get("job"), d.get("chunk"), d.get("lo"), d.get("hi")
        if not isinstance(job, str) or not _JOB.match(job):
            raise ValueError(f"job id {str(job)[:80]!r} is not valid")
        if not (_count(chunk) and _count(lo) and _count(hi)) or hi < lo:
            raise ValueError("chunk, lo and hi must be whole numbers with lo <= hi")
        if hi - lo >= MAX_MESSAGE_TASKS:
            raise ValueError(f"a message names at most {MAX_MESSAGE_TASKS} tasks")
        raw = d.get("runs")
        if not isinstance(raw, list) or not 0 < len(raw) <= 100_000:
            raise ValueError("runs must be a list of [first, last] ranges")
        runs = []
        for r in raw:
            if not (isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)):
                raise ValueError("runs must be a list of [first, last] ranges")
            if not lo <= r[0] <= r[1] <= hi:
                raise ValueError(f"run {r} lies outside the message's tasks {lo}..{hi}")
            runs.append((r[0], r[1]))
        fns = d.get("fns", [])
        if not isinstance(fns, list) or len(fns) > 10_000:
            raise ValueError("fns must be a list of function references")
        if not all(isinstance(f, str) and _REF.match(f) for f in fns):
            raise ValueError("a function reference is not valid")
        nested, spill = d.get("nested", False), d.get("spill")
        if not isinstance(nested, bool):
            raise ValueError("nested must be true or false")
        if spill is not None and (
            not isinstance(spill, str) or not spill.startswith(keys.inputs_prefix(job))
        ):
            raise ValueError("spill must name an input of the message's own job")
        swap = d.get("swap", [])
        if not isinstance(swap, list) or len(swap) > 10_000:
            raise ValueError("swap must be a list of [old, new] function references")
        for pair in swap:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError("swap must be a list of [old, new] function references")
            if not all(isinstance(f, str) and _REF.match(f) for f in pair) or pair[1] not in fns:
                raise ValueError("a swapped function reference is not valid")
        pairs = tuple((a, b) for a, b in swap)
        memory, attempt = d.get("memory"), d.get("attempt", 1)
        if memory is not None and not (_count(memory) and memory > 0):
            raise ValueError("memory must be a whole number of bytes")
        if not (_count(attempt) and 1 <= attempt <= 1000):
            raise ValueError("attempt must be a whole number from 1 to 1000")
        return cls(
            job, chunk, lo, hi, tuple(runs), tuple(fns), nested, spill, pairs, memory, attempt
        )

    def tasks(self) -> list[int]:
        return [i for a, b in self.runs for i in range(a, b + 1)]


def runs_of(indices: list[int]) -> tuple[tuple[int, int], ...]:
    """Ascending task indices as inclusive (first, last) runs, as a header names them."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return tuple((a, b) for a, b in out)


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

    def to_wire(self) -> tuple[str, str, str, bytes | None]:
        """As plain data, for an outcome row."""
        return (self.type_name, self.message, self.traceback, self.exc)


ErrorWire = tuple[
    str, str, str, "bytes | None"
]  # ErrorInfo as plain data: type, message, tb, pickle


class OutcomeRow(NamedTuple):
    """One task's outcome as it travels: task runner → worker → result part.

    On the wire it is a plain tuple (:func:`cloudloop.codec.pack_rows`), so a
    worker can read its runner's rows without unpickling anything but data;
    in Python it is this record. A part stores worker and host once, not per
    row; :class:`Outcome` is the row as a reader sees it, with those added.
    """

    index: int  # type: ignore[assignment]  # the task's index (shadows tuple.index; never called)
    attempt: int
    value: bytes | None  # the pickled return value (None if it failed or was cancelled)
    error: ErrorWire | None  # why it failed
    started: float
    ended: float
    cancelled: bool = False

    @classmethod
    def failure(cls, index: int, attempt: int, error: ErrorInfo, started: float) -> OutcomeRow:
        return cls(index, attempt, None, error.to_wire(), started, time.time())

    @classmethod
    def cancellation(cls, index: int, attempt: int = 0) -> OutcomeRow:
        return cls(index, attempt, None, None, 0.0, 0.0, True)


@dataclass(frozen=True)
class RunnerJob:
    """What the task runner is told about the job whose tasks it runs (no key,
    no store: see :mod:`cloudloop.runner`)."""

    id: str
    seed: int
    kind: str
    command: str | None
    retries: int
    seed_globals: bool
    env: dict[str, str]
    workroot: str  # where the tasks' working and output directories go
    files: dict[str, str]  # shipped file name -> its path on this machine
    serve: bool = False  # one process serves many rows (JobManifest.serve)

    def retry_after(self, attempt: int) -> bool:
        return retry_after(self.retries, attempt)

    @classmethod
    def of(cls, m: JobManifest, workroot: str, files: dict[str, str]) -> RunnerJob:
        o = m.options
        return cls(
            m.id,
            m.seed,
            m.kind,
            m.command,
            o.retries,
            o.seed_globals,
            dict(o.env),
            workroot,
            files,
            m.serve,
        )


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


# ---------------------------------------------------------------- job markers
#
# Small signed records a client writes beside a job (keys.sealed, .cancelled,
# .finished) and a worker beside a dead-lettered message. They are read by
# other machines, so each is decoded by :func:`_marker` (one check of every
# field's type; an extra field, written by a newer cloudloop, is ignored).


def finite(v: int | float) -> bool:
    """A finite number that is a float too (JSON may hold an int of 400 digits)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _marker(cls: Any, data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{what} is not a JSON object")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind, has_default = str(f.type), f.default is not dataclasses.MISSING
        if f.name not in data or data[f.name] is None:  # null: as if not written
            if not has_default:
                raise ValueError(f"{what} has no {f.name!r}")
            continue
        v = data[f.name]
        if kind.startswith("bool"):
            ok = type(v) is bool
        elif kind.startswith("int"):
            ok = type(v) is int and v >= 0
        elif kind.startswith("float"):
            ok = type(v) in (int, float) and finite(v) and v >= 0
            v = float(v) if ok else v
        elif kind.startswith("tuple"):  # of text
            ok = isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)
            v = tuple(x[:2000] for x in v) if ok else v
        else:
            ok = isinstance(v, str)
            v = v[:2000] if ok else v
        if not ok:
            raise ValueError(f"{what}: field {f.name!r} is {type(v).__name__}, not {kind}")
        out[f.name] = v
    return cls(**out)


_M = TypeVar("_M", bound="_Marker")


class _Marker:
    """A job marker: decoded by :func:`_marker`, named in its errors by ``WHAT``."""

    WHAT: ClassVar[str] = "a record"

    @classmethod
    def from_dict(cls: type[_M], data: Any) -> _M:
        out: _M = _marker(cls, data, cls.WHAT)
        out.check()
        return out

    def check(self) -> None:
        """What a record's fields must say beyond their types (ValueError if not)."""


@dataclass(frozen=True)
class Sealed(_Marker):
    """``jobs/<job>/sealed``: submission finished with ``tasks`` tasks in ``chunks`` messages."""

    WHAT: ClassVar[str] = "a sealed record"

    tasks: int
    chunks: int = 0
    at: float = 0.0


@dataclass(frozen=True)
class Cancelled(_Marker):
    """``jobs/<job>/cancelled``: the job was cancelled (``running``: running tasks too;
    ``discarded``: its client gave up on it before it was sealed)."""

    WHAT: ClassVar[str] = "a cancel record"

    at: float = 0.0
    running: bool = True
    discarded: bool = False


@dataclass(frozen=True)
class Finished(_Marker):
    """``jobs/<job>/finished``: when the job finished, as its first observer saw it."""

    WHAT: ClassVar[str] = "a finished record"

    at: float


@dataclass(frozen=True)
class DeadLetterReason(_Marker):
    """``deadletter/<name>.why``: why a worker set a message aside."""

    WHAT: ClassVar[str] = "a dead-letter reason"

    why: str
    at: float = 0.0
    worker: str = ""


@dataclass(frozen=True)
class SetAside(_Marker):
    """``jobs/<job>/aside/<worker>``: a worker leaves the job's tasks alone because it
    lacks ``needs`` (pins of the job's ``requires``); ``have`` is its version of each,
    in the same order ("": it has none). Written once per job by each such worker."""

    WHAT: ClassVar[str] = "a set-aside record"

    worker: str
    needs: tuple[str, ...]
    have: tuple[str, ...]
    at: float = 0.0

    def check(self) -> None:
        check_pins(self.needs, self.WHAT, "needs")
        if len(self.have) != len(self.needs):
            raise ValueError(f"{self.WHAT}: have names {len(self.have)} versions for "
                             f"{len(self.needs)} pins")  # fmt: skip
        for v in self.have:
            if v and not _VERSION.fullmatch(v):
                raise ValueError(f"{self.WHAT}: {v[:40]!r} is not a version")


@dataclass(frozen=True)
class ClaimedHeader:
    """What a message that failed verification claims to be: never believed or
    acted on, only reported (:func:`cloudloop.codec.peek_header`)."""

    job: str = "?"
    runs: tuple[tuple[int, int], ...] = ()  # empty: it claims none that can be shown

    @classmethod
    def from_dict(cls, data: Any) -> ClaimedHeader:
        if not isinstance(data, dict):
            return cls()
        job = data.get("job")
        raw = data.get("runs")
        pairs = raw[:20] if isinstance(raw, list) else []
        runs = tuple(
            (r[0], r[1])
            for r in pairs
            if isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)
        )
        if len(runs) != len(pairs):
            runs = ()
        return cls(job[:80] if isinstance(job, str) else "?", runs)


_FRESH = 30.0  # a worker whose last heartbeat is older than this (or 3 periods) has left


@dataclass(frozen=True)
class WorkerRecord:
    """A worker's heartbeat record (``workers/<id>``), as every reader sees it.

    Records come from other machines, so :meth:`from_dict` checks every field:
    a wrong type is a ValueError, strings are cut to a bounded length and lose
    their control characters, and numbers must be finite. Only what passed
    goes on to a page or a terminal.
    """

    id: str
    host: str = ""
    pid: int = 0
    provider: str = ""
    version: str = ""
    backend: str = ""
    started: float = 0.0
    last_seen: float = 0.0
    every: float = 0.0
    state: str = ""
    job: str | None = None  # the job it is on (kept between its chunks until idle)
    busy_since: float | None = None  # when it started on that job
    task: int | None = None
    progress: float | None = None
    message: str = ""
    tasks_done: int = 0
    failures: int = 0
    rss: int = 0
    load: float | None = None
    instance: str | None = None
    instance_type: str | None = None
    market: str | None = None
    error: str | None = None  # the worker's current trouble, in words (a failing store)
    python: str = ""  # the Python minor version it runs tasks with ("3.11")
    cluster: str | None = None  # the cluster (`cloudloop up`) that started it, if one did
    memory: int = 0  # bytes it offers its tasks (its worker_memory, or the machine's)

    @classmethod
    def from_dict(cls, data: Any) -> WorkerRecord:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ValueError("a worker record is a JSON object with a string 'id'")
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data or data[f.name] is None:
                continue
            out[f.name] = _field_value(f.name, str(f.type), data[f.name])
        return cls(**out)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def live(self, now: float | None = None) -> bool:
        """Seen recently (three heartbeat periods, at least 30 s)."""
        age = (now or time.time()) - self.last_seen
        return age < max(_FRESH, 3 * self.every)


_TEXT_MAX = {"message": 400, "error": 1000}
# control characters (ANSI escapes, newlines, NUL) become "?": a record is printed by
# `cloudloop status` and `ls`, where an escape sequence would drive the user's terminal
_CONTROL = {c: "?" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def _field_value(name: str, kind: str, value: Any) -> Any:
    if "str" in kind:
        if not isinstance(value, str):
            raise ValueError(f"worker record field {name!r} must be text")
        return value[: _TEXT_MAX.get(name, 200)].translate(_CONTROL)
    if "int" in kind:
        if type(value) is not int or not -(2**63) <= value < 2**63:
            raise ValueError(f"worker record field {name!r} must be a whole number")
        return value
    if type(value) not in (int, float) or not finite(value):
        raise ValueError(f"worker record field {name!r} must be a finite number")
    return float(value)


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
    problems: tuple[str, ...] = ()  # what workers say is going wrong, in words
    cached: int = 0  # tasks whose result was taken from the cache (counted in done)

    @property
    def succeeded(self) -> int:
        """Tasks finished without failing (``done`` counts every finished task)."""
        return max(0, self.done - self.failed)

    @property
    def pending(self) -> int | None:
        return None if self.total is None else max(0, self.total - self.done - self.running)

    def counts(self) -> str:
        """The finished tasks, unambiguous: "26 ok · 4 failed of 30"."""
        total = "?" if self.total is None else str(self.total)
        failed = f" · {self.failed} failed" if self.failed else ""
        cached = f" ({self.cached} cached)" if self.cached else ""
        return f"{self.succeeded} ok{cached}{failed} of {total}"

    def __str__(self) -> str:
        eta = "" if self.eta is None else f", eta {format_seconds(self.eta)}"
        trouble = "".join(f"\n  problem: {p}" for p in self.problems)
        if self.state.finished:
            where = ""
        else:
            where = f", {self.running} running on {self.workers} workers"
        return (
            f"{self.id} [{self.state.value}] {self.name}: {self.counts()}{where}, "
            f"{format_seconds(self.elapsed)} elapsed{eta}{trouble}"
        )


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def now() -> float:
    return time.time()
