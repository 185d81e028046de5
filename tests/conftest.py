"""Shared fixtures: every test gets its own backend directory and working directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3/SQS/EC2/IAM API server on loopback (moto_server), for the whole session."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("motoserver.py")),
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in _FAKE_AWS}
    os.environ.update(_FAKE_AWS)
    yield f"http://127.0.0.1:{port}"
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)


_FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def aws_url(moto_endpoint, request) -> str:
    """A fresh aws:// backend (its own bucket and queue) on the loopback API server."""
    import secrets

    bucket = f"cl-{secrets.token_hex(4)}"
    return f"aws://{bucket}/jobs?region=us-east-1&endpoint={moto_endpoint}"


@pytest.fixture
def box(tmp_path, monkeypatch):
    """A cloud-in-a-box (cloudbox.py), its simulator running; the client has fake keys."""
    import netns
    from cloudbox import FAKE_KEYS, CloudBox

    netns.require()
    for k, v in FAKE_KEYS.items():  # the client's own keys; machines get none
        monkeypatch.setenv(k, v)
    (tmp_path / "box").mkdir()
    box = CloudBox(tmp_path / "box").start()
    yield box
    box.close()


@pytest.fixture(scope="session")
def localstack_endpoint(tmp_path_factory):
    """LocalStack's S3 and SQS (implementations of their own, not moto's) in a network
    namespace of their own, for the whole session; skipped locally where it cannot
    run (see tests/localstack.py), failed in CI."""
    import localstack

    localstack.require()
    ls = localstack.LocalStack(tmp_path_factory.mktemp("localstack"))
    saved = {k: os.environ.get(k) for k in _FAKE_AWS}
    os.environ.update(_FAKE_AWS)
    yield ls.endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    ls.close()


@pytest.fixture
def localstack_aws_url(localstack_endpoint) -> str:
    """A fresh aws:// backend (its own bucket and queue) on LocalStack."""
    import secrets

    bucket = f"cl-{secrets.token_hex(4)}"
    return f"aws://{bucket}/jobs?region=us-east-1&endpoint={localstack_endpoint}"


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (one per test module)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # pragma: no cover - the test extra installs it
        if os.environ.get("CI"):
            pytest.fail(f"CI must have playwright (pip install -e '.[test]'): {e}")
        pytest.skip(f"playwright is not installed: {e}")
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium (scripts/test-deps.sh installs it)")
        pytest.skip("no /usr/bin/chromium: run `bash scripts/test-deps.sh`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory):
    """A redis-server of the test module's own (tests/redis_server.py)."""
    import redis_server as rs

    rs.require()
    server = rs.RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
