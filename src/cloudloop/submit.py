"""Writing a job into a backend: manifest, functions, chunked task messages.

Submission streams: items are pickled a chunk at a time and sent in batches,
so mapping over a million items never holds a million pickles (or futures)
in memory. A chunk whose pickled payload is too big for one queue message
spills to the store and the message carries its key (the extended-client
pattern), which is also how large arguments stay out of the queue.

Nothing is written until something is worth keeping: :meth:`JobWriter.plan`
only builds the manifest, and the job appears in the store (manifest, index
entry) when its function has been pickled, so an unpicklable function leaves
no job behind. If submission fails half-way (an item that cannot be pickled
deep inside a generator, the generator raising, Ctrl-C), :meth:`JobWriter.discard`
cancels the job and removes it; only its ``cancelled`` marker stays, so
workers drop the messages already queued instead of running them.

Functions are remembered by identity through weak references, so a bound
method does not keep its object alive after ``submit`` returns; a function is
stored once per job, keyed by the digest of its pickle.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from datetime import datetime
from itertools import islice
from typing import Any

from . import __version__, cachekey, codec, keys
from .backends import Backend
from .cache import CacheFiller, CacheIndex, store_task_keys
from .context import derive_seed
from .errors import SerializationError
from .model import PYTHON, Cancelled, JobManifest, JobOptions, MessageHeader, Sealed, runs_of

_SEND_BATCH = 64  # messages per queue.put
_SEND_BYTES = 4 << 20
_HEADER_ROOM = 4096


def new_job_id() -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def chunk_sizes(n: int | None, workers: int, fixed: int | None = None) -> Iterator[int]:
    """Tasks per queue message, in order.

    With a known length the sizes shrink as the job goes (guided scheduling):
    early messages are large, so tiny tasks cost few queue operations; the
    last ones are small, so no worker is left with a long tail while the
    others idle. Chunks still running after ``split_after`` are also split
    by their worker.
    """
    if fixed is not None:
        while True:
            yield fixed
    if n is None:
        while True:
            yield 64
    w = max(workers, 1)
    smallest = max(1, n // (w * 64))
    left = n
    while True:
        size = max(smallest, min(1024, -(-left // (w * 4))))
        left = max(0, left - size)
        yield size


class JobWriter:
    """Streams one job's manifest, functions and tasks into a backend."""

    def __init__(
        self,
        backend: Backend,
        manifest: JobManifest,
        files: dict[str, bytes] | None = None,
        wrap: Callable[[Any], Any] | None = None,
    ):
        self.backend = backend
        self.manifest = manifest
        self.key = backend.key
        self.wrap = wrap  # what is pickled in place of each function (Executor initializer)
        self._files = dict(files or {})
        self._opened = False
        self._open_lock = threading.Lock()
        self._refs: dict[int, tuple[weakref.ref, str]] = {}  # id(fn) -> (weak fn, ref)
        self._stored: set[str] = set()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._kept: list[tuple[int, int, int, bytes]] = []  # messages to keep for a retry
        self._flushes = 0  # queue.put calls made
        self.chunks = 0
        self.tasks = 0
        self.cache: CacheIndex | None = None  # what the cache holds for this job's tasks
        self.filler: CacheFiller | None = None
        self.cached = 0  # tasks taken from the cache

    @classmethod
    def plan(
        cls,
        backend: Backend,
        options: JobOptions,
        kind: str = "python",
        command: str | None = None,
        files: dict[str, bytes] | None = None,
        session: bool = False,
        wrap: Callable[[Any], Any] | None = None,
        requires: tuple[str, ...] = (),
        serve: bool = False,
        cache_key: str = "",
    ) -> JobWriter:
        """A writer for a new job; nothing is stored until :meth:`open` (which
        storing a function or a task, or sealing, calls first). ``requires``: the
        pins workers must have (:func:`cloudloop.environment.pins_for`);
        ``cache_key``: with the cache option, what the tasks compute apart from
        their arguments (:mod:`cloudloop.cachekey`)."""
        job_id = new_job_id()
        cached = bool(options.cache and cache_key)
        seed = options.seed if options.seed is not None else (0 if cached else secrets.randbits(63))
        manifest = JobManifest(
            id=job_id,
            name=options.name or (command.split()[0] if command else "job"),
            kind=kind,
            created=time.time(),
            options=options,
            seed=seed,
            client=f"{socket.gethostname()}:{os.getpid()}",
            version=__version__,
            command=command,
            files=tuple(sorted(files or {})),
            session=session,
            # a function and its arguments are pickled by this Python: workers need its
            # minor version (a command job's rows are plain data any version reads)
            python="" if kind == "command" else PYTHON,
            requires=() if kind == "command" else tuple(requires),
            serve=serve,
            cache_key=cache_key if cached else "",
        )
        return cls(backend, manifest, files, wrap)

    def open(self) -> None:
        """Write the job's files, manifest and index entry (once)."""
        with self._open_lock:
            if self._opened:
                return
            backend, job_id = self.backend, self.id
            for name, data in self._files.items():
                backend.put_signed(keys.file(job_id, name), data)
            manifest = json.dumps(self.manifest.to_dict()).encode()
            backend.put_signed(keys.manifest(job_id), manifest)
            m = self.manifest
            backend.put_record(
                keys.index_entry(job_id), {"name": m.name, "created": m.created, "kind": m.kind}
            )
            self._opened = True

    def discard(self) -> None:
        """Cancel and remove a job whose submission failed: its index entry and
        everything it stored go, but its ``cancelled`` marker, which makes
        workers drop any of its messages already in the queue."""
        self._pending, self._pending_bytes, self._kept = [], 0, []
        if not self._opened:
            return
        backend = self.backend
        backend.put_record(keys.cancelled(self.id), asdict(Cancelled(time.time(), discarded=True)))
        backend.store.delete(keys.index_entry(self.id))
        for key in backend.store.list(keys.job_prefix(self.id)):
            if key != keys.cancelled(self.id):
                backend.store.delete(key)

    @property
    def id(self) -> str:
        return self.manifest.id

    def add_fn(self, fn: Any) -> str:
        """Store a function once per job; returns its reference (the digest of its pickle)."""
        ref, blob = self.prepare_fn(fn)
        if blob is not None:
            self.store_fn(fn, ref, blob)
        return ref

    def prepare_fn(self, fn: Any) -> tuple[str, bytes | None]:
        """(reference, pickle to store) of ``fn``, storing nothing; the pickle is
        None when this job already has the function."""
        hit = self._refs.get(id(fn))
        if hit is not None and hit[0]() is fn and hit[1] in self._stored:
            return hit[1], None
        ref, blob = pickle_fn(fn, self.wrap)
        if ref in self._stored:
            self._remember(fn, ref)
            return ref, None
        return ref, blob

    def store_fn(self, fn: Any, ref: str, blob: bytes) -> None:
        """Store a function :meth:`prepare_fn` pickled (opening the job first)."""
        self.open()
        self.backend.put_signed(keys.fn(self.id, ref), blob, if_absent=True)
        self._stored.add(ref)
        self._remember(fn, ref)

    def _remember(self, fn: Any, ref: str) -> None:
        key, refs = id(fn), self._refs

        def forget(dead: weakref.ref) -> None:
            if refs.get(key, (None,))[0] is dead:
                del refs[key]

        try:
            refs[key] = (weakref.ref(fn, forget), ref)
        except TypeError:  # not weakly referenceable: pickled again next time
            pass

    def look_up(self) -> None:
        """With the cache option, read what the cache holds for this job's function
        (before any task is queued: only misses are)."""
        m = self.manifest
        if m.cache_key and self.cache is None:
            self.cache = CacheIndex.load(
                self.backend, m.cache_key, serve_failures=m.options.cache == "all"
            )
            self.filler = CacheFiller(self.backend, m.id)

    def add_chunk(self, lo: int, tasks: list[tuple[str | None, tuple, dict]]) -> None:
        """Queue tasks ``lo .. lo+len(tasks)-1`` (each ``(fn_ref, args, kwargs)``) as one
        message; with the cache, those it holds are written as results instead."""
        refs = sorted({t[0] for t in tasks if t[0]})
        runs, task_keys = None, None
        if self.cache is not None:
            runs, task_keys = self._take_cached(lo, tasks)
        self._send(lo, len(tasks), _dumps_tasks(tasks, lo), refs, False, True, runs, task_keys)

    def _take_cached(
        self, lo: int, tasks: list[tuple[str | None, tuple, dict]]
    ) -> tuple[tuple[tuple[int, int], ...], list[str]]:
        """(runs of the tasks to queue, every task's key), the hits staged as results."""
        assert self.cache is not None and self.filler is not None
        fkey, seed, index, filler = (
            self.manifest.cache_key,
            self.manifest.seed,
            self.cache,
            self.filler,
        )
        task_keys, misses = [], []
        for i, (_, args, kwargs) in enumerate(tasks, lo):
            tkey = cachekey.task_key(fkey, args, kwargs, derive_seed(seed, i))
            task_keys.append(tkey)
            row = index.row(tkey) if tkey in index else None
            if row is None:
                misses.append(i)
            else:
                filler.add(i, row)
                self.cached += 1
        return runs_of(misses), task_keys

    def add_packed(self, lo: int, packed: list[bytes], refs: set[str]) -> None:
        """Like :meth:`add_chunk` for tasks already pickled one by one (``submit``);
        nothing is sent before :meth:`flush`, so a failure here is this batch's only."""
        payload = codec.dumps(packed, "tasks")
        self._send(lo, len(packed), payload, sorted(refs), nested=True, autoflush=False)

    @property
    def unsent(self) -> int:
        """Messages built but not in the queue yet (a failed flush keeps them)."""
        return len(self._pending)

    def _send(
        self,
        lo: int,
        n: int,
        payload: bytes,
        refs: list[str],
        nested: bool,
        autoflush: bool = True,
        runs: tuple[tuple[int, int], ...] | None = None,
        task_keys: list[str] | None = None,
    ) -> None:
        """Queue a chunk (only its ``runs``, if given: the others were cached), keeping
        a copy of its message for a retry (not for submit()'s jobs, whose calls a
        retry cannot reach) and, for a cached job, its tasks' keys for the workers."""
        self.open()
        spill = None
        if len(payload) + _HEADER_ROOM > self.backend.queue.max_message_bytes:
            spill = keys.inputs(self.id, self.chunks)
            self.backend.put_signed(spill, payload)
            payload = b""
        hi = lo + n - 1
        header = MessageHeader(
            self.id, self.chunks, lo, hi, runs or ((lo, hi),), tuple(refs), nested, spill
        )
        body = codec.encode_message(self.key, header.to_dict(), payload)
        if not self.manifest.session:
            self._kept.append((self.chunks, lo, hi, body))
        if task_keys is not None and runs:
            store_task_keys(self.backend, self.id, self.chunks, task_keys)
        self.chunks += 1
        self.tasks += n
        if runs is not None and not runs:  # every task of it was cached: nothing to queue
            return
        self._pending.append(body)
        self._pending_bytes += len(body)
        # the first message goes at once, so workers start while the rest is pickled;
        # then batches double up to _SEND_BATCH (few queue calls for a big job)
        batch = min(_SEND_BATCH, 1 << (self._flushes))
        if autoflush and (len(self._pending) >= batch or self._pending_bytes >= _SEND_BYTES):
            self.flush()

    def flush(self) -> None:
        """Queue the messages built, keeping a copy of them (one record per batch)
        first: a retry sends them again (:mod:`cloudloop.retry`)."""
        if self._kept:
            kept, self._kept = self._kept, []
            name = keys.chunk_record(self.id, kept[0][0], kept[-1][0], kept[0][1], kept[-1][2])
            self.backend.put_signed(name, codec.pack_rows([(b,) for *_, b in kept]))
        if self._pending:
            self.backend.queue.put(self._pending)
            self._pending, self._pending_bytes = [], 0
            self._flushes += 1

    def seal(self) -> None:
        """Mark submission finished: the job has ``self.tasks`` tasks."""
        self.open()
        self.flush()
        if self.filler is not None:
            self.filler.flush()
        record = Sealed(self.tasks, self.chunks, time.time())
        self.backend.put_record(keys.sealed(self.id), asdict(record))

    def write_items(self, fn: Any, items: Iterable[tuple], sizes: Iterator[int]) -> None:
        """Stream ``fn(*args)`` for each args tuple, ``next(sizes)`` per message."""
        ref = self.add_fn(fn) if fn is not None else None
        self.look_up()
        items = iter(items)
        lo = self.tasks
        while True:
            buf: list[tuple[str | None, tuple, dict]] = [
                (ref, args, {}) for args in islice(items, next(sizes))
            ]
            if not buf:
                return
            self.add_chunk(lo, buf)
            lo += len(buf)


def pickle_fn(fn: Any, wrap: Callable[[Any], Any] | None = None) -> tuple[str, bytes]:
    """(reference, pickle) of a task function (``wrap(fn)`` if given); raises
    TypeError if it is not callable, SerializationError naming the culprit."""
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    codec.ship_user_modules(fn)
    name = getattr(fn, "__qualname__", type(fn).__name__)
    blob = codec.dumps(fn if wrap is None else wrap(fn), f"function {name!r}")
    return codec.digest(blob), blob


def _dumps_tasks(tasks: list[tuple], lo: int) -> bytes:
    try:
        return codec.dumps(tasks, "tasks")
    except SerializationError:
        for n, (_, args, kwargs) in enumerate(tasks):
            for name, value in [
                *((f"argument {i}", a) for i, a in enumerate(args)),
                *((f"argument {k!r}", v) for k, v in kwargs.items()),
            ]:
                codec.dumps(value, f"{name} of task {lo + n}")
        raise


def zip_items(iterables: tuple[Iterable, ...]) -> Iterator[tuple]:
    if len(iterables) == 1:
        return ((x,) for x in iterables[0])
    return zip(*iterables)


def length_hint(iterables: tuple[Iterable, ...]) -> int | None:
    lengths = []
    for it in iterables:
        try:
            lengths.append(len(it))  # type: ignore[arg-type]
        except TypeError:
            return None
    return min(lengths) if lengths else 0
