"""``cloudloop retry`` and ``cloudloop cache ls|stats|clear``.

The cache is every pack under ``cache/<fkey>/`` (:mod:`cloudloop.cache`),
shared by everyone who uses the backend; what a pack holds and how big it is
come from its name and a listing of sizes, so none of these reads a pack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .backends import Backend, open_backend
from .config import load_profile, parse_duration
from .errors import TamperedError


def _backend(args):
    return open_backend(args.backend or load_profile(args.profile).backend)


# ---------------------------------------------------------------- retry


def cmd_retry(args) -> int:
    from .executor import Executor, _say_left

    ex = Executor(backend=args.backend, workers=args.workers, profile=args.profile)
    try:
        job = ex.retry(args.job, tasks=args.tasks)
        n = job.retried
        if n == 0:
            print(f"job {job.id}: nothing to retry ({job.status().counts()})", file=sys.stderr)
            return 0
        print(f"job {job.id}: {n} task{'' if n == 1 else 's'} queued again", file=sys.stderr)
        if args.detach:
            print(job.id)
            return 0
        try:
            st = job.wait(progress=not args.quiet)
        except KeyboardInterrupt:
            ex._left = True
            _say_left(ex)
            raise
    finally:
        ex.shutdown(wait=False)
    for f in job.failures()[:5]:
        print(f"  {f}".split("\n")[0], file=sys.stderr)
    return 0 if st.failed == 0 else 1


def _tasks(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo, 10), int(hi or lo, 10)
        except ValueError:
            a, b = -1, -1
        if a < 0 or b < a:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a task index or range (e.g. --tasks 3,17,20-25)"
            )
        out.extend(range(a, b + 1))
    return out


# ---------------------------------------------------------------- cache


@dataclass
class Entry:
    """One function key's share of the cache."""

    fkey: str
    name: str = ""
    kind: str = ""
    packs: int = 0
    results: int = 0
    bytes: int = 0
    newest: float = 0.0
    jobs: set[str] = field(default_factory=set)


def survey(backend: Backend) -> dict[str, Entry]:
    """Every function key in the cache with its packs, results and bytes (a listing
    of sizes and the small ``about`` records; no pack is read)."""
    out: dict[str, Entry] = {}
    for key, size in backend.store.sizes(keys.CACHE).items():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "about":
            e = out.setdefault(parts[1], Entry(parts[1]))
            e.bytes += size
            _label(backend, key, e)
            continue
        parsed = keys.parse_cache_pack(key)
        if parsed is None:
            continue
        fkey, at, _, _, n, job = parsed
        e = out.setdefault(fkey, Entry(fkey))
        e.packs += 1
        e.results += n
        e.bytes += size
        e.newest = max(e.newest, at)
        e.jobs.add(job)
    return out


def _label(backend: Backend, key: str, e: Entry) -> None:
    try:
        rec = backend.get_record(key)
    except (TamperedError, ValueError):
        return
    if isinstance(rec, dict):  # text from the store: shown only as printable text
        e.name, e.kind = _printable(rec.get("name", ""), 80), _printable(rec.get("kind", ""), 20)


def _printable(value: Any, limit: int) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(value)[:limit])


def clear(
    backend: Backend, older_than: float | None = None, job: str | None = None, dry_run: bool = False
) -> tuple[int, int]:
    """Remove packs (older than ``older_than`` seconds, or written for ``job``); the
    ``about`` record of a function key goes with its last pack. (packs, bytes)."""
    now, packs, freed = time.time(), 0, 0
    sizes = backend.store.sizes(keys.CACHE)
    left: dict[str, int] = {}
    for key, size in sizes.items():
        parsed = keys.parse_cache_pack(key)
        if parsed is None:
            continue
        fkey, at, _, _, _, of = parsed
        hit = (older_than is None or now - at > older_than) and (job is None or of == job)
        if not hit:
            left[fkey] = left.get(fkey, 0) + 1
            continue
        packs += 1
        freed += size
        if not dry_run:
            backend.store.remove(key)
    for key, size in sizes.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "about" and not left.get(parts[1]):
            freed += size
            if not dry_run:
                backend.store.remove(key)
    return packs, freed


def cmd_cache(args) -> int:
    from .housekeeping import human

    backend = _backend(args)
    if args.action == "clear":
        if args.job is not None:
            keys.check_job_id(args.job)
        older = None if args.older_than is None else parse_duration(args.older_than, "--older-than")
        packs, freed = clear(backend, older, args.job, args.dry_run)
        verb = "would free" if args.dry_run else "freed"
        print(f"{verb} {packs:,} cache pack{'' if packs == 1 else 's'}, {human(freed)}")
        return 0
    entries = sorted(survey(backend).values(), key=lambda e: -e.newest)
    if args.json:
        rows = [
            {
                "key": e.fkey,
                "name": e.name,
                "kind": e.kind,
                "packs": e.packs,
                "results": e.results,
                "bytes": e.bytes,
                "newest": e.newest,
                "jobs": sorted(e.jobs),
            }
            for e in entries
        ]
        print(json.dumps(rows if args.action == "ls" else _totals(entries)))
        return 0
    if args.action == "stats":
        t = _totals(entries)
        print(
            f"{t['results']:,} cached results of {t['functions']:,} functions in "
            f"{t['packs']:,} packs, {human(t['bytes'])}, from {t['jobs']:,} jobs on {backend.url}"
        )
        return 0
    if not entries:
        print(f"the cache on {backend.url} is empty")
        return 0
    print(f"{'KEY':<32}  {'NAME':<24} {'RESULTS':>8} {'SIZE':>9}  NEWEST")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.newest)) if e.newest else "-"
        name = (e.name or "?")[:24]
        print(f"{e.fkey:<32}  {name:<24} {e.results:>8,} {human(e.bytes):>9}  {when}")
    return 0


def _totals(entries: list[Entry]) -> dict[str, int]:
    return {
        "functions": len(entries),
        "packs": sum(e.packs for e in entries),
        "results": sum(e.results for e in entries),
        "bytes": sum(e.bytes for e in entries),
        "jobs": len(set().union(*(e.jobs for e in entries))) if entries else 0,
    }


def add_commands(sub: Any, common: Any) -> None:
    """Add this module's subcommands to the CLI's parser."""
    r = common(
        sub.add_parser("retry", help="run a finished job's failed (or named) tasks again"),
        job=True,
    )
    r.add_argument("--tasks", type=_tasks, help="task indices instead, e.g. 3,17,20-25")
    r.add_argument("--workers", type=int, help="local workers to start (0: none)")
    r.add_argument("--detach", action="store_true", help="queue them and return at once")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(fn=cmd_retry)

    c = common(sub.add_parser("cache", help="see or clear the result cache (cache=True)"))
    c.add_argument("action", choices=["ls", "stats", "clear"])
    c.add_argument("--older-than", help="clear: only packs written before, e.g. 30d")
    c.add_argument("--job", help="clear: only what this job put in the cache")
    c.add_argument("--dry-run", action="store_true", help="clear: say what would go")
    c.add_argument("--json", action="store_true", help="ls, stats: machine-readable output")
    c.set_defaults(fn=cmd_cache)
