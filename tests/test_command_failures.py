"""Command tasks that fail: a signal is a TaskCrashed naming it, an exit status a
CommandFailed; messages name the row of the user's file (row 1 is the first
data row, task 0); logs and failures carry the command's output and the reason,
never cloudloop's own traceback. Real runs: sqlite backend, local workers."""

from __future__ import annotations

import pytest

import cloudloop as cl
from cloudloop.commands import died_of
from cloudloop.errors import CommandFailed, TaskCrashed

# (id, command, exception type, words the message must hold)
CASES = [
    ("shell-killed", "echo before >&2; kill -9 $$", TaskCrashed, ["SIGKILL (signal 9)", "memory"]),
    (
        "child-killed",
        "echo before >&2; sh -c 'kill -9 $$'",
        TaskCrashed,
        ["SIGKILL (signal 9)", "out-of-memory"],
    ),
    ("child-segv", "echo before >&2; sh -c 'kill -SEGV $$'", TaskCrashed, ["SIGSEGV (signal 11)"]),
    ("exit-137-is-a-status", "echo before >&2; exit 137", CommandFailed, ["status 137"]),
    ("exit-3", "echo before >&2; exit 3", CommandFailed, ["status 3"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_failed_command_says_why_and_which_row(make_executor, case):
    _, command, kind, words = case
    with make_executor(workers=1) as ex:
        job = ex.command_job("test {n} = 2 || exit 0; " + command, [{"n": 1}, {"n": 2}])
        job.wait(timeout=60)
        failures = job.failures()
    assert [f.index for f in failures] == [1]
    f = failures[0]
    assert isinstance(f.exception, kind), f.exception
    message = str(f.exception)
    assert message.startswith("row 2 (task 1): "), message
    for w in words:
        assert w in message, message
    if kind is TaskCrashed:
        assert "status 1" not in message
    for text in (f.log, f.traceback, job.logs(1)):
        assert "Traceback" not in text and "cloudloop/" not in text, text
    assert "before" in f.log and "row 2 (task 1)" in f.log


# (rc, stderr tail, signal or None)
DIED = [
    (-9, "", 9),
    (137, "Killed\n", 9),
    (139, "x\nSegmentation fault\n", 11),
    (134, "sh: 1: Aborted (core dumped)\n", 6),
    (137, "", None),
    (137, "done\n", None),
    (1, "Killed\n", None),
    (255, "Killed\n", None),
]


@pytest.mark.parametrize("rc, tail, sig", DIED)
def test_died_of_tells_a_signal_from_an_exit_status(rc, tail, sig):
    assert died_of(rc, tail) == sig


def test_a_bad_row_is_named_by_its_row_number(make_executor):
    with make_executor(workers=1) as ex:
        job = ex.command_job("echo {x:d}", [{"x": "1"}, {"x": "1"}, {"x": "a"}])
        job.wait(timeout=60)
        (f,) = job.failures()
    assert f.index == 2 and str(f.exception).startswith("row 3 (task 2)"), f.exception
    assert "Traceback" not in f.log


def test_command_failed_still_the_type_users_catch():
    assert issubclass(TaskCrashed, cl.TaskFailure) and issubclass(CommandFailed, cl.TaskFailure)


def test_the_run_summary_names_the_row_and_the_line_of_the_file(tmp_path, url):
    import subprocess
    import sys

    (tmp_path / "rows.csv").write_text("v\n1\n2\n3\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudloop",
            "run",
            "--backend",
            url,
            "--workers",
            "1",
            "--items",
            "rows.csv",
            "--",
            "test {v} != 2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if "CommandFailed" in ln]
    assert line.strip().startswith("row 2 (task 1) (attempt 1, "), line
    assert "status 1" in line and "[rows.csv line 3]" in line, line
    assert "Traceback" not in done.stderr


def test_results_of_a_run_carry_each_rows_fields(tmp_path, url):
    import csv
    import io
    import json
    import subprocess
    import sys

    (tmp_path / "rows.csv").write_text("alpha,status\n0.5,a\n2,b\n")
    cl_ = [sys.executable, "-m", "cloudloop"]
    run = subprocess.run(
        [
            *cl_,
            "run",
            "--backend",
            url,
            "--workers",
            "1",
            "--items",
            "rows.csv",
            "--",
            "echo {alpha}; test {alpha} = 0.5",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    job = run.stdout.split()[-1]
    res = [*cl_, "results", "--backend", url, job]
    table = subprocess.run([*res, "--format", "csv"], capture_output=True, text=True, check=True)
    got = list(csv.DictReader(io.StringIO(table.stdout)))
    assert list(got[0])[:5] == ["row", "index", "alpha", "item_status", "status"], got
    assert [(r["row"], r["alpha"], r["item_status"], r["status"]) for r in got] == [
        ("1", "0.5", "a", "ok"),
        ("2", "2", "b", "failed"),
    ]
    assert got[0]["stdout"].strip() == "0.5" and "status 1" in got[1]["error"]
    lines = subprocess.run([*res, "--format", "jsonl"], capture_output=True, text=True, check=True)
    first = json.loads(lines.stdout.splitlines()[0])
    assert (first["row"], first["alpha"], first["value"]["returncode"]) == (1, "0.5", 0)
