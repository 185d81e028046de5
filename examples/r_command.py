"""A command task per row: an R script (examples/fit.R) run once per parameter set.

The loop is a shell command template; cloudloop fills ``{n}`` and ``{noise}``
from each row (as data: a value never runs as shell code), ``{seed}`` with the task's reproducible seed, and
runs it in a fresh working directory holding a copy of ``fit.R``. What the
script writes to ``$CLOUDLOOP_OUTPUT`` (``./out`` in that directory) is kept
with the job: here a CSV of coefficients and a PDF plot per task.

    python examples/r_command.py                     # or: make demo-r (needs Rscript)

The same from the shell, with the same nine rows in ``examples/grid.csv``
(``fit.R`` is shipped because the command names it; ``out`` is the output
directory; ``cloudloop`` is ``.venv/bin/cloudloop`` unless the venv is active):

    cd examples && ../.venv/bin/cloudloop run --items grid.csv -- Rscript fit.R {n} {noise} {seed} out

Data: simulated by the R script; nothing is downloaded. R: Debian's ``r-base-core``.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
from pathlib import Path

import cloudloop as cl

SCRIPT = Path(__file__).with_name("fit.R")
TEMPLATE = 'Rscript fit.R {n} {noise} {seed} "$CLOUDLOOP_OUTPUT"'


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="20,100,1000", help="sample sizes")
    ap.add_argument("--noises", default="0.5,2,8", help="noise standard deviations")
    ap.add_argument(
        "--out", default="demo-output/r-outputs", help="where the per-task files are saved"
    )
    args = ap.parse_args(argv)
    if shutil.which("Rscript") is None:
        raise SystemExit("Rscript is not installed (Debian: apt-get install r-base-core)")

    rows = [{"n": n, "noise": s} for n in args.ns.split(",") for s in args.noises.split(",")]
    with cl.Executor() as ex:
        job = ex.command_job(TEMPLATE, rows, files={"fit.R": SCRIPT.read_bytes()}, name="fit.R")
        print(f"job {job.id}: {len(rows)} runs of: {TEMPLATE}")
        job.wait(progress=True)
        results = job.results()  # {"returncode": 0, "stdout": ...} per row

    for r in results:
        print("  " + r["stdout"].strip())
    files = job.outputs()
    print(f"slope estimates (truth 3) from the {len(files)} files the tasks wrote:")
    print(f"  {'n':>6} {'noise':>6} {'slope':>8} {'95% interval':>20}")
    for f in files:
        if f.name == "coefficients.csv":
            slope = list(csv.DictReader(io.StringIO(f.read().decode())))[1]
            lo, hi = float(slope["lower"]), float(slope["upper"])
            print(
                f"  {slope['n']:>6} {slope['noise']:>6} {float(slope['estimate']):8.4f}"
                f"   [{lo:.4f}, {hi:.4f}]"
            )
    saved = files.download(args.out)
    print(f"saved {len(saved)} files under {args.out}/<task>/ (coefficients.csv, fit.pdf)")
    return {"job": job.id, "files": len(saved)}


if __name__ == "__main__":
    main()
