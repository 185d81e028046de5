"""Leave-one-out random forests in R, one R process per worker serving many folds.

Each fold fits ``randomForest(Ozone ~ .)`` on R's airquality data without one
row and predicts that row (examples/loo_rf.R). Started once per worker with
``serve=True``, R loads randomForest and the data once, and cloudloop sends it
the folds as JSON lines (examples/cloudloop.R: ``cloudloop_serve(f)``), rather
than paying R's start-up for every row.

    python examples/loo_r.py              # or: make demo-loo-r (needs Rscript, randomForest, jsonlite)

The same from the shell, with the folds in a CSV file of one column ``i``:

    cd examples && ../.venv/bin/cloudloop run --serve --items folds.csv -- Rscript loo_rf.R --serve

Data: R's built-in airquality (111 complete rows); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import cloudloop as cl

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=111, help="rows held out, 1..111")
    args = ap.parse_args(argv)
    if shutil.which("Rscript") is None:
        raise SystemExit("Rscript is not installed (Debian: apt-get install r-base-core)")
    files = {n: (HERE / n).read_bytes() for n in ("loo_rf.R", "cloudloop.R")}
    rows = [{"i": i} for i in range(1, args.folds + 1)]
    with cl.Executor() as ex:
        job = ex.command_job("Rscript loo_rf.R --serve", rows, files=files, serve=True)
        print(f"job {job.id}: {len(rows)} folds served by one R process per worker")
        job.wait(progress=True)
        folds = job.results()
    rmse = math.sqrt(sum((f["predicted"] - f["observed"]) ** 2 for f in folds) / len(folds))
    print(f"leave-one-out RMSE of Ozone over {len(folds)} folds: {rmse:.2f} ppb")
    return {"job": job.id, "rmse": rmse}


if __name__ == "__main__":
    main()
