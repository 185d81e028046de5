"""Shared fixtures: every test gets its own backend directory and working directory."""

from __future__ import annotations

import pytest

import cloudloop as cl


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("CLOUDLOOP_PROFILE", "CLOUDLOOP_CONFIG", "CLOUDLOOP_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture
def url(tmp_path) -> str:
    return "sqlite://" + str(tmp_path / "backend")


@pytest.fixture
def make_executor(url):
    """Executors on the test's backend, shut down (workers stopped) after the test."""
    made: list[cl.Executor] = []

    def make(workers: int = 2, **options) -> cl.Executor:
        options.setdefault("lease", 3)
        options.setdefault("heartbeat", 1)
        ex = cl.Executor(backend=url, workers=workers, **options)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False, cancel_futures=True)
        if ex._pool is not None:
            ex._pool.stop(timeout=5)
