"""Hundreds of model fits: an SVM hyper-parameter grid x 5-fold cross-validation.

The loop a data scientist already has, unchanged: a function of one parameter
set, mapped over the grid. cloudloop runs it as a durable job (here on the
embedded default: an SQLite queue and file store in ./.cloudloop, local worker
processes), shows live progress, and keeps every result and log.

    python examples/grid_search.py                # or: make demo
    CLOUDLOOP_PROFILE=lab python examples/grid_search.py   # same loop, elsewhere
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import statistics
import sys
import time

import cloudloop as cl

C_VALUES = [0.1, 0.3, 1, 3, 10, 30, 100, 1000]
GAMMAS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
FOLDS = 5


@functools.lru_cache(maxsize=1)
def digits():
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


def fit(params: dict) -> dict:
    """Fit one SVM on four folds and score it on the fifth."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import SVC

    X, y = digits()
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0)
    train, test = list(folds.split(X, y))[params["fold"]]
    t0 = time.perf_counter()
    model = SVC(C=params["C"], gamma=params["gamma"]).fit(X[train], y[train])
    accuracy = model.score(X[test], y[test])
    print(
        f"C={params['C']:g} gamma={params['gamma']:g} fold={params['fold']}: accuracy {accuracy:.4f}"
    )
    return {**params, "accuracy": accuracy, "seconds": time.perf_counter() - t0}


def cloudloop_command() -> str:
    """How to type the ``cloudloop`` command from here: ``cloudloop`` when that is on
    PATH and is this Python's, else its path (``.venv/bin/cloudloop`` after ``make demo``:
    the command is in the venv, which a fresh shell has not activated)."""
    exe = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "cloudloop")
    found = shutil.which("cloudloop")
    if found and os.path.realpath(found) == os.path.realpath(exe):
        return "cloudloop"
    rel = os.path.relpath(exe)
    return rel if not rel.startswith("..") else exe


def main() -> None:
    grid = [
        {"C": c, "gamma": g, "fold": k}
        for c, g, k in itertools.product(C_VALUES, GAMMAS, range(FOLDS))
    ]
    print(f"fitting {len(grid)} models ({len(C_VALUES) * len(GAMMAS)} settings x {FOLDS} folds)")
    with cl.Executor() as ex:
        job = ex.map_job(fit, grid, name="svm-grid", retries=1, timeout="5m")
        print(f"job {job.id} on {ex.backend.url} with {ex.workers} local workers")
        job.wait(progress=True)
        rows = job.results()

    scores: dict[tuple, list[float]] = {}
    for r in rows:
        scores.setdefault((r["C"], r["gamma"]), []).append(r["accuracy"])
    ranked = sorted(scores.items(), key=lambda kv: -statistics.mean(kv[1]))
    print("\nbest settings (mean accuracy over 5 folds):")
    for (c, g), accs in ranked[:5]:
        print(
            f"  C={c:<6g} gamma={g:<7g} accuracy={statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}"
        )
    (c, g), accs = ranked[0]
    print(f"\nbest: C={c:g}, gamma={g:g} ({statistics.mean(accs):.2%} accuracy)")
    store = ex.backend.url.split("://", 1)[1] + "/store"
    print(f"per-task results: {store}/jobs/{job.id}/results/   logs: {store}/jobs/{job.id}/logs/")
    cmd = cloudloop_command()
    print(f"  {cmd} status {job.id}    {cmd} logs {job.id} 0")
    print(f"  {cmd} results {job.id} --format csv")


if __name__ == "__main__":
    main()
