"""Served commands (serve=True, --serve): one process answers many rows over the line
protocol of cloudloop.commands.Server. Real runs: sqlite backend, local workers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudloop.errors import CommandFailed, ConfigError, TaskCrashed

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# a served command in Python: answers {"value": ...}; rows ask it to misbehave
SERVER = r"""
import json, os, sys, time
print("serving", file=sys.stderr, flush=True)
for line in sys.stdin:
    m = json.loads(line)
    r = m["row"]
    how = r.get("how", "")
    if how == "error":
        print(json.dumps({"error": "this row is bad"}), flush=True); continue
    if how == "exit":
        sys.exit(4)
    if how == "kill":
        os.kill(os.getpid(), 9)
    if how == "sleep":
        time.sleep(30)
    if how == "garbage":
        print("{not json", flush=True); continue
    print("a line for the log", flush=True)   # not an answer: goes to the log
    with open(os.path.join(m["output"], "row.txt"), "w") as f:
        f.write(str(r.get("v")))
    print(json.dumps({"value": {"v": r.get("v"), "row": m["row_number"], "index": m["index"],
                                "seed": m["seed"], "pid": os.getpid(),
                                "marker": os.environ.get("CLOUDLOOP_JOB_ID")}}), flush=True)
"""
FILES = {"serve.py": SERVER.encode()}
CMD = f"{sys.executable} serve.py"


def _served_pids(job_id: str, within: float = 5.0) -> list[int]:
    """Processes serving ``job_id`` (its id is on their command line), after up to
    ``within`` seconds for them to go."""
    end = time.monotonic() + within
    while True:
        out = subprocess.run(["pgrep", "-f", job_id], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        if not pids or time.monotonic() > end:
            return pids
        time.sleep(0.1)


HOSTILE = [
    "plain",
    "; rm -rf / #",
    "$(touch pwned)",
    "`id`",
    "a\nb",
    "'\"",
    "{index}",
    "\u00e9\u4e2d",
]


def test_rows_round_trip_as_data_and_one_process_serves_many(make_executor, tmp_path):
    rows = [{"v": v} for v in HOSTILE]
    with make_executor(workers=2) as ex:
        job = ex.command_job(CMD, rows, files=FILES, serve=True, chunksize=1)
        out = job.results()
    assert [o["v"] for o in out] == HOSTILE, "values arrive as data, unchanged"
    assert [o["row"] for o in out] == list(range(1, len(rows) + 1))
    assert [o["index"] for o in out] == list(range(len(rows)))
    assert len({o["pid"] for o in out}) <= 2, "one process per worker, not per row"
    assert len({o["seed"] for o in out}) == len(rows), "each row gets its own task seed"
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    files = job.outputs()
    assert sorted(files.by_task()) == list(range(len(rows)))
    assert {f.read().decode() for f in files} == set(HOSTILE)
    assert "a line for the log" in job.logs(0)


# (how, exception, words in its message)
FAILURES = [
    ("error", CommandFailed, ["row 2 (task 1): this row is bad"]),
    ("exit", CommandFailed, ["row 2 (task 1)", "exited with status 4 before answering"]),
    ("kill", TaskCrashed, ["row 2 (task 1)", "SIGKILL (signal 9)"]),
    ("garbage", CommandFailed, ["row 2 (task 1)", "not JSON"]),
]


@pytest.mark.parametrize("how,kind,words", FAILURES, ids=[f[0] for f in FAILURES])
def test_a_bad_row_fails_alone_and_the_next_rows_run(make_executor, how, kind, words):
    rows = [{"v": 1}, {"how": how}, {"v": 3}, {"v": 4}]
    with make_executor(workers=1) as ex:
        job = ex.command_job(CMD, rows, files=FILES, serve=True)
        job.wait(timeout=60)
        failures = job.failures()
        outcomes = job.outcomes()
    assert [f.index for f in failures] == [1]
    assert isinstance(failures[0].exception, kind), failures[0].exception
    for w in words:
        assert w in str(failures[0].exception), failures[0].exception
    assert [i for i, o in sorted(outcomes.items()) if o.ok] == [0, 2, 3]
    for text in (failures[0].log, failures[0].traceback):
        assert "Traceback" not in text, text


def test_a_row_over_its_timeout_ends_the_process_and_the_next_rows_run(make_executor):
    rows = [{"v": 1}, {"how": "sleep"}, {"v": 3}]
    with make_executor(workers=1) as ex:
        job = ex.command_job(CMD, rows, files=FILES, serve=True, timeout="2s")
        job.wait(timeout=60)
        failures = job.failures()
        outcomes = job.outcomes()
    assert [f.index for f in failures] == [1]
    assert "2" in str(failures[0].exception) and "time" in str(failures[0].exception).lower()
    assert [i for i, o in sorted(outcomes.items()) if o.ok] == [0, 2]


def test_no_served_process_outlives_its_workers(make_executor):
    ex = make_executor(workers=2)
    job = ex.command_job(CMD + " {job}", [{"v": i} for i in range(6)], files=FILES, serve=True)
    assert len(job.results()) == 6
    assert len(_served_pids(job.id, within=0)) in (1, 2), "served, while the workers run"
    ex.shutdown(wait=True)
    ex._pool.stop(timeout=10)
    assert _served_pids(job.id) == []


BAD_TEMPLATES = [
    ("a row field", "python3 serve.py {v}", "{v}"),
    ("the seed", "python3 serve.py --seed {seed}", "{seed}"),
]


@pytest.mark.parametrize("name,template,says", BAD_TEMPLATES, ids=[b[0] for b in BAD_TEMPLATES])
def test_a_served_template_holds_no_row_fields(
    make_executor, tmp_path, capsys, name, template, says
):
    with pytest.raises(ConfigError, match="reads its rows on stdin"):
        make_executor(workers=0).command_job(template, [{"v": 1}], serve=True)
    items = tmp_path / "rows.csv"
    items.write_text("v\n1\n")
    from cloudloop import cli

    rc = cli.main(
        ["run", "--workers", "0", "--serve", "--items", str(items), "--", *template.split()]
    )
    err = capsys.readouterr().err
    assert rc == 2 and says in err and "Traceback" not in err


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="needs Rscript (scripts/test-deps.sh)")
def test_the_r_helper_serves_leave_one_out_folds(make_executor, tmp_path):
    # examples/loo_rf.R --serve through examples/cloudloop.R (r-cran-randomforest, r-cran-jsonlite)
    files = {n: (EXAMPLES / n).read_bytes() for n in ("loo_rf.R", "cloudloop.R")}
    rows = [{"i": i} for i in (1, 2, 3, 4)] + [{"i": "not a number"}]
    with make_executor(workers=1) as ex:
        job = ex.command_job("Rscript loo_rf.R --serve", rows, files=files, serve=True)
        job.wait(timeout=120)
        outcomes = job.outcomes()
        failures = job.failures()
    ok = job.results(return_exceptions=True)[:4]
    assert [o["i"] for o in ok] == [1, 2, 3, 4]
    assert all(isinstance(o["predicted"], float) and o["observed"] > 0 for o in ok)
    assert [f.index for f in failures] == [4] and len(outcomes) == 5
    assert "row 5 (task 4)" in str(failures[0].exception)
