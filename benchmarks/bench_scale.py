"""Many local workers on one machine: efficiency, CPU and memory per worker.

N workers (the local provider, as ``cl.Executor(workers=N)`` starts them) run
T tasks of ``time.sleep(S)``, on the SQLite and the Redis backend:

* **start-up**: seconds from ``cl.Executor(workers=N)`` until all N workers
  are serving (each has written its heartbeat record);
* **efficiency**: the ideal wall time (T x S / N) over the measured one, timed
  once every worker and its task runner are up and the machine is quiet;
* **CPU per worker** (the worker process and its task runner, from
  ``/proc/<pid>/stat``), as a share of one core: idle with an empty queue, while
  its task sleeps, and during the timed run;
* **RSS per worker slot** (worker + runner ``VmRSS``) at rest.

On the AWS backend (moto_server on loopback) it measures the idle CPU of a few
workers only (moto is too slow a service for many).

    .venv/bin/python benchmarks/bench_scale.py --workers 200 --tasks 2000 --sleep 1
    .venv/bin/python benchmarks/bench_scale.py --quick          # under a minute
    .venv/bin/python benchmarks/bench_scale.py ... --write      # update RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from results_md import write_section  # noqa: E402

import cloudloop as cl  # noqa: E402
from cloudloop.backends import open_backend  # noqa: E402
from cloudloop.heartbeat import worker_records  # noqa: E402

SECTION = "## Many workers on one machine (bench_scale.py)"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


# ---------------------------------------------------------------- /proc


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def slot(pid: int) -> list[int]:
    """A worker and its task runner (and whatever that started)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def all_pids(workers: list[int]) -> list[int]:
    return [p for w in workers for p in slot(w)]


def cpu_share(workers: list[int], seconds: float) -> float:
    """Mean share of one core per worker slot over ``seconds``."""
    pids = all_pids(workers)
    a = cpu_ticks(pids)
    time.sleep(seconds)
    b = cpu_ticks(pids)
    return (b - a) / TICK / seconds / len(workers)


def machine_busy() -> float:
    """Share of all cores busy over half a second (from /proc/stat)."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)

    b0, t0 = read()
    time.sleep(0.5)
    b1, t1 = read()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(limit: float = 60.0, below: float = 0.15) -> float:
    """Until the machine is quiet (under ``below`` of its cores busy); seconds waited."""
    t0 = time.monotonic()
    while machine_busy() > below and time.monotonic() - t0 < limit:
        pass
    return time.monotonic() - t0


# ---------------------------------------------------------------- one backend


def serving(url: str) -> int:
    backend = open_backend(url)
    try:
        return sum(1 for r in worker_records(backend) if r.live())
    finally:
        backend.close()


def run_backend(name: str, url: str, n: int, tasks: int, sleep: float, idle: float) -> dict:
    print(f"[{name}] starting {n} workers", flush=True)
    row: dict = {"backend": name, "workers": n, "tasks": tasks, "sleep": sleep}
    t0 = time.monotonic()
    # as a user starts them: the executor's local workers (it sizes chunks for n)
    with cl.Executor(backend=url, workers=n) as ex:
        if ex._pool is None:  # (started with the first job when requirements are pinned)
            ex._start_deferred()
        pool = ex._pool
        assert pool is not None
        while serving(url) < n:
            if time.monotonic() - t0 > 300:
                raise SystemExit(f"[{name}] only {serving(url)} of {n} workers serving")
            time.sleep(0.2)
        row["startup_s"] = time.monotonic() - t0
        print(f"[{name}] all {n} serving after {row['startup_s']:.1f} s", flush=True)
        # every worker gets a task runner: short tasks until each has one
        for _ in range(5):
            list(ex.map(nap, [0.5] * n))
            if all(children(w) for w in pool.pids):
                break
        with_runner = sum(1 for w in pool.pids if children(w))
        print(f"[{name}] {with_runner} of {n} workers have a task runner", flush=True)
        wait_quiet()
        row["idle_cpu"] = cpu_share(pool.pids, idle)
        row["rss_mb"] = rss(all_pids(pool.pids)) / n / 1e6
        print(f"[{name}] idle: {100 * row['idle_cpu']:.3f} % of a core per worker; "
              f"{row['rss_mb']:.1f} MB per slot", flush=True)  # fmt: skip
        # waiting on a task: every worker runs one long sleep
        waiting = threading.Thread(target=lambda: list(ex.map(nap, [idle + 4.0] * n)))
        waiting.start()
        time.sleep(2.0)
        wait_quiet(limit=2.0)
        row["task_cpu"] = cpu_share(pool.pids, idle)
        waiting.join()
        print(f"[{name}] waiting on a task: {100 * row['task_cpu']:.3f} % of a core "
              "per worker", flush=True)  # fmt: skip
        wait_quiet()
        pids = all_pids(pool.pids)
        c0 = cpu_ticks(pids)
        t = time.monotonic()
        list(ex.map(nap, [sleep] * tasks))
        wall = time.monotonic() - t
        row["run_cpu"] = (cpu_ticks(pids) - c0) / TICK / wall / n
        row["wall"] = wall
        row["ideal"] = tasks * sleep / n
        row["efficiency"] = row["ideal"] / wall
        print(f"[{name}] {tasks} x {sleep:g} s on {n} workers: {wall:.1f} s "
              f"(ideal {row['ideal']:.1f} s): {100 * row['efficiency']:.0f} %; "
              f"{100 * row['run_cpu']:.2f} % of a core per worker", flush=True)  # fmt: skip
    return row


def run_aws(n: int, idle: float) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen([sys.executable, str(ROOT / "tests" / "motoserver.py"), "-H",
                             "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    os.environ.update(_FAKE_AWS)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        url = f"aws://cl-scale-{os.getpid()}/jobs?region=us-east-1&endpoint=http://127.0.0.1:{port}"
        open_backend(url).close()
        print(f"[aws] starting {n} workers", flush=True)
        with cl.Executor(backend=url, workers=n) as ex:
            if ex._pool is None:
                ex._start_deferred()
            assert ex._pool is not None
            t0 = time.monotonic()
            while serving(url) < n and time.monotonic() - t0 < 120:
                time.sleep(0.5)
            list(ex.map(nap, [0.2] * n))
            wait_quiet()
            row = {"backend": "aws", "workers": n, "idle_cpu": cpu_share(ex._pool.pids, idle)}
            print(f"[aws] idle: {100 * row['idle_cpu']:.3f} % of a core per worker", flush=True)
            return row
    finally:
        moto.terminate()
        moto.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=200)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--sleep", type=float, default=1.0)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of each CPU measurement")
    ap.add_argument("--backends", default="sqlite,redis,aws")
    ap.add_argument("--aws-workers", type=int, default=4)
    ap.add_argument(
        "--quick", action="store_true", help="32 workers, 320 x 0.5 s tasks, 3 s windows"
    )
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    if args.quick:
        args.workers, args.tasks, args.sleep, args.idle = 32, 320, 0.5, 3.0
        args.aws_workers = 2
    argv = " ".join([".venv/bin/python", "benchmarks/bench_scale.py", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    tmp = Path(tempfile.mkdtemp(prefix="cl-bench-scale-"))
    rows: list[dict] = []
    try:
        for name in args.backends.split(","):
            if name == "sqlite":
                url = f"sqlite://{tmp / 'sqlite'}"
                rows.append(run_backend(name, url, args.workers, args.tasks, args.sleep, args.idle))
            elif name == "redis":
                from redis_server import RedisServer

                server = RedisServer(tmp / "redis")
                try:
                    url = f"redis://127.0.0.1:{server.port}/0"
                    rows.append(
                        run_backend(name, url, args.workers, args.tasks, args.sleep, args.idle)
                    )
                finally:
                    server.stop()
            elif name == "aws":
                rows.append(run_aws(args.aws_workers, args.idle))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = table(rows, argv, when)
    print("\n" + text)
    if args.write:
        write_section(Path(args.out), SECTION, text)
        print(f"wrote {args.out}")


def table(rows: list[dict], argv: str, when: str) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.3f} %"

    lines = [
        SECTION,
        "",
        f"{when}, `{argv}`, {os.cpu_count()} cores. CPU is the worker process and its",
        "task runner together, as a share of one core; idle is an empty queue, waiting is",
        "a task sleeping; efficiency is T x S / N over the wall time of the run, timed",
        "once every worker and runner is up and the machine is quiet.",
        "",
        "| backend | workers | start-up (all serving) | idle CPU / worker | waiting-on-task "
        "CPU / worker | tasks x sleep | wall (ideal) | efficiency | CPU / worker in the run "
        "| RSS / slot |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["backend"] == "aws":
            lines.append(f"| aws (moto) | {r['workers']} | – | {pct(r['idle_cpu'])} | – | – | – "
                         "| – | – | – |")  # fmt: skip
            continue
        lines.append(
            f"| {r['backend']} | {r['workers']} | {r['startup_s']:.1f} s | {pct(r['idle_cpu'])} "
            f"| {pct(r['task_cpu'])} | {r['tasks']} x {r['sleep']:g} s | {r['wall']:.1f} s "
            f"({r['ideal']:.1f} s) | {100 * r['efficiency']:.0f} % | {pct(r['run_cpu'])} "
            f"| {r['rss_mb']:.1f} MB |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
