"""Reproducible per-task randomness, and profiles."""

from __future__ import annotations

import random

import numpy as np
import pytest

import cloudloop as cl
from cloudloop.config import load_profile, parse_duration, parse_size


def draw(i, rng=None):
    return (cl.task_seed(), random.random(), float(np.random.random()), float(rng.random()))


def own_streams(i, rng=None):
    return (cl.task_seed(), float(cl.task_rng().random()), float(rng.random()))


def test_seeds_identical_across_chunk_sizes_and_worker_counts(url):
    a = cl.map(own_streams, range(40), backend=url, workers=1, seed=42, chunksize=1)
    b = cl.map(own_streams, range(40), backend=url, workers=2, seed=42, chunksize=7)
    c = cl.map(own_streams, range(40), backend=url, workers=2, seed=42)
    assert a == b == c
    assert len({row[0] for row in a}) == 40  # every task has its own stream
    d = cl.map(own_streams, range(40), backend=url, workers=2, seed=43)
    assert d != a


def test_seed_globals_makes_plain_random_and_numpy_reproducible(url):
    a = cl.map(draw, range(30), backend=url, workers=1, seed=5, chunksize=1, seed_globals=True)
    b = cl.map(draw, range(30), backend=url, workers=2, seed=5, chunksize=4, seed_globals=True)
    assert a == b
    assert len({row[1] for row in a}) == 30


def test_seed_is_the_same_on_retry(make_executor, tmp_path):
    def fails_once(path):
        import pathlib

        p = pathlib.Path(path)
        first = not p.exists()
        p.write_text("x")
        seed = cl.task_seed()
        if first:
            raise RuntimeError(str(seed))
        return seed

    ex = make_executor()
    job = ex.map_job(fails_once, [str(tmp_path / "m")], retries=1, seed=7)
    (seed,) = job.results()
    assert "RuntimeError: " + str(seed) in job.logs(0)


def test_task_api_works_outside_a_task():
    assert isinstance(cl.task_seed(), int)
    cl.progress(0.5)
    cl.checkpoint({"x": 1})
    assert cl.restore("default") == "default"


def test_durations_and_sizes():
    assert (
        parse_duration("10m") == 600 and parse_duration(5) == 5 and parse_duration("1.5h") == 5400
    )
    assert parse_size("2GB") == 2 * 10**9 and parse_size("512MiB") == 512 * 2**20
    with pytest.raises(cl.ConfigError):
        parse_duration("ten minutes")


def test_default_profile_is_local_sqlite_in_cwd(tmp_path):
    p = load_profile()
    assert p.name == "local" and p.provider == "local"
    assert p.backend == "sqlite://" + str(tmp_path / ".cloudloop")


PROFILES = """
default_profile = "small"

[profiles.small]
backend = "sqlite://{dir}/small"
workers = 1
retries = 2
timeout = "5m"
lease = "10s"

[profiles.other]
backend = "sqlite://{dir}/other"
workers = 0
"""


def test_profiles_from_cloudloop_toml(tmp_path, monkeypatch):
    (tmp_path / "cloudloop.toml").write_text(PROFILES.format(dir=tmp_path))
    p = load_profile()
    assert p.name == "small" and p.workers == 1 and p.job.retries == 2 and p.job.timeout == 300
    assert p.worker.lease == 10
    monkeypatch.setenv("CLOUDLOOP_PROFILE", "other")
    assert load_profile().name == "other"
    assert load_profile("small").name == "small"
    with pytest.raises(cl.ConfigError, match="profile 'nope' is not defined.*known: .*other"):
        load_profile("nope")


def square(x):
    return x * x


def test_profile_decides_where_the_same_loop_runs(tmp_path, monkeypatch):
    (tmp_path / "cloudloop.toml").write_text(PROFILES.format(dir=tmp_path))
    assert cl.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert (tmp_path / "small" / "queue.db").exists()
    monkeypatch.setenv("CLOUDLOOP_PROFILE", "other")
    with cl.Executor() as ex:
        assert ex.workers == 0 and ex.backend.url == f"sqlite://{tmp_path}/other"


def test_bad_profile_values_say_where(tmp_path):
    (tmp_path / "cloudloop.toml").write_text('[profiles.x]\ntimeout = "whenever"\n')
    with pytest.raises(cl.ConfigError, match="profile 'x' in .*cloudloop.toml: timeout"):
        load_profile("x")
    (tmp_path / "cloudloop.toml").write_text("[profiles.x\n")
    with pytest.raises(cl.ConfigError, match="not valid TOML"):
        load_profile("x")
