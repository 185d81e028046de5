"""End to end on EC2 spot workers, in a cloud-in-a-box (see cloudbox.py).

The client is this test process; the AWS APIs are moto_server in its own
network namespace; every instance the ec2 provider launches boots as a
machine of its own that runs its real user-data (installing this cloudloop
from wheels, starting workers that get credentials from instance metadata).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import long_training, wait_for, worker_records

import cloudloop as cl
from cloudloop import codec, keys

LONG = (3, 130, 260, 390)  # tasks that train for a while and checkpoint every step
STEPS, STEP_S = 24, 0.3


def work(i, runs_dir):
    """A grid point: most are quick; the LONG ones checkpoint and honour notices."""
    with open(os.path.join(runs_dir, str(i)), "a") as f:
        f.write(os.environ.get("CLOUDLOOP_HOST", "?") + "\n")
    if i not in LONG:
        time.sleep(0.05)
        return {"i": i, "square": i * i}
    print(f"training {i} on {os.environ.get('CLOUDLOOP_HOST')}", flush=True)
    return {"i": i, "square": i * i, **long_training(STEPS, STEP_S)}


PROFILE = """
[profiles.aws]
backend = "aws://box-{tag}/jobs?region=us-east-1&endpoint={endpoint}"
provider = "ec2"
instance_types = ["c7a.large", "c6a.large"]
spot = true
max_workers = 8
workers_per_instance = 1
prices = {{ "c7a.large" = 0.10, "c6a.large" = 0.08 }}
lease = "12s"
heartbeat = "1s"
idle_exit = "2m"
"""


def cli(*args, cwd, timeout=120):
    r = subprocess.run([sys.executable, "-m", "cloudloop", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert r.returncode == 0, f"cloudloop {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _busy(job) -> dict[str, int]:
    """Machine (instance id) -> the task its worker is running now (fresh records)."""
    out = {}
    for w in worker_records(job.backend):
        if w.get("job") == job.id and w.get("task") is not None and w.get("state") == "busy":
            out[w["host"]] = w["task"]
    return out


def _step(ex, job, i) -> int:
    data = ex.backend.get_signed(keys.checkpoint(job.id, i))
    return codec.loads(data)["step"] if data else 0


def test_spot_workers_survive_a_notice_and_a_dead_machine(box, tmp_path):
    home = tmp_path / "client"
    runs = tmp_path / "runs"
    home.mkdir(), runs.mkdir()
    (home / "cloudloop.toml").write_text(PROFILE.format(tag=os.getpid(), endpoint=box.endpoint))
    os.chdir(home)

    out = cli("up", "--profile", "aws", "-n", "4", cwd=home)  # the group, 4 machines now
    assert "desired capacity 0 -> 4 machine(s)" in out and "spot" in out
    ex = cl.Executor(profile="aws")  # the same loop as on the laptop; only the profile differs
    job = ex.map_job(work, range(500), [str(runs)] * 500)
    wait_for(lambda: len(box.running()) == 4, timeout=30, what="4 machines booted")

    # a machine running a checkpointing task gets a spot notice ...
    def training():
        for host, task in _busy(job).items():
            if task in LONG and _step(ex, job, task) >= 3:
                return host, task
        return None

    noticed, task = wait_for(training, timeout=180, interval=0.2, what="a long task under way")
    box.notice(noticed)
    # ... and another busy machine dies without one
    victim = wait_for(
        lambda: next((h for h in _busy(job) if h != noticed), None), timeout=60, what="victim"
    )
    box.kill(victim)
    assert job.status().done < 500, "the job must still be running when machines are lost"

    # the noticed machine hands its work back and shuts itself down (terminated by EC2),
    # leaving the group's capacity as it was: the group replaces both, nobody asks it to
    wait_for(lambda: box.machines[noticed].ended, timeout=60, what="noticed machine to leave")
    log = (box.root / noticed / "opt" / "bootstrap.log").read_text()
    assert "shutting down" in log and "spot interruption notice" in log, log[-1500:]
    wait_for(lambda: len(box.history) >= 6, timeout=60, what="the group to replace both")

    results = job.results(timeout=300)
    assert [r["square"] for r in results] == [i * i for i in range(500)]
    outcomes = job.outcomes()
    assert sorted(outcomes) == list(range(500))  # every result, exactly once
    # the noticed task resumed from its checkpoint on another machine, and the
    # preemption did not count against its retries
    state = results[task]
    assert state["runs"] == 2 and state["resumed_at"] >= 3 and state["step"] == STEPS
    assert outcomes[task].attempt == 1 and outcomes[task].host != noticed
    ran = {i: (runs / str(i)).read_text().split() for i in range(500)}
    assert all(ran[i] for i in range(500))
    assert len(ran[task]) == 2 and ran[task][0] == noticed
    machines = {h for hosts in ran.values() for h in hosts}
    assert noticed in machines and victim in machines and machines <= set(box.history)
    assert {o.host for o in outcomes.values()} <= set(box.history)
    assert box.errors == []

    status = cli("status", job.id, "--profile", "aws", cwd=home)
    assert "spent $" in status, status
    out = cli("down", "--profile", "aws", cwd=home)
    assert "deleted Auto Scaling group" in out, out
    wait_for(lambda: not box.running(), timeout=30, what="every machine to stop")
    assert ex.backend and _cluster_instances(home) == 0
    ls = cli("ls", "--profile", "aws", cwd=home)
    assert "0 instance(s)" in ls
    # the logs outlive the machines: both runs of the noticed task are there
    logs = cli("logs", job.id, str(task), "--profile", "aws", cwd=home)
    assert f"training {task} on {noticed}" in logs
    assert f"training {task} on {outcomes[task].host}" in logs
    ex.shutdown()


def _cluster(home: Path):
    from cloudloop.config import load_profile
    from cloudloop.providers import cluster_for

    return cluster_for(load_profile("aws"))  # as the CLI gets it


def _cluster_instances(home: Path) -> int:
    from cloudloop.providers.ec2_inventory import STOPPABLE

    return len(_cluster(home).inventory.instances(STOPPABLE))


def test_worker_credentials_come_from_instance_metadata_only(box, tmp_path):
    """No AWS key reaches a machine: not its environment, not its user-data."""
    home = tmp_path / "client"
    home.mkdir()
    profile = PROFILE.format(tag=os.getpid(), endpoint=box.endpoint)
    (home / "cloudloop.toml").write_text(profile.replace("max_workers = 8", "max_workers = 1"))
    os.chdir(home)
    job = cl.Executor(profile="aws").map_job(_env_keys, [0])
    cli("up", "--profile", "aws", "-n", "1", cwd=home)  # the group: one machine at most
    (m,) = wait_for(box.running, timeout=30, what="a machine")
    (seen,) = job.results(timeout=120)
    assert seen["keys"] == [] and seen["creds"] == "ASIAINSTANCEPROFILE"
    # its worker carries the cluster's name (the profile's) into its heartbeat record
    (w,) = wait_for(_cluster(home).workers, timeout=30, what="the worker's record")
    assert w.cluster == "aws" and w.instance == m.instance_id
    script = (box.root / m.instance_id / "user-data.sh").read_text()
    assert "testing" not in script and "AWS_SECRET" not in script
    cli("down", "--profile", "aws", cwd=home)
    wait_for(lambda: not box.running(), timeout=30, what="the machine to stop")
    assert json.loads((box.root / m.instance_id / "imds.json").read_text())["role"]


def _env_keys(_):
    import boto3

    creds = boto3.session.Session().get_credentials()
    return {"keys": sorted(k for k in os.environ if k.startswith("AWS_") and "KEY" in k),
            "creds": creds.access_key if creds else None}  # fmt: skip


def test_up_foreground_follows_the_queue_and_scales_to_zero(box, tmp_path):
    """`up --foreground` (no Auto Scaling group: this terminal follows the queue) starts
    instances for waiting work; idle workers end their machines."""
    home = tmp_path / "client"
    home.mkdir()
    profile = PROFILE.format(tag=os.getpid(), endpoint=box.endpoint)
    profile = profile.replace('idle_exit = "2m"', 'idle_exit = "3s"').replace(
        "max_workers = 8", "max_workers = 2"
    )
    (home / "cloudloop.toml").write_text(profile)
    os.chdir(home)
    job = cl.Executor(profile="aws").map_job(_square_slowly, range(60))
    scaler = subprocess.Popen(
        [sys.executable, "-m", "cloudloop", "up", "--profile", "aws", "--foreground",
         "--every", "1s", "--until-idle"], cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert job.results(timeout=180) == [i * i for i in range(60)]
        out, _ = scaler.communicate(timeout=120)  # returns once nothing is left
    finally:
        if scaler.poll() is None:
            scaler.kill()
    assert scaler.returncode == 0, out
    assert "started 2 of 2 instances" in out and "queue empty and no instances left" in out
    assert len(box.history) == 2  # max_workers = 2, one worker per instance
    assert not box.running() and _cluster_instances(home) == 0
    bill = {r["id"]: r for r in _cluster(home).billing.ledger()}
    for iid in box.history:  # each machine left by itself once idle, and shut down
        assert "shutting down" in (box.root / iid / "opt" / "bootstrap.log").read_text()
        # ... closing its own record in the bill on the way out
        assert bill[iid]["ended_by"] == "instance" and bill[iid]["ended"] > bill[iid]["launched"]


def _square_slowly(i):
    time.sleep(0.1)
    return i * i


def test_executor_workers_are_instances_that_end_with_it(box, tmp_path):
    """`Executor(profile="aws", workers=2)`: instances for its lifetime, terminated after."""
    home = tmp_path / "client"
    home.mkdir()
    (home / "cloudloop.toml").write_text(PROFILE.format(tag=os.getpid(), endpoint=box.endpoint))
    os.chdir(home)
    with cl.Executor(profile="aws", workers=2) as ex:
        assert list(ex.map(_square_slowly, range(20))) == [i * i for i in range(20)]
        assert len(box.history) == 2
    wait_for(lambda: not box.running(), timeout=30, what="the instances to end")
    assert _cluster_instances(home) == 0
