"""Leave-one-out random forests in R, 2 workers each, side by side in one run.

    python benchmarks/bench_r_loo.py [--folds 111] [--repeat 3] [--write]

The same folds (examples/loo_rf.R: randomForest(Ozone ~ .) on R's airquality,
111 complete rows, 300 trees, one held-out row each) four ways:

* cloudloop, a process per row: ``Rscript loo_rf.R {i} {seed}`` per task, so
  every task pays R's start-up, ``library(randomForest)`` and the data;
* cloudloop ``--serve``: ``Rscript loo_rf.R --serve`` once per worker, the rows
  sent as JSON lines (examples/cloudloop.R);
* R's doMC: ``foreach(i = folds) %dopar% fold(i)`` with ``registerDoMC(2)``;
* R's furrr: ``future_map(folds, fold)`` with ``plan(multisession, workers = 2)``.

Each is timed end to end as a user would run it (the R ones as one ``Rscript``,
start-up included; cloudloop from ``Executor()`` to the last result, on a fresh
embedded store), median of --repeat. Needs Rscript with randomForest, jsonlite,
doMC and furrr (scripts/bench-deps.sh installs Debian's packages).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
WORKERS = 2

R_PEERS = {
    "R doMC (registerDoMC(2), foreach %dopar%)": """
suppressMessages({library(randomForest); library(doMC)})
registerDoMC(2)
data <- airquality[complete.cases(airquality), ]
res <- foreach(i = seq_len(FOLDS)) %dopar% {
  set.seed(i); fit <- randomForest(Ozone ~ ., data = data[-i, ], ntree = 300)
  unname(predict(fit, data[i, ]))
}
cat(length(res), "\\n")
""",
    "R furrr (plan(multisession, workers = 2))": """
suppressMessages({library(randomForest); library(furrr)})
plan(multisession, workers = 2)
data <- airquality[complete.cases(airquality), ]
res <- future_map(seq_len(FOLDS), function(i) {
  set.seed(i); fit <- randomForest::randomForest(Ozone ~ ., data = data[-i, ], ntree = 300)
  unname(predict(fit, data[i, ]))
}, .options = furrr_options(seed = NULL))
cat(length(res), "\\n")
""",
}


def _files() -> dict[str, bytes]:
    return {n: (EXAMPLES / n).read_bytes() for n in ("loo_rf.R", "cloudloop.R")}


def run_cloudloop(folds: int, serve: bool) -> float:
    import cloudloop as cl

    rows = [{"i": i} for i in range(1, folds + 1)]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with cl.Executor(backend=f"sqlite://{d}/store", workers=WORKERS) as ex:
            if serve:
                job = ex.command_job("Rscript loo_rf.R --serve", rows, files=_files(), serve=True)
            else:
                job = ex.command_job("Rscript loo_rf.R {i} {seed}", rows, files=_files())
            out = job.results()
        took = time.perf_counter() - t0
    assert len(out) == folds
    return took


def run_r(script: str, folds: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["Rscript", "-e", script.replace("FOLDS", str(folds))],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    took = time.perf_counter() - t0
    if proc.returncode != 0 or proc.stdout.split()[:1] != [str(folds)]:
        raise SystemExit(f"R failed: {proc.stdout}{proc.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=111)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    args = ap.parse_args()
    ways = {
        "cloudloop, a process per row": lambda: run_cloudloop(args.folds, serve=False),
        "cloudloop --serve (one R process per worker)": lambda: run_cloudloop(
            args.folds, serve=True
        ),
        **{name: (lambda s=s: run_r(s, args.folds)) for name, s in R_PEERS.items()},
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.repeat):  # interleaved: a noisy moment hits every way alike
        for name, fn in ways.items():
            times[name].append(fn())
            print(f"  {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["cloudloop --serve (one R process per worker)"]
    lines = [
        "## Leave-one-out random forests in R (bench_r_loo.py)",
        "",
        f"{datetime.date.today()} · `python benchmarks/bench_r_loo.py --folds {args.folds} "
        f"--repeat {args.repeat}{' --write' if args.write else ''}` · {platform.python_version()} · {os.cpu_count()} cores · "
        f"{WORKERS} workers each · median of {args.repeat}, interleaved",
        "",
        f"{args.folds} folds of `randomForest(Ozone ~ ., ntree = 300)` on airquality "
        "(examples/loo_rf.R), end to end including start-up.",
        "",
        "| way | seconds | time / cloudloop --serve |",
        "|---|---:|---:|",
        *(f"| {k} | {v:.2f} | {v / base:.2f}x |" for k, v in med.items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        path = ROOT / "benchmarks" / "RESULTS.md"
        old = path.read_text()
        head = "## Leave-one-out random forests in R (bench_r_loo.py)"
        if head in old:
            before, _, rest = old.partition(head)
            after = rest.split("\n## ", 1)
            old = before + ("## " + after[1] if len(after) > 1 else "")
        path.write_text(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
