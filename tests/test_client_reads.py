"""What a client reads while it waits for a job: each a billed request on S3."""

from __future__ import annotations

import cloudloop as cl
from cloudloop import keys


def _count_gets(job: cl.Job) -> dict[str, int]:
    store, seen = job.backend.store, {}
    real = store.get

    def counting(key: str) -> bytes:
        kind = key.split("/")[2] if key.startswith("jobs/") else key
        seen[kind] = seen.get(kind, 0) + 1
        return real(key)

    store.get = counting  # type: ignore[method-assign]
    return seen


def test_wait_then_results_reads_each_result_part_once(tmp_path):
    with cl.Executor(backend=f"sqlite://{tmp_path}", workers=2) as ex:
        job = ex.map_job(lambda x: x * 2, range(300), chunksize=10)
        job.wait(timeout=120)
        parts = len(job.backend.store.list(keys.results_prefix(job.id)))
        fresh = cl.attach(job.id, backend=f"sqlite://{tmp_path}")
        seen = _count_gets(fresh)
        fresh.wait(timeout=60)  # verifies every part before calling the job finished
        assert fresh.results() == [x * 2 for x in range(300)]
    assert parts >= 30
    assert seen["results"] == parts, seen


def test_cancellation_marker_is_not_read_at_every_poll(tmp_path):
    with cl.Executor(backend=f"sqlite://{tmp_path}", workers=1) as ex:
        job = ex.map_job(lambda x: __import__("time").sleep(0.05) or x, range(60), chunksize=1)
        seen = _count_gets(job)
        assert job.results() == list(range(60))
    # 60 tasks of 50 ms on one worker: ~3 s of polling every 10-50 ms, while the
    # marker is read once per check_interval (2 s here)
    assert seen.get("cancelled", 0) <= 1 + 3 / job.backend.check_interval + 1, seen
