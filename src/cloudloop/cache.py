"""The result cache: outcomes kept by what computed them, taken by any later job.

::

    submit (client)                               store                                worker
    ───────────────                               ─────                                ──────
    CacheIndex.load(fkey) ─list + get packs─► cache/<fkey>/<at>-<lo>-<hi>-<n>-<nonce>-<job>  ◄─put pack─┐
    per chunk: task keys (cloudloop.cachekey)                                                         │
      hit  ─► CacheFiller ─put─► jobs/<job>/results/<lo>-<hi>-0-cached<nonce>                          │
      miss ─► queued as usual; the chunk's task keys ─put─► jobs/<job>/cachekeys/<chunk> ─get─► commit │
                                                         results part, then a pack of the same rows ──┘

A job with the ``cache`` option has a function key (``JobManifest.cache_key``:
its function's code, or its command and shipped files, and ``cache_version``)
and, per task, a task key (that, its arguments and its seed: see
:mod:`cloudloop.cachekey`, which says what is in a key and why a false hit
cannot happen). Before any task is queued, the client lists the packs under
``cache/<fkey>/`` and reads each (one listing and one GET per pack, not a
request per task: a pack holds the outcomes of a whole result part), then
writes every hit into the new job as an ordinary result part whose name says
it was cached, and queues only the misses. The new job's results are complete
and in input order as always; ``status().cached`` counts the hits from part
names alone.

A worker stores the result part first (the job's durability rule is
unchanged) and then a pack of the same outcomes under their task keys: the
cache is filled as results arrive, so a client that dies at 70 % leaves 70 %
in the cache. A pack is signed for its own name like every blob and verified
when read; one that fails verification is skipped, said once. Failed
outcomes are packed too but served only to ``cache="all"``; a cancelled one
never is.

Two jobs racing on the same key both compute it (at most twice: each looks
up before it queues) and both pack it; readers take the oldest pack's
outcome (packs sort by time), so every later job sees one value (with
``cache="all"``, a success packed later wins over a failure). Packs of
tasks re-run with a fixed function (``Job.retry(fn=...)``) are never
written: their outcomes do not belong to the keys their arguments had.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import codec, keys
from .backends import Backend
from .errors import TamperedError
from .model import OutcomeRow

log = logging.getLogger("cloudloop")

_KEEP_BYTES = 64 << 20  # pack blobs held between lookup and copy
_STAGE_BYTES = 16 << 20  # hit rows staged before they are written as parts
_PART_ROWS = 1024  # hit rows per result part at most
CACHE_WORKER = "cache"  # the worker a cached outcome names


@dataclass(frozen=True)
class CacheWrite:
    """What a worker needs to pack a chunk's outcomes: the job's function key, the
    task keys by index, and whether failures are packed (always: ``all`` reads them)."""

    fkey: str
    task_keys: dict[int, str]


def encode_pack(key: bytes, name: str, worker: str, host: str, rows: list[tuple]) -> bytes:
    """A pack stored under ``name``: (task key, outcome row) pairs, plain data."""
    body = pickle.dumps((1, worker, host, rows), protocol=pickle.HIGHEST_PROTOCOL)
    return codec.sign(key, body, name)


def decode_pack(key: bytes, blob: bytes, name: str) -> list[tuple[str, tuple]]:
    """(task key, outcome row) pairs of a pack, verified (TamperedError if not)."""
    data = codec.verify(key, blob, name, f"cache pack {name}")
    pack = codec.loads_data(data)
    if not (isinstance(pack, tuple) and len(pack) == 4 and pack[0] == 1):
        raise TamperedError(f"cache pack {name} has an unknown layout")
    entries = pack[3]
    if not isinstance(entries, list):
        raise TamperedError(f"cache pack {name} has an unknown layout")
    out = []
    for e in entries:
        if not (isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str)):
            raise TamperedError(f"cache pack {name} holds a malformed entry")
        codec.row_indices([e[1]], f"cache pack {name}")
        out.append((e[0], e[1]))
    return out


def pack_outcomes(
    backend: Backend,
    job_id: str,
    target: CacheWrite,
    rows: list[OutcomeRow],
    worker: str,
    host: str,
) -> str | None:
    """Store a pack of ``rows`` (a result part just stored) under their task keys;
    the pack's key, or None when no row has a key or is worth keeping."""
    entries = [
        (target.task_keys[r.index], tuple(r))
        for r in rows
        if r.index in target.task_keys and not r.cancelled
    ]
    if not entries:
        return None
    lo, hi = rows[0].index, rows[-1].index
    name = keys.cache_pack(target.fkey, time.time(), lo, hi, len(entries), job_id)
    backend.store.put(name, encode_pack(backend.key, name, worker, host, entries))
    return name


def describe(backend: Backend, fkey: str, name: str, kind: str) -> None:
    """Say what a function key is (``cloudloop cache ls`` shows it), once."""
    record = {"name": name[:200], "kind": kind, "created": time.time()}
    try:
        backend.put_record(keys.cache_about(fkey), record, if_absent=True)
    except Exception as e:  # a label is not worth a job
        log.warning("cache: could not label %s: %s", fkey, e)


class CacheIndex:
    """What the cache holds for one function key, read once at submit: task key ->
    where its outcome is. Pack blobs are kept (within a memory budget) for the copy
    that follows, and read again if they were let go."""

    def __init__(self, backend: Backend, fkey: str, serve_failures: bool = False):
        self.backend, self.fkey, self.serve_failures = backend, fkey, serve_failures
        self.where: dict[str, tuple[str, int]] = {}  # task key -> (pack key, position)
        self.failed: set[str] = set()  # keys whose outcome taken is a failure ("all")
        self.problems: list[str] = []
        self.packs = 0
        self._kept: OrderedDict[str, list[tuple[str, tuple]]] = OrderedDict()
        self._kept_bytes = 0
        self._sizes: dict[str, int] = {}

    @classmethod
    def load(cls, backend: Backend, fkey: str, serve_failures: bool = False) -> CacheIndex:
        index = cls(backend, fkey, serve_failures)
        listed = [k for k in backend.store.list(keys.cache_prefix(fkey))]
        packs = sorted((p[1], k) for k in listed if (p := keys.parse_cache_pack(k)) is not None)
        for _, name in packs:  # oldest first: the first outcome packed for a key wins
            entries = index._read(name)
            if entries is None:
                continue
            index.packs += 1
            for pos, (tkey, row) in enumerate(entries):
                if row[3] is not None and not serve_failures:
                    continue
                if tkey in index.where and (row[3] is not None or tkey not in index.failed):
                    continue  # the oldest wins, but a success wins over a failure
                index.where[tkey] = (name, pos)
                if row[3] is not None:
                    index.failed.add(tkey)
                else:
                    index.failed.discard(tkey)
        return index

    def _read(self, name: str) -> list[tuple[str, tuple]] | None:
        entries = self._kept.get(name)
        if entries is not None:
            self._kept.move_to_end(name)
            return entries
        blob = self.backend.store.get_or_none(name)
        if blob is None:  # cleared since it was listed
            return None
        try:
            entries = decode_pack(self.backend.key, blob, name)
        except TamperedError as e:
            if name not in self._sizes:
                log.warning("cache: ignoring %s: %s", name, e)
                self.problems.append(f"{name}: {e}")
            self._sizes[name] = 0
            return None
        self._sizes[name] = len(blob)
        self._kept[name] = entries
        self._kept_bytes += len(blob)
        while self._kept_bytes > _KEEP_BYTES and len(self._kept) > 1:
            old, _ = self._kept.popitem(last=False)
            self._kept_bytes -= self._sizes.get(old, 0)
        return entries

    def __contains__(self, tkey: str) -> bool:
        return tkey in self.where

    def __len__(self) -> int:
        return len(self.where)

    def row(self, tkey: str) -> tuple | None:
        """The outcome row cached for ``tkey`` (None if it vanished since the lookup)."""
        name, pos = self.where[tkey]
        entries = self._read(name)
        if entries is None or pos >= len(entries) or entries[pos][0] != tkey:
            return None
        return entries[pos][1]


class CacheFiller:
    """Writes cached outcomes into a new job as result parts (runs of consecutive
    tasks, named as cached), a budget of rows at a time."""

    def __init__(self, backend: Backend, job_id: str):
        self.backend, self.job_id = backend, job_id
        self.staged: dict[int, tuple] = {}
        self.staged_bytes = 0
        self.written = 0

    def add(self, index: int, row: tuple) -> None:
        now = time.time()
        # the task did not run now: it took no time (its first run's times are in
        # the job that ran it)
        self.staged[index] = (index, row[1], row[2], row[3], now, now, False)
        self.staged_bytes += len(row[2] or b"") + 64
        if self.staged_bytes >= _STAGE_BYTES:
            self.flush()

    def flush(self) -> None:
        indices = sorted(self.staged)
        run: list[tuple] = []
        for i in [*indices, None]:
            if run and (i is None or i != run[-1][0] + 1 or len(run) >= _PART_ROWS):
                self._put(run)
                run = []
            if i is not None:
                run.append(self.staged[i])
        self.staged, self.staged_bytes = {}, 0

    def _put(self, rows: list[tuple]) -> None:
        nfail = sum(1 for r in rows if r[3] is not None)
        name = keys.result(self.job_id, rows[0][0], rows[-1][0], nfail, cached=True)
        blob = codec.encode_part(
            self.backend.key, name, CACHE_WORKER, CACHE_WORKER, [codec.pack_rows(rows)]
        )
        self.backend.store.put(name, blob)
        self.written += len(rows)


def read_task_keys(backend: Backend, job_id: str, chunk: int) -> list[str] | None:
    """The task keys of a cached job's chunk, in task order (None: the chunk has none)."""
    name = keys.cachekeys(job_id, chunk)
    data = backend.get_signed(name, f"cache keys of chunk {chunk} of job {job_id}")
    if data is None:
        return None
    got = json.loads(data)
    if not isinstance(got, list) or not all(isinstance(k, str) and len(k) == 32 for k in got):
        raise TamperedError(f"{name} is not a list of task keys")
    return got


def store_task_keys(backend: Backend, job_id: str, chunk: int, task_keys: Iterable[str]) -> None:
    backend.put_signed(keys.cachekeys(job_id, chunk), json.dumps(list(task_keys)).encode())


def fill_rows(index: CacheIndex, tkey: str) -> Any:
    """The cached row for ``tkey``, or None (a helper for the writer's hot loop)."""
    return index.row(tkey) if tkey in index.where else None
