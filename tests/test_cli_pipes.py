"""`cloudloop results JOB | head` (and logs): the reader leaving ends the
command quietly, with no BrokenPipeError traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cloudloop as cl


def _line(i):
    print("a log line of task", i, "x" * 60)
    return "v" * 80


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipes")
    with cl.Executor(backend=f"sqlite://{d}/.cloudloop", workers=1) as ex:
        job = ex.map_job(_line, range(3000))
        job.wait(timeout=120)
    return d, job.id


CASES = [
    ("results jsonl", ["results", "{job}"]),
    ("results csv", ["results", "{job}", "--format", "csv"]),
    ("logs", ["logs", "{job}"]),
]


@pytest.mark.parametrize("name,argv", CASES, ids=[c[0] for c in CASES])
def test_a_reader_that_leaves_ends_the_command_quietly(job_dir, name, argv):
    d, job = job_dir
    exe = Path(sys.executable).with_name("cloudloop")
    words = " ".join(a.format(job=job) for a in argv)
    proc = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; {exe} {words} --backend sqlite://{d}/.cloudloop | head -1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.count("\n") == 1, proc.stdout[:200]
    assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141), (proc.returncode, proc.stderr)
