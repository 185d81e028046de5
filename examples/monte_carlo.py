"""A Monte Carlo simulation with reproducible per-task seeds: pricing a European call.

Each task simulates a batch of stock price paths (geometric Brownian motion)
with ``cl.task_rng()``, a generator seeded from the job seed and the task index
only. The same ``--seed`` therefore gives the same price to the last digit,
however tasks are grouped into messages, how many workers run them, which
worker runs which task, or whether a task was re-run after a lost worker.
The estimate is checked against the Black-Scholes formula.

    python examples/monte_carlo.py                 # or: make demo-montecarlo
    python examples/monte_carlo.py --tasks 8 --paths 20000   # a quick look
    python examples/monte_carlo.py --seed 1        # run it twice: the same digits

Data: none; the simulation makes its own.
"""

from __future__ import annotations

import argparse
import math

import cloudloop as cl

SPOT, STRIKE, RATE, VOL, YEARS, STEPS = 100.0, 105.0, 0.03, 0.25, 1.0, 64


def simulate(paths: int) -> tuple[float, float, int]:
    """Sum and sum of squares of discounted payoffs over ``paths`` simulated paths."""
    import numpy as np

    rng = cl.task_rng()
    dt = YEARS / STEPS
    z = rng.standard_normal((paths, STEPS))
    log_end = np.log(SPOT) + ((RATE - 0.5 * VOL**2) * dt + VOL * math.sqrt(dt) * z).sum(axis=1)
    payoff = np.maximum(np.exp(log_end) - STRIKE, 0.0) * math.exp(-RATE * YEARS)
    return float(payoff.sum()), float((payoff**2).sum()), paths


def black_scholes() -> float:
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    d1 = (math.log(SPOT / STRIKE) + (RATE + 0.5 * VOL**2) * YEARS) / (VOL * math.sqrt(YEARS))
    d2 = d1 - VOL * math.sqrt(YEARS)
    return SPOT * cdf(d1) - STRIKE * math.exp(-RATE * YEARS) * cdf(d2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--paths", type=int, default=50_000, help="paths per task")
    ap.add_argument("--seed", type=int, default=12345, help="the job seed: same seed, same digits")
    ap.add_argument("--chunksize", type=int, default=None, help="tasks per queue message")
    args = ap.parse_args(argv)

    with cl.Executor() as ex:
        job = ex.map_job(
            simulate, [args.paths] * args.tasks,
            name="monte-carlo", seed=args.seed, chunksize=args.chunksize,
        )  # fmt: skip
        print(f"job {job.id}: {args.tasks} tasks x {args.paths:,} paths, seed {args.seed}")
        job.wait(progress=True)
        parts = job.results()

    total, squares, n = (sum(p[i] for p in parts) for i in range(3))
    price = total / n
    stderr = math.sqrt(max(squares / n - price**2, 0.0) / n)
    exact = black_scholes()
    print(f"Monte Carlo price: {price!r} ± {stderr:.4f} ({n:,} paths)")
    print(
        f"Black-Scholes:     {exact:.4f}  (off by {(price - exact) / stderr:+.2f} standard errors)"
    )
    return {"job": job.id, "price": price, "stderr": stderr, "exact": exact}


if __name__ == "__main__":
    main()
