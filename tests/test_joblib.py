"""joblib and scikit-learn on cloudloop workers: backend="cloudloop"."""

from __future__ import annotations

import os
import subprocess
import sys

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed

import cloudloop as cl
from cloudloop.backends import open_backend


def _where(x):
    return x * x, cl.task_index(), os.environ.get("CLOUDLOOP_WORKER_ID"), os.getpid()


def _boom(x):
    if x == 3:
        raise ValueError(f"bad x {x}")
    return x


def _jobs_named(url, name):
    store = open_backend(url).store
    return [
        k.rsplit("/", 1)[1]
        for k in store.list("index/")
        if cl.attach(k.rsplit("/", 1)[1], backend=url).name == name
    ]


def test_import_cloudloop_does_not_import_joblib_but_registers_on_its_import():
    code = (
        "import sys, cloudloop\n"
        "assert 'joblib' not in sys.modules and 'numpy' not in sys.modules\n"
        "import joblib.parallel\n"
        "assert 'cloudloop' in joblib.parallel.BACKENDS\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    joblib_first = (
        "import joblib.parallel, cloudloop\nassert 'cloudloop' in joblib.parallel.BACKENDS\n"
    )
    subprocess.run([sys.executable, "-c", joblib_first], check=True)


def test_parallel_delayed_runs_in_cloudloop_workers(url):
    with joblib.parallel_config(backend="cloudloop", url=url, workers=2, lease=3):
        out = Parallel(n_jobs=-1)(delayed(_where)(x) for x in range(12))
    assert [o[0] for o in out] == [x * x for x in range(12)]
    assert all(o[1] is not None for o in out), "every call ran inside a cloudloop task"
    assert {o[3] for o in out}.isdisjoint({os.getpid()})
    assert all(o[2] for o in out)
    (job_id,) = _jobs_named(url, "joblib")
    assert cl.attach(job_id, backend=url).status().done >= 1


def test_a_failing_call_raises_its_own_type_and_the_old_api_works(url):
    with (
        joblib.parallel_backend("cloudloop", url=url, workers=2, lease=3),
        pytest.raises(ValueError, match="bad x 3"),
    ):
        Parallel(n_jobs=-1)(delayed(_boom)(x) for x in range(6))


def test_grid_search_and_cross_val_score_match_n_jobs_1(url):
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": [0.01, 0.1]}
    local = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)
    local_cv = cross_val_score(SVC(C=3), X, y, cv=4, n_jobs=1)

    with joblib.parallel_config(backend="cloudloop", url=url, workers=2, lease=3):
        remote = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
        remote_cv = cross_val_score(SVC(C=3), X, y, cv=4, n_jobs=-1)

    assert remote.best_params_ == local.best_params_
    np.testing.assert_array_equal(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )
    np.testing.assert_array_equal(remote_cv, local_cv)
    jobs = _jobs_named(url, "joblib")
    assert len(jobs) == 2, "one cloudloop job per Parallel call (the fit, the scores)"
    done = sum(cl.attach(j, backend=url).status().done for j in jobs)
    assert done >= 2


def _column_sum(X, j):
    from cloudloop.joblib_backend import _loaded

    return float(X[:, j].sum()), any(v is X for v in _loaded.values())


def test_a_large_argument_is_stored_once_and_loaded_once_per_worker(url):
    X = np.arange(300_000, dtype=float).reshape(-1, 10)  # 2.4 MB, in every batch
    with joblib.parallel_config(backend="cloudloop", url=url, workers=2, lease=3):
        out = Parallel(n_jobs=-1, batch_size=1)(delayed(_column_sum)(X, j) for j in range(10))
    assert [o[0] for o in out] == [float(X[:, j].sum()) for j in range(10)]
    assert all(o[1] for o in out), "X came from the worker's cache of shared arguments"
    (job_id,) = _jobs_named(url, "joblib")
    store = open_backend(url).store
    assert len(store.list(f"jobs/{job_id}/shared/")) == 1


def test_any_backend_the_same_calls_on_sqs_and_s3(aws_url):
    X = np.ones((100_000, 2))  # 1.6 MB: shared through S3
    with joblib.parallel_config(backend="cloudloop", url=aws_url, workers=2, lease=5):
        out = Parallel(n_jobs=-1)(delayed(_column_sum)(X, j % 2) for j in range(6))
    assert [o[0] for o in out] == [100_000.0] * 6
    assert all(o[1] for o in out)


def test_nested_parallelism_inside_a_task_runs_sequentially(url):
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV

    X, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=6, n_jobs=-1, random_state=0)  # nested Parallel
    grid = {"max_depth": [2, 4]}
    local = GridSearchCV(forest, grid, cv=2, n_jobs=1).fit(X, y)
    with joblib.parallel_config(backend="cloudloop", url=url, workers=2, lease=3):
        remote = GridSearchCV(forest, grid, cv=2, n_jobs=-1).fit(X, y)
        nested = Parallel(n_jobs=-1)(delayed(_inner_backend)() for _ in range(2))
    np.testing.assert_array_equal(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )
    assert nested == [("SequentialBackend", 1)] * 2


def _inner_backend():
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    return type(backend).__name__, joblib.effective_n_jobs(-1)


def test_effective_n_jobs_follows_workers():
    from cloudloop.joblib_backend import CloudloopBackend

    b = CloudloopBackend(workers=5)
    assert b.effective_n_jobs(-1) == 5
    assert b.effective_n_jobs(-2) == 4
    assert b.effective_n_jobs(3) == 3
    with pytest.raises(ValueError):
        b.effective_n_jobs(0)
    with pytest.raises(cl.ConfigError):
        CloudloopBackend(workers=-1)


def test_n_jobs_minus_1_on_a_remote_profile_counts_live_workers(tmp_path, url):
    from helpers import wait_for

    from cloudloop.joblib_backend import CloudloopBackend

    (tmp_path / "cloudloop.toml").write_text(
        f'[profiles.lab]\nbackend = "{url}"\nprovider = "ssh"\nhosts = ["n1"]\n'
    )
    backend = CloudloopBackend(profile="lab")
    assert backend.effective_n_jobs(-1) == (os.cpu_count() or 1)  # none yet: this machine's
    cmd = [sys.executable, "-m", "cloudloop", "worker", "--backend", url, "--heartbeat", "0.5"]
    n = 4 if os.cpu_count() == 3 else 3  # a count this machine's cores cannot fake
    workers = [subprocess.Popen(cmd, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        wait_for(lambda: backend.effective_n_jobs(-1) == n, timeout=30, what="live workers")
        assert backend.effective_n_jobs(-2) == n - 1
    finally:
        for p in workers:
            p.terminate()
        for p in workers:
            p.wait(10)
