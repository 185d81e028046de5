"""``cloudloop rm``, ``gc`` and ``outputs``: a store's jobs, removed or fetched.

The work is :mod:`cloudloop.housekeeping`'s; this module parses and prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .backends import open_backend
from .config import load_profile, parse_duration
from .errors import CloudloopError


def _backend(args):
    return open_backend(args.backend or load_profile(args.profile).backend)


def cmd_rm(args) -> int:
    from .housekeeping import human, remove_job

    backend = _backend(args)
    status, keys_total, bytes_total = 0, 0, 0
    for job in args.jobs:
        try:
            freed = remove_job(backend, job, force=args.force)
        except CloudloopError as e:  # say it, and go on with the other jobs
            print(f"cloudloop: error: {e}", file=sys.stderr)
            status = 1
            continue
        print(freed.line(), flush=True)
        keys_total += freed.keys
        bytes_total += freed.bytes
    if len(args.jobs) > 1:
        print(f"freed {keys_total:,} keys, {human(bytes_total)}")
    return status


def cmd_gc(args) -> int:
    from .housekeeping import collect, human

    older = parse_duration(args.older_than, "--older-than")
    assert older is not None  # a required option
    freed = collect(_backend(args), older, keep_failed=args.keep_failed, dry_run=args.dry_run)
    for f in freed:
        print(f.line(), flush=True)
    verb = "would free" if args.dry_run else "freed"
    print(
        f"{verb} {sum(f.keys for f in freed):,} keys, {human(sum(f.bytes for f in freed))} "
        f"({len(freed)} job{'' if len(freed) == 1 else 's'})"
    )
    return 0


def cmd_outputs(args) -> int:
    from .housekeeping import download_outputs, human

    directory = args.output or f"{args.job}-outputs"
    files, nbytes = download_outputs(_backend(args), args.job, directory, args.task)
    which = f"task {args.task} of job {args.job}" if args.task is not None else f"job {args.job}"
    if not files:
        print(f"{which} has no output files")
        return 0
    print(f"{files:,} output file{'' if files == 1 else 's'} of {which} ({human(nbytes)}) "
          f"written to {directory}/<task>/<name>")  # fmt: skip
    return 0


def _task(text: str) -> int:
    try:
        index = int(text, 10)
    except ValueError:
        index = -1
    if index < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a task index (0, 1, 2, ...)")
    return index


def add_commands(sub: Any, common: Any) -> None:
    """Add this module's subcommands to the CLI's parser."""
    r = common(sub.add_parser("rm", help="remove jobs and everything they stored"))
    r.add_argument("jobs", nargs="+", metavar="JOB", help="job id (see `cloudloop status`)")
    r.add_argument("--force", action="store_true", help="cancel a running job, then remove it")
    r.set_defaults(fn=cmd_rm)

    g = common(sub.add_parser("gc", help="remove finished jobs older than a duration"))
    g.add_argument("--older-than", required=True, help="e.g. 7d, 12h: finished before that")
    g.add_argument("--keep-failed", action="store_true", help="keep jobs with failed tasks")
    g.add_argument("--dry-run", action="store_true", help="say what would be freed; remove nothing")
    g.set_defaults(fn=cmd_gc)

    o = common(sub.add_parser("outputs", help="download a job's per-task output files"), job=True)
    o.add_argument("task", nargs="?", type=_task, help="task index (default: every task)")
    o.add_argument("-o", "--output", help="directory (default: ./JOB-outputs)")
    o.set_defaults(fn=cmd_outputs)
