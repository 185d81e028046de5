"""Leave-one-out cross-validation of a random forest: one task per left-out row.

Each task fits a forest on every row but one, predicts the row it left out,
and keeps its model and score as per-task output files (``cl.output_dir()``),
so every one of the fitted models can be fetched later with ``job.outputs()``.

    python examples/loo_random_forest.py            # or: make demo-loo
    python examples/loo_random_forest.py --rows 12 --trees 20   # a quick look
    CLOUDLOOP_PROFILE=aws python examples/loo_random_forest.py  # same loop, on spot CPUs

Data: scikit-learn's bundled wine data set (178 rows); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import functools
import json
import pickle

import cloudloop as cl


@functools.lru_cache(maxsize=1)
def wine():
    from sklearn.datasets import load_wine

    return load_wine(return_X_y=True)


def leave_one_out(row: int, trees: int) -> dict:
    """Fit on every row except ``row``; predict it; save the model and the score."""
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    X, y = wine()
    keep = np.arange(len(y)) != row
    model = RandomForestClassifier(n_estimators=trees, random_state=cl.task_seed() % 2**32)
    model.fit(X[keep], y[keep])
    predicted = int(model.predict(X[row : row + 1])[0])
    score = {
        "row": row,
        "true": int(y[row]),
        "predicted": predicted,
        "correct": bool(predicted == y[row]),
    }
    out = cl.output_dir()
    (out / "model.pkl").write_bytes(pickle.dumps(model))
    (out / "score.json").write_text(json.dumps(score))
    return score


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="leave out only the first N rows")
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)

    X, y = wine()
    rows = list(range(len(y) if args.rows is None else min(args.rows, len(y))))
    with cl.Executor() as ex:
        job = ex.map_job(
            leave_one_out, rows, [args.trees] * len(rows), name="loo-forest", seed=args.seed
        )
        print(f"job {job.id}: {len(rows)} fits of a {args.trees}-tree forest, {ex.workers} workers")
        job.wait(progress=True)
        scores = job.results()

    accuracy = sum(s["correct"] for s in scores) / len(scores)
    wrong = [s["row"] for s in scores if not s["correct"]]
    print(f"leave-one-out accuracy: {accuracy:.4f} ({len(scores) - len(wrong)}/{len(scores)})")
    print(f"misclassified rows: {wrong or 'none'}")
    files = job.outputs()
    print(f"{len(files)} per-task files kept (model.pkl, score.json per task), e.g.:")
    first = pickle.loads(files.by_task()[0][0].read())
    print(f"  task 0: {type(first).__name__} with {len(first.estimators_)} trees")
    print(f"  job.outputs().download('loo-models')   or   cl.attach({job.id!r}).outputs()")
    return {"job": job.id, "accuracy": accuracy, "tasks": len(scores)}


if __name__ == "__main__":
    main()
