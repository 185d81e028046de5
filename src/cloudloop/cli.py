"""``cloudloop`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .backends import open_backend
from .cli_cache import add_commands as add_cache_commands
from .cli_cluster import add_commands
from .cli_store import add_commands as add_store_commands
from .config import Profile, default_backend, load_profile, parse_duration
from .errors import CloudloopError
from .model import WorkerOptions, format_seconds

if TYPE_CHECKING:
    from .job import Job

# `cloudloop worker` is started once per worker (hundreds at once on one machine):
# what only the other commands use (the job API, command templates, providers,
# csv) is imported inside them, so a worker does not pay for it

_SHIP_LIMIT = 50 << 20


def _apply(fn, item: Any) -> Any:
    """Call ``fn`` with a row: a dict as keywords, a list as arguments, else one argument."""
    if isinstance(item, dict):
        return fn(**item)
    if isinstance(item, list):
        return fn(*item)
    return fn(item)


def _backend(args):
    return open_backend(args.backend or load_profile(args.profile).backend)


def _job(args) -> Job:
    from .job import attach_job

    return attach_job(_backend(args), args.job)


def _import_target(target: str):
    if ":" not in target:
        raise CloudloopError(f"{target!r} is not 'module:function' (e.g. mypkg.fits:fit)")
    mod, _, name = target.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod)
    except ImportError as e:
        raise CloudloopError(f"cannot import {mod!r}: {e}") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise CloudloopError(f"{mod!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    return obj


def _ship(words: tuple[str, ...], patterns: list[str]) -> dict[str, bytes]:
    """Files for each task's directory: what the command names, and --files.

    A word of the command ships only if it is a file in this directory
    (relative, no '..', no '~', no dot-file or dot-directory on its way, not
    an option such as --netrc-file=F, a symlink only if it stays inside);
    anything else is shipped only when --files names it. Two files for one
    name in the task directory are an error.
    """
    import glob

    here = os.path.realpath(os.getcwd())
    chosen: dict[str, str] = {}  # name in the task's directory -> local path

    def add(target: str, source: str) -> None:
        had = chosen.setdefault(target, source)
        if os.path.realpath(had) != os.path.realpath(source):
            raise CloudloopError(
                f"two files would be {target!r} in each task's directory: {had!r} and "
                f"{source!r}; rename one, or copy it into this directory under another name"
            )

    def named(word: str) -> bool:
        if not word or word.startswith(("-", "~")) or os.path.isabs(word):
            return False
        parts = os.path.normpath(word).split(os.sep)
        if parts[0] == ".." or any(p.startswith(".") for p in parts):
            return False
        return os.path.isfile(word) and os.path.realpath(word).startswith(here + os.sep)

    for word in words:
        if named(word):
            add(os.path.normpath(word), word)
    for pat in patterns:
        found = [pat] if os.path.isfile(pat) else glob.glob(pat, recursive=True)
        found = [f for f in found if os.path.isfile(f)]
        if not found:
            raise CloudloopError(f"--files {pat!r} matches no file")
        for name in found:
            rel = os.path.normpath(name)
            inside = not (rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel))
            add(rel if inside else os.path.basename(rel), name)
    out = {target: Path(source).read_bytes() for target, source in chosen.items()}
    if sum(map(len, out.values())) > _SHIP_LIMIT:
        raise CloudloopError("files to ship exceed 50 MB: put large data in the store or a bucket")
    return out


def cmd_run(args) -> int:
    from .commands import build_template, check_rows, compile_template, read_table
    from .executor import Executor

    opts = {
        k: v
        for k, v in {
            "retries": args.retries,
            "timeout": args.timeout,
            "memory": args.memory,
            "seed": args.seed,
            "chunksize": args.chunksize,
            "name": args.name,
            "cache": args.cache,
            "cache_version": args.cache_version,
        }.items()
        if v is not None
    }
    if not args.items:
        raise CloudloopError("--items FILE is required (.csv, .jsonl or .json)")
    if args.command and args.target:
        raise CloudloopError("give either a module:function or a command after '--', not both")
    if not (args.command or args.target):
        raise CloudloopError("nothing to run: give module:function, or a command after '--'")
    table = read_table(args.items)
    items = table.items
    # everything is checked before the Executor exists: a bad file or template leaves no job
    if args.command:
        template = build_template(args.command)
        if args.serve:
            from .commands import check_served

            check_served(template)
        check_rows(template, table)
        files = _ship(compile_template(template).words, args.files)
        if files:
            print(f"shipping to each task: {', '.join(sorted(files))}", file=sys.stderr)
        ex = Executor(backend=args.backend, workers=args.workers, profile=args.profile)
        job = ex.command_job(template, items, files=files, serve=args.serve, **opts)
        # the rows, kept with the job so `cloudloop results` can show each row's fields
        ex.backend.store.put(_rows_key(job.id), json.dumps(items).encode())
    else:
        fn = _import_target(args.target)
        ex = Executor(backend=args.backend, workers=args.workers, profile=args.profile)
        job = ex.map_job(functools.partial(_apply, fn), items, **opts)
    print(f"job {job.id}: {len(items)} tasks on {ex.backend.url}", file=sys.stderr)
    if args.detach:
        print(job.id)
        return 0
    try:
        st = job.wait(progress=not args.quiet, logs=args.logs)
    except KeyboardInterrupt:
        from .executor import _say_left

        ex._left = True
        _say_left(ex)
        raise
    finally:
        ex.shutdown(wait=False)
    for f in job.failures()[:5]:
        first, *rest = str(f).split("\n")
        at = f" [{table.where(f.index)}]" if args.command and f.index < len(items) else ""
        print("\n    ".join([f"  {first}{at}", *rest]), file=sys.stderr)
    print(
        f"results: cloudloop results {job.id}   logs: cloudloop logs {job.id} TASK", file=sys.stderr
    )
    print(job.id)
    return 1 if st.failed else 0


def _cost_line(args, st) -> str | None:
    """What the job's cluster cost (where the profile's provider bills), or None."""
    if args.backend:
        return None
    from .providers import cluster_for

    cluster = cluster_for(load_profile(args.profile))
    if "job_cost" not in cluster.capabilities():
        return None
    finished = st.created + st.elapsed if st.state.finished else None
    return cluster.job_cost(st.created, finished, st.eta)


def cmd_status(args) -> int:
    from .job import attach_job, list_jobs

    backend = _backend(args)
    if args.job is not None:  # "" is a bad id, not "every job"
        job = attach_job(backend, args.job)
        st = job.status()
        if args.json:
            print(json.dumps(_status_json(st)))
            return 0
        print(st)
        line = _cost_line(args, st)
        if line:
            print(line)
        for w in job.workers():
            if w.job == job.id and w.task is not None and not st.state.finished:
                prog = "" if w.progress is None else f" {w.progress * 100:.0f}% {w.message}"
                print(f"  task {w.task} on {w.host} (worker {w.id}){prog}")
        for f in job.failures()[:10] if st.failed else []:
            print(f"  failed: {f}")
        return 0
    jobs = list_jobs(backend)
    rows = []
    for job in jobs:
        try:
            st = job.status()
        except CloudloopError as e:
            print(f"{job.id}  (unreadable: {e})")
            continue
        total = "?" if st.total is None else st.total
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.created))
        rows.append(
            (
                st.id,
                st.name[:24],
                st.state.value,
                str(st.succeeded),
                str(st.failed),
                str(total),
                created,
                format_seconds(st.elapsed),
            )
        )
        if args.json:
            print(json.dumps(_status_json(st)))
    if not args.json:
        head = ("JOB", "NAME", "STATE", "OK", "FAILED", "OF", "CREATED", "ELAPSED")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        print(f"{len(rows)} jobs on {backend.url}", file=sys.stderr)
    return 0


def _status_json(st: Any) -> dict[str, Any]:
    """A status as JSON: every field as before (``done`` counts failures too), plus
    ``succeeded``."""
    return {**st.__dict__, "state": st.state.value, "succeeded": st.succeeded}


def cmd_logs(args) -> int:
    job = _job(args)
    if args.task is not None and not args.follow:
        sys.stdout.write(job.logs(args.task, attempt=args.attempt))
        return 0
    while True:
        for i, text in job.new_log_lines():
            if args.task is None or i == args.task:
                prefix = "" if args.task is not None else f"[task {i}] "
                for line in text.splitlines():
                    print(prefix + line, flush=True)
        if not args.follow or job.done():
            if args.follow:
                for i, text in job.new_log_lines():
                    if args.task is None or i == args.task:
                        sys.stdout.write(text)
            return 0
        time.sleep(1.0)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if hasattr(value, "tolist"):
            return value.tolist()
        return repr(value)


def _rows_key(job_id: str) -> str:
    return f"jobs/{job_id}/rows.json"


def cmd_results(args) -> int:
    import csv

    from . import codec

    job = _job(args)
    outcomes = job.outcomes()
    try:  # a job `cloudloop run` made from an items file: its rows' own fields
        items = json.loads(job.backend.store.get(_rows_key(job.id)))
    except KeyError:
        items = None
    rows = []
    for i, o in sorted(outcomes.items()):
        row: dict[str, Any] = {"index": i}
        if items is not None and i < len(items):
            item = items[i] if isinstance(items[i], dict) else {"item": items[i]}
            row = {"row": i + 1, "index": i}
            ours = ("row", "index", "status", "value", "error", "returncode", "stdout")
            row.update({(f"item_{k}" if k in ours else k): v for k, v in item.items()})
        row["status"] = "ok" if o.ok else ("cancelled" if o.cancelled else "failed")
        if o.ok and o.value is not None:
            row["value"] = _jsonable(codec.loads(o.value))
        elif o.error is not None:
            row["error"] = f"{o.error.type_name}: {o.error.message}"
        rows.append(row)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        if args.format == "jsonl":
            for row in rows:
                out.write(json.dumps(row) + "\n")
        else:
            flat = []
            for row in rows:
                value = row.pop("value", None)
                if isinstance(value, dict):
                    row.update(
                        {
                            k: json.dumps(v) if isinstance(v, (dict, list)) else v
                            for k, v in value.items()
                        }
                    )
                elif value is not None:
                    row["value"] = json.dumps(value) if isinstance(value, (list, dict)) else value
                flat.append(row)
            cols = list(dict.fromkeys(k for r in flat for k in r))
            w = csv.DictWriter(out, fieldnames=cols)
            w.writeheader()
            w.writerows(flat)
    finally:
        if args.output:
            out.close()
    return 0


def cmd_cancel(args) -> int:
    job = _job(args)
    job.cancel()
    print(f"job {job.id} cancelled")
    return 0


def cmd_worker(args) -> int:
    import faulthandler
    import signal

    from .worker import Worker

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` shows where it is
    # a provider's worker gets every option as flags (--no-profile): a profile of the
    # machine it runs on must not fill in what the flags leave at its default
    profile = Profile("-", default_backend()) if args.no_profile else load_profile(args.profile)
    flags = list(args.worker_flags)
    metadata = os.environ.get("CLOUDLOOP_METADATA_URL")
    if metadata and WorkerOptions.flag("metadata_url") not in flags:
        flags += [WorkerOptions.flag("metadata_url"), metadata]
    opts = WorkerOptions.from_args(flags, base=profile.worker)
    if args.parent_pid is not None:
        opts = opts.replace(exit_when_orphaned=True)
    _private_process()
    # the URL may hold a password: it comes from $CLOUDLOOP_BACKEND (never a command
    # line, which any user can read in `ps`) and is not passed on to the tasks
    url = args.backend or os.environ.pop("CLOUDLOOP_BACKEND", None) or profile.backend
    Worker(_open_patiently(url), opts, parent_pid=args.parent_pid).run()
    return 0


_WORKER_HELP = {
    "lease": "lease length, e.g. 30s",
    "idle_exit": "exit after this long without work",
    "heartbeat": "seconds between heartbeats",
    "split_after": "hand back the tail of chunks running longer",
    "metadata_url": "watch this instance metadata for spot notices (EC2: http://169.254.169.254)",
    "preempt_grace": "after a spot notice, how long the task may go on (default 60s)",
    "stop_at": "unix time to leave by (set by the ec2 provider for max_cost)",
    "exit_when_orphaned": argparse.SUPPRESS,
    "worker_memory": "memory this worker offers its tasks, e.g. 8GB (default: the machine's)",
}


class _WorkerFlag(argparse.Action):
    """Keeps a worker option's flag and value as given: WorkerOptions.from_args reads them."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = [*getattr(namespace, self.dest), option_string]
        namespace.worker_flags = given if self.nargs == 0 else [*given, values]


def _open_patiently(url: str, patience: float = 120.0):
    """Open the backend, riding out a service that is not reachable yet (an instance
    that boots before its network is up, a Redis restarting); a wrong URL or missing
    credentials fail at once."""
    from .errors import ConnectionFailed

    deadline, pause = time.monotonic() + patience, 1.0
    while True:
        try:
            return open_backend(url)
        except ConnectionFailed as e:
            if time.monotonic() + pause > deadline:
                raise
            logging.getLogger("cloudloop.worker").warning("%s (retrying in %.0f s)", e, pause)
            time.sleep(pause)
            pause = min(pause * 2, 15.0)


def _private_process() -> None:
    """Other processes of this user (the tasks included) cannot read this one's
    memory or environment through /proc (``PR_SET_DUMPABLE`` 0)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        pass


def cmd_dashboard(args) -> int:
    from .dashboard import DashboardServer

    port = _port(args.port)
    backend = _backend(args)
    groups = None
    if not args.backend:  # the profile's cluster, if it is an Auto Scaling group's
        from .providers import cluster_for

        cluster = cluster_for(load_profile(args.profile), backend.url)
        group = getattr(cluster, "group", None)
        if group is not None:
            groups = lambda: [g for g in [group.snapshot()] if g]  # noqa: E731
    try:
        server = DashboardServer(backend, host=args.host, port=port, job_every=args.interval,
                                 groups=groups)  # fmt: skip
    except OSError as e:
        raise CloudloopError(
            f"cannot listen on {args.host}:{port} ({e.strerror}); "
            "choose another with --port (0: any free port)"
        ) from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: the dashboard listens on {args.host}, so anyone who can reach this "
            "machine and has the URL's token can read your jobs' results metadata, "
            "tracebacks and logs; prefer an SSH tunnel to 127.0.0.1",
            file=sys.stderr,
        )
    print(f"cloudloop dashboard for {backend.url}:\n  {server.url}", flush=True)
    if args.host in ("0.0.0.0", "::", ""):
        import socket

        port = server.server_address[1]
        print(
            f"  from elsewhere: http://{socket.getfqdn()}:{port}/?token={server.token}", flush=True
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _port(text: str) -> int:
    """A TCP port number from the command line (checked here, before anything is opened)."""
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise CloudloopError(
            f"--port {text!r} is not a port: give a whole number from 1 to 65535 "
            "(or 0 for any free port)"
        )
    return port


def cmd_report(args) -> int:
    from .report import write_report

    job = _job(args)
    out = args.output or f"{job.id}.html"
    write_report(job.backend, job.id, out)
    print(f"report of job {job.id} written to {out}", file=sys.stderr)
    return 0


def _common(sp, job=False):
    sp.add_argument("--backend", help="backend URL (default: the profile's)")
    sp.add_argument(
        "--profile", help="profile from cloudloop.toml (default: $CLOUDLOOP_PROFILE or local)"
    )
    if job:
        sp.add_argument("job", help="job id (see `cloudloop status`)")
    return sp


def _top() -> tuple[argparse.ArgumentParser, Any]:
    p = argparse.ArgumentParser(
        prog="cloudloop",
        description="Run a loop's iterations as a durable parallel job, here or on many machines.",
    )
    p.add_argument("--version", action="version", version=f"cloudloop {__version__}")
    return p, p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")


def _add_worker(sub, common) -> None:
    w = common(
        sub.add_parser(
            "worker",
            help="serve a backend's queue until stopped",
            description=(
                "Run one worker: it pulls tasks of any job on the backend and only connects out to it. "
                "Start as many as you like, anywhere (Slurm, Kubernetes, a spare desktop)."
            ),
        )
    )
    # one flag per WorkerOptions field, kept as typed for WorkerOptions.from_args to read
    for f in dataclasses.fields(WorkerOptions):
        switch = f.default is False
        w.add_argument(
            WorkerOptions.flag(f.name),
            action=_WorkerFlag,
            dest="worker_flags",
            nargs=0 if switch else None,
            metavar=None if switch else f.name.upper(),
            help=_WORKER_HELP[f.name],
        )
    w.set_defaults(worker_flags=[])
    w.add_argument("--no-profile", action="store_true", help=argparse.SUPPRESS)
    w.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    w.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    w.set_defaults(fn=cmd_worker)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; for ``command="worker"`` only that command's (a
    worker builds no other: hundreds may start at once)."""
    p, sub = _top()
    common = _common
    if command == "worker":
        _add_worker(sub, common)
        return p

    r = common(
        sub.add_parser(
            "run",
            help="run a function or a command once per item",
            description=(
                "Run TARGET (module:function, called with each item; a JSON object as keywords) or the "
                "command after '--' once per row of --items. Command fields like {alpha} take the row's "
                "value as data (never as code: a template that would let the shell read a value as code, "
                "such as '{v}' in single quotes or sh -c \"... {v}\", is refused with what to write "
                "instead); {index}, {seed} and {job} always exist. Each task runs in a fresh directory "
                "holding the files the command names that are in this directory (relative paths, no "
                "'..', '~' or dot-files, not --opt=FILE), plus --files. Example:\n"
                "  cloudloop run --items params.csv -- Rscript fit.R --alpha {alpha}"
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    r.add_argument("target", nargs="?", help="module:function to call per item")
    r.add_argument("--items", help="items: .csv (one task per row), .jsonl or .json")
    r.add_argument("--workers", type=int, help="local workers to start (0: none)")
    r.add_argument("--retries", type=int, help="re-runs after a task fails (default 0)")
    r.add_argument("--timeout", help="per-task time limit, e.g. 10m")
    r.add_argument("--memory", help="per-task memory limit, e.g. 2GB")
    r.add_argument("--seed", type=int, help="job seed (task seeds derive from it)")
    r.add_argument("--chunksize", type=int, help="tasks per queue message (default: automatic)")
    r.add_argument("--name", help="job name shown by status")
    r.add_argument(
        "--cache",
        nargs="?",
        const=True,
        choices=[True, "all"],
        type=lambda v: "all" if v == "all" else v,
        help="take results of tasks that ran before (same command, files and row) from the "
        "cache, run only the rest; --cache=all serves failures too (docs/cache-and-retry.md)",
    )
    r.add_argument("--cache-version", help="text in every cache key: change it to recompute all")
    r.add_argument(
        "--files",
        action="append",
        default=[],
        help="file or glob copied into each task's directory (any file; repeatable)",
    )
    r.add_argument(
        "--serve",
        action="store_true",
        help="start the command once per worker and send it the rows as JSON lines on its "
        "stdin; it answers one JSON line per row (docs/command-tasks.md: served commands)",
    )
    r.add_argument("--detach", action="store_true", help="print the job id and return at once")
    r.add_argument("--logs", action="store_true", help="relay task output while waiting")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(fn=cmd_run)

    s = common(sub.add_parser("status", help="list jobs, or show one job's progress"))
    s.add_argument("job", nargs="?", help="job id (default: list every job)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_status)

    lg = common(sub.add_parser("logs", help="print what tasks printed"), job=True)
    lg.add_argument("task", nargs="?", type=int, help="task index (default: every task)")
    lg.add_argument("--attempt", type=int, help="only this attempt")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    lg.set_defaults(fn=cmd_logs)

    rs = common(sub.add_parser("results", help="write a job's results as jsonl or csv"), job=True)
    rs.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    rs.add_argument("-o", "--output", help="file to write (default: stdout)")
    rs.set_defaults(fn=cmd_results)

    c = common(sub.add_parser("cancel", help="cancel a job"), job=True)
    c.set_defaults(fn=cmd_cancel)

    _add_worker(sub, common)
    d = common(sub.add_parser("dashboard", help="serve a live web dashboard of the jobs"))
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    d.add_argument("--port", default="8787", help="port, 1-65535 (default 8787; 0: any free port)")
    d.add_argument(
        "--interval",
        type=parse_duration,
        default=2.0,
        help="minimum seconds between store reads of a watched job (default 2s)",
    )
    d.set_defaults(fn=cmd_dashboard)

    rp = common(
        sub.add_parser("report", help="write a self-contained HTML report of a job"), job=True
    )
    rp.add_argument("-o", "--output", help="file to write (default: JOB.html)")
    rp.set_defaults(fn=cmd_report)
    add_commands(sub, common)
    add_store_commands(sub, common)
    add_cache_commands(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    args = _parser(argv[0] if argv[:1] == ["worker"] else None).parse_args(argv)
    args.command = command
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        rc = args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return rc
    except (CloudloopError, TimeoutError) as e:
        print(f"cloudloop: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`cloudloop results JOB | head`): stop quietly, as
        # cat does; stdout points at /dev/null so the exit's flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
