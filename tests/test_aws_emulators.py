"""One job end to end on two independent SQS/S3 implementations: moto and LocalStack.

What passes on one emulator only is that emulator's reading of the API; the
contract suites (tests/contract) run on both too. See docs/backends/aws.md for
where the two differ.
"""

from __future__ import annotations

import time

import pytest
from helpers import kill, wait_for, worker_records

import cloudloop as cl

BIG = 2 << 20  # over any SQS message: the chunk holding it spills to S3


def measure(item):
    i, blob = item
    time.sleep(0.2)
    return i, len(blob)


@pytest.fixture(params=["moto", "localstack"])
def emulator_url(request) -> str:
    return request.getfixturevalue("aws_url" if request.param == "moto" else "localstack_aws_url")


def test_a_job_survives_kill_9_spills_to_s3_and_attaches(emulator_url):
    items = [(i, b"x" * (BIG if i == 0 else i)) for i in range(30)]
    expected = [(i, BIG if i == 0 else i) for i in range(30)]
    with cl.Executor(backend=emulator_url, workers=2, lease=3, heartbeat=0.5) as ex:
        job = ex.map_job(measure, items, chunksize=3)
        assert ex.backend.store.list(f"jobs/{job.id}/inputs/"), "the big chunk went to S3"
        wait_for(lambda: job.status().done >= 3, what="progress")

        def busy():
            return [r for r in worker_records(ex.backend) if r.get("task") is not None]

        kill(wait_for(busy, what="a busy worker")[0]["pid"])
        assert job.results(timeout=120) == expected
    again = cl.attach(job.id, backend=emulator_url)  # a fresh client
    assert again.results(timeout=30) == expected
    status = again.status()
    assert (status.state, status.total, status.done, status.failed) == (
        cl.JobState.COMPLETED, 30, 30, 0,
    )  # fmt: skip
