"""The command line: command tasks in any language, Python targets, status/logs/results."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap

import pytest
from helpers import wait_for


def cli(*args, cwd, check=True, timeout=120):
    proc = subprocess.run(
        [sys.executable, "-m", "cloudloop", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


FIT = textwrap.dedent(
    """
    import os, sys
    alpha = sys.argv[1]
    print(f"fitting alpha={alpha} in {os.path.basename(os.getcwd())}")
    open("model.txt", "w").write(alpha)  # each task has its own directory
    if alpha == "bad":
        print("alpha must be a number", file=sys.stderr)
        sys.exit(3)
    print(float(alpha) * 2)
    """
)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "fit.py").write_text(FIT)
    rows = [{"alpha": "0.5"}, {"alpha": "2"}, {"alpha": "bad"}, {"alpha": "1; touch pwned"}]
    with open(tmp_path / "params.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["alpha"])
        w.writeheader()
        w.writerows(rows)
    return tmp_path


def test_command_tasks_from_a_csv(project):
    proc = cli("run", "--items", "params.csv", "--workers", "2", "--", sys.executable, "fit.py", "{alpha}",
               cwd=project, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # one row failed
    job = proc.stdout.strip().splitlines()[-1]
    assert "exited with status 3" in proc.stderr and "alpha must be a number" in proc.stderr
    assert not (project / "pwned").exists()  # values are quoted, never executed

    out = cli("results", job, "--format", "jsonl", cwd=project).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert rows[0]["value"]["stdout"].strip().endswith("1.0")
    assert "CommandFailed" in rows[2]["error"]
    # the injected value arrived as one argument: float("1; touch pwned") failed inside fit.py
    assert "status 1" in rows[3]["error"]

    log = cli("logs", job, "1", cwd=project).stdout
    assert "fitting alpha=2" in log and "$ " in log

    table = list(
        csv.DictReader(io.StringIO(cli("results", job, "--format", "csv", cwd=project).stdout))
    )
    assert table[0]["index"] == "0" and table[0]["returncode"] == "0"


def test_shell_string_command_with_jsonl(project):
    (project / "items.jsonl").write_text('{"n": 1}\n{"n": 2}\n')
    proc = cli("run", "--items", "items.jsonl", "--workers", "1", "--quiet", "--",
               "echo {n} | tr 12 ab", cwd=project)  # fmt: skip
    job = proc.stdout.strip()
    rows = [json.loads(x) for x in cli("results", job, cwd=project).stdout.splitlines()]
    assert [r["value"]["stdout"].strip() for r in rows] == ["a", "b"]


def test_missing_template_field_is_refused_before_anything_runs(project):
    proc = cli("run", "--items", "params.csv", "--workers", "0", "--", "echo", "{beta}",
               cwd=project, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "no field 'beta'" in proc.stderr and "alpha" in proc.stderr


MODULE = textwrap.dedent(
    """
    def fit(alpha, depth=1):
        print("fit", alpha, depth)
        return {"alpha": alpha, "score": alpha * depth}
    """
)


def test_python_target_from_the_cli(tmp_path):
    (tmp_path / "mymodels.py").write_text(MODULE)
    (tmp_path / "grid.jsonl").write_text('{"alpha": 1, "depth": 2}\n{"alpha": 3}\n')
    job = cli(
        "run", "mymodels:fit", "--items", "grid.jsonl", "--workers", "1", cwd=tmp_path
    ).stdout.strip()
    rows = [json.loads(x) for x in cli("results", job, cwd=tmp_path).stdout.splitlines()]
    assert [r["value"] for r in rows] == [{"alpha": 1, "score": 2}, {"alpha": 3, "score": 3}]
    status = cli("status", cwd=tmp_path).stdout
    assert job in status and "completed" in status
    one = cli("status", job, cwd=tmp_path).stdout
    assert "2 ok of 2" in one
    follow = cli("logs", job, "--follow", cwd=tmp_path, timeout=30).stdout
    assert "[task 0] fit 1 2" in follow and "[task 1] fit 3 1" in follow


def test_detach_then_cancel(tmp_path):
    (tmp_path / "items.json").write_text(json.dumps(list(range(5))))
    job = cli("run", "--items", "items.json", "--workers", "0", "--detach", "--", "sleep", "5",
              cwd=tmp_path).stdout.strip()  # fmt: skip
    assert "queued" in cli("status", job, cwd=tmp_path).stdout
    cli("cancel", job, cwd=tmp_path)
    assert "cancelled" in cli("status", job, cwd=tmp_path).stdout


def test_errors_are_one_clear_line(tmp_path):
    proc = cli("status", "--backend", "mongodb://x", cwd=tmp_path, check=False)
    from cloudloop.backends import known_schemes

    known = ", ".join(known_schemes())
    assert proc.returncode == 2 and f"not known; known: {known}" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("run", "nomodule:fn", "--items", "missing.csv", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.mark.parametrize("cmd", ["run", "status", "logs", "results", "worker", "cancel"])
def test_help_is_useful(cmd, tmp_path):
    out = cli(cmd, "--help", cwd=tmp_path).stdout
    assert "--backend" in out and "--profile" in out


def test_local_up_and_down_act_on_the_profiles_own_workers_only(tmp_path):
    """`cloudloop up` starts detached workers of a profile's cluster; `down` stops
    those and no other worker on the machine (another profile's, a client's own)."""
    import cloudloop as cl
    from cloudloop.backends import open_backend
    from cloudloop.heartbeat import worker_records

    backend = f"sqlite://{tmp_path / 'b'}"
    (tmp_path / "cloudloop.toml").write_text(
        "".join(f'[profiles.{p}]\nbackend = "{backend}"\nheartbeat = "0.5s"\n' for p in "ab")
    )

    def clusters():
        with open_backend(backend) as b:
            return sorted(str(r.cluster) for r in worker_records(b) if r.live())

    with cl.Executor(backend=backend, workers=1) as ex:  # a client's own worker
        assert (
            "started 1 local workers" in cli("up", "--profile", "a", "-n", "1", cwd=tmp_path).stdout
        )
        cli("up", "--profile", "b", "-n", "2", cwd=tmp_path)
        wait_for(lambda: clusters() == ["None", "a", "b", "b"], timeout=60, what="4 workers")
        out = cli("ls", "--profile", "b", cwd=tmp_path).stdout
        summary = "2 worker(s) in cluster 'b' (local); 2 other worker(s) serve its backend"
        assert out.splitlines()[-1] == summary
        out = cli("down", "--profile", "a", cwd=tmp_path).stdout
        assert out.strip() == "asked 1 worker(s) of cluster 'a' on this machine to stop"
        wait_for(lambda: clusters() == ["None", "b", "b"], timeout=30, what="a's worker gone")
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32  # the client's worker serves on
        cli("down", "--profile", "b", cwd=tmp_path)
        wait_for(lambda: clusters() == ["None"], timeout=30, what="b's workers gone")
        again = cli("down", "--profile", "b", cwd=tmp_path).stdout
        assert again.strip() == "asked 0 worker(s) of cluster 'b' on this machine to stop"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["aws", "init"], "cluster 'local' (local provider) cannot be set up in a cloud account"),
        (["up", "--foreground"], "cannot follow the queue"),  # local: `up -n N` starts workers
        (["up"], None),
    ],
)
def test_cluster_capabilities_a_provider_lacks_are_one_line(tmp_path, argv, message):
    if message is None:
        proc = cli(*argv, "-n", "0", cwd=tmp_path, check=False)
        assert proc.returncode == 1 and proc.stdout.strip() == "no workers to start (-n 0)"
        return
    proc = cli(*argv, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
