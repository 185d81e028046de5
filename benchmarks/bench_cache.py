"""What ``cache=True`` costs and saves: a 20,000 tiny-task map, without the cache,
with a cold cache (every key computed, every result packed) and a warm one (every
task a hit), on the sqlite backend and on the aws backend (moto_server on loopback).

    python benchmarks/bench_cache.py [--tasks 20000] [--repeat 3] [--out benchmarks/RESULTS.md]

Each backend gets one Executor with 2 local workers, started and warmed before
anything is timed; each run is ``ex.map_job(square, range(n), ...).results()``,
submission to the last result. A cold run uses a ``cache_version`` never used
before (so nothing hits); the warm run after it uses the same one. Medians of
``--repeat`` runs; ratios are to the run without the cache in the same round.

On aws, every AWS API request the client makes is counted with botocore events
(the counter of ``bench_aws.py``), and the workers' too (through a
``sitecustomize`` on their ``PYTHONPATH``): requests per task of a warm run are
what the cache's lookup and copy cost; workers polling an empty queue during a
run are counted apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_aws import COUNTER_SRC, FAKE_AWS, SITECUSTOMIZE_SRC, start_moto
from results_md import write_section

SECTION = "## The cache (issue 16)"
WORKERS = 2


def square(x):
    return x * x


def one_run(ex, n: int, **options) -> float:
    t0 = time.perf_counter()
    out = ex.map_job(square, range(n), **options).results()
    wall = time.perf_counter() - t0
    assert out == [x * x for x in range(n)]
    return wall


def rounds(ex, n: int, repeat: int, tag: str, counter=None, counts_dir: Path | None = None):
    """(walls by kind, client requests of the last warm run, workers' requests then)."""
    walls: dict[str, list[float]] = {"none": [], "cold": [], "warm": []}
    warm_client: Counter = Counter()
    warm_workers: Counter = Counter()
    for r in range(repeat):
        version = f"{tag}-{r}-{time.time_ns()}"
        walls["none"].append(one_run(ex, n))
        walls["cold"].append(one_run(ex, n, cache=True, cache_version=version))
        if counter is not None:
            counter.reset()
            before = _workers_sent(counts_dir)
        walls["warm"].append(one_run(ex, n, cache=True, cache_version=version))
        if counter is not None:
            warm_client = Counter(counter.snapshot()["sends"])
            time.sleep(1.5)  # the workers write their counts every second
            warm_workers = _workers_sent(counts_dir) - before
        print(
            f"  {tag} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in walls.items())
        )
    return walls, warm_client, warm_workers


def _workers_sent(d: Path | None) -> Counter:
    total: Counter = Counter()
    for f in (d or Path("/nonexistent")).glob("*.json"):
        try:
            total.update(json.loads(f.read_text())["sends"])
        except (OSError, ValueError, KeyError):
            pass
    return total


def key_cost(n: int = 20_000) -> tuple[float, float]:
    """Microseconds per task key (a small int argument) and per function key."""
    from cloudloop import cachekey

    fk = cachekey.function_key(square)
    t0 = time.perf_counter()
    for i in range(n):
        cachekey.task_key(fk, (i,), {}, i)
    per_task = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(200):
        cachekey.function_key(square)
    return per_task, (time.perf_counter() - t0) / 200 * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    import cloudloop as cl

    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    results = {}
    print(f"sqlite, {args.tasks} tasks x {args.repeat}")
    with cl.Executor(backend=f"sqlite://{tmp}/store", workers=WORKERS) as ex:
        one_run(ex, 2000)
        results["sqlite"] = rounds(ex, args.tasks, args.repeat, "sqlite")

    (tmp / "site").mkdir()
    (tmp / "site" / "_cl_count.py").write_text(COUNTER_SRC)
    (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE_SRC)
    sys.path.insert(0, str(tmp / "site"))
    import _cl_count

    _cl_count.install(auto_dump=False)
    moto, endpoint = start_moto()
    os.environ.update(FAKE_AWS)
    counts = tmp / "counts"
    counts.mkdir()
    os.environ["CL_BENCH_COUNTS"] = str(counts)  # the workers count and write every second
    os.environ["PYTHONPATH"] = os.pathsep.join([str(tmp / "site"), *sys.path])
    try:
        url = f"aws://bench-cache/jobs?region=us-east-1&endpoint={endpoint}"
        print(f"aws (moto), {args.tasks} tasks x {args.repeat}")
        with cl.Executor(backend=url, workers=WORKERS) as ex:
            one_run(ex, 2000)
            results["aws"] = rounds(ex, args.tasks, args.repeat, "aws", _cl_count, counts)
    finally:
        moto.terminate()
    per_task, per_fn = key_cost()
    write(args, results, per_task, per_fn)


def write(args, results, per_task: float, per_fn: float) -> None:
    n = args.tasks
    med = {b: {k: statistics.median(v) for k, v in r[0].items()} for b, r in results.items()}
    lines = [
        f"Produced by `python benchmarks/bench_cache.py --tasks {n} --repeat {args.repeat}` on "
        f"{time.strftime('%Y-%m-%d')}, CPython {platform.python_version()}, "
        f"{os.cpu_count()} cores, 2 local workers; median of {args.repeat} rounds, each "
        "round a run without the cache, a cold one (a new `cache_version`: every key "
        "computed, every result packed) and a warm one (the same version: every task a hit).",
        "",
        "| backend | no cache s | cold s | warm s | cold / none | warm / none |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for b, m in med.items():
        lines.append(
            f"| {b} | {m['none']:.2f} | {m['cold']:.2f} | {m['warm']:.2f} | "
            f"{m['cold'] / m['none']:.2f}x | {m['warm'] / m['none']:.2f}x |"
        )
    _, client, workers = results["aws"]
    total = sum(client.values())
    lines += [
        "",
        f"AWS requests of the last warm run of {n:,} tasks (all hits), by the client: "
        f"{total:,} ({total / n:.4f} per task):",
        "",
        "| operation | requests |",
        "|---|---:|",
        *(f"| {op} | {k:,} |" for op, k in sorted(client.items(), key=lambda x: -x[1])),
        "",
        f"The two workers meanwhile made {sum(workers.values()):,} requests (polling an "
        "empty queue and heartbeats; no task ran).",
        "",
        f"Key computation alone: {per_task:.1f} us per task key (one small int argument), "
        f"{per_fn:.0f} us per function key (`square`).",
    ]
    write_section(Path(args.out), SECTION, "\n".join([SECTION, "", *lines]) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
