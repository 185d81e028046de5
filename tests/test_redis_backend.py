"""The redis:// backend beyond the contract suites: URLs, errors, leases, a restart mid-job."""

from __future__ import annotations

import time

import pytest
import redis_server as rs
from helpers import wait_for

import cloudloop as cl
from cloudloop import codec, keys
from cloudloop.backends import open_backend
from cloudloop.errors import ConfigError, ConnectionFailed, LeaseLost


@pytest.fixture
def server(tmp_path):
    rs.require()
    s = rs.RedisServer(tmp_path / "redis", fsync_always=True)
    yield s
    s.stop()


@pytest.mark.parametrize(
    "url, words",
    [
        ("redis://host:notaport/0", "not a valid Redis URL"),
        ("redis:///0", "names no host"),
        ("redis://localhost:6379/zero", "not a database number"),
        ("redis://localhost:6379/0?colour=red", "unknown parameter"),
        ("redis://localhost:6379/0?prefix=a:b", "prefix must be"),
        ("redis://localhost:6379/0?store=aws://b/p", "store= is not supported"),
    ],
)
def test_wrong_urls_say_what_is_wrong(url, words):
    with pytest.raises(ConfigError, match=words):
        open_backend(url)


def test_unreachable_redis_fails_fast_with_what_to_do():
    port = rs.free_port()  # nobody listens there
    t = time.monotonic()
    with pytest.raises(
        ConnectionFailed, match=f"cannot reach Redis at 127.0.0.1:{port}/0.*running"
    ):
        open_backend(f"redis://127.0.0.1:{port}/0")
    assert time.monotonic() - t < 10


def test_password_missing_or_wrong_is_a_clear_error(tmp_path):
    rs.require()
    s = rs.RedisServer(tmp_path / "r", password="right")
    try:
        with pytest.raises(ConfigError, match="needs a password"):
            open_backend(f"redis://127.0.0.1:{s.port}/0")
        with pytest.raises(ConfigError, match="refused the credentials"):
            open_backend(f"redis://:wrong@127.0.0.1:{s.port}/0")
        with open_backend(s.url()) as b:
            b.store.put("k", b"v")
            assert b.store.get("k") == b"v"
    finally:
        s.stop()


def test_released_token_is_stale_and_expired_but_unclaimed_lease_can_extend(server):
    with open_backend(server.url()) as b:
        q = b.queue
        q.put([b"x", b"y"])
        first, second = q.lease(2, lease_s=1)
        q.release([first])
        with pytest.raises(LeaseLost):
            q.ack([first])  # released: the old holder no longer owns it
        time.sleep(1.2)  # second's lease has expired, but nobody took it yet
        q.extend([second], lease_s=30)
        got = q.lease(5, lease_s=30)
        assert [x.body for x in got] == [b"x"] and got[0].attempt == 2
        q.ack([second, got[0]])
        assert q.stats().total == 0


def test_backends_with_different_prefixes_do_not_see_each_other(server):
    with open_backend(server.url(prefix="a")) as a, open_backend(server.url(prefix="b")) as b:
        a.queue.put([b"only-a"])
        a.store.put("k", b"a")
        assert b.queue.lease(5, lease_s=30) == []
        assert b.store.list("") == []
        assert a.key != b.key


def _square(i):
    time.sleep(0.02)
    return i * i


def test_redis_restarted_mid_job_loses_nothing(server, tmp_path):
    """kill -9 of Redis (appendonly, fsync always) while workers run: every result, once."""
    url = server.url(prefix="job")
    n = 300
    with cl.Executor(backend=url, workers=2, lease=10, heartbeat=0.5) as ex:
        job = ex.map_job(_square, range(n), chunksize=10)
        done_before = wait_for(lambda: job.status().done, timeout=60, what="first results")
        server.restart()
        assert done_before < n, "the job finished before Redis was restarted"
        results = job.results(timeout=120)
    assert results == [i * i for i in range(n)]
    assert sorted(job.outcomes()) == list(range(n))
    with open_backend(url) as b:
        indices = []
        for key in b.store.list(keys.results_prefix(job.id)):
            _, _, rows = codec.part_rows(b.key, b.store.get(key), key)
            indices += [r[0] for r in rows]
        assert sorted(set(indices)) == list(range(n))
        assert b.queue.stats().total == 0


def test_an_expired_lease_behind_many_live_ones_is_still_reclaimed(server):
    """The reclaim scan resumes where it stopped, so a long pending list is covered."""
    with open_backend(server.url()) as b:
        q = b.queue
        q.put([str(i).encode() for i in range(300)])
        assert len(q.lease(299, lease_s=60)) == 299  # live leases ahead of it in the list
        (last,) = q.lease(1, lease_s=0.5)
        time.sleep(0.7)
    with open_backend(server.url()) as b:  # a fresh client: its scan starts at the beginning
        got = b.queue.lease(1, lease_s=30, wait_s=5)
        assert [(x.id, x.attempt) for x in got] == [(last.id, 2)]
