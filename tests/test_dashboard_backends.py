"""The dashboard's API reads every backend the same way, through Queue and Store only."""

from __future__ import annotations

import json
import urllib.request

import pytest
import redis_server as rs

import cloudloop as cl
from cloudloop.dashboard import DashboardServer


def _task(i: int) -> int:
    print(f"hello from {i}")
    if i == 1:
        raise RuntimeError("one is not allowed")
    return i


@pytest.fixture(params=["sqlite", "aws", "redis"])
def any_url(request, tmp_path):
    if request.param == "sqlite":
        yield "sqlite://" + str(tmp_path / "backend")
    elif request.param == "aws":
        yield request.getfixturevalue("aws_url")
    else:
        rs.require()
        server = rs.RedisServer(tmp_path / "redis")
        yield server.url()
        server.stop()


def test_api_on_every_backend(any_url):
    with cl.Executor(backend=any_url, workers=1, lease=5, heartbeat=0.5) as ex:
        job = ex.map_job(_task, range(4), chunksize=2, name="everywhere")
        job.wait(timeout=90)
        server = DashboardServer(ex.backend, port=0, job_every=0.2)
        server.start()
        try:
            base, token = server.url.split("?token=")

            def get(path):
                req = urllib.request.Request(base + path, headers={"X-Cloudloop-Token": token})
                with urllib.request.urlopen(req, timeout=30) as r:
                    return json.loads(r.read())

            rows = get("api/jobs")["jobs"]
            assert [(r["id"], r["state"], r["done"]) for r in rows] == [(job.id, "failed", 4)]
            snap = get(f"api/jobs/{job.id}")
            assert snap["failures"][0]["type"] == "RuntimeError"
            assert "one is not allowed" in snap["failures"][0]["traceback"]
            assert sorted(t["i"] for t in snap["tasks"] if t["state"] == "ok") == [0, 2, 3]
            assert snap["workers"] and snap["workers"][0]["done_job"] == 4
            assert get(f"api/jobs/{job.id}/logs/2")["text"] == "hello from 2\n"
        finally:
            server.shutdown()
            server.server_close()
