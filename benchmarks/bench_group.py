"""The Auto Scaling group in the cloud-in-a-box: from zero to work, back to zero, idle cost.

    sudo .venv/bin/python benchmarks/bench_group.py [--repeat 2] [--write] [--out benchmarks/RESULTS.md]

Runs as root: tests/cloudbox.py (moto_server, the instance simulator) with
tests/asgbox.py standing in for CloudWatch alarms and Auto Scaling policies,
its time compressed 20 times (a 60 s alarm period lasts 3 s). One cluster
(two c7a.large-like machines of two workers at most, ``idle_exit`` 8 s).
``cloudloop up`` (timed) sets up the group; then, ``--repeat`` times:

1. an idle window of 30 s with zero machines and no client running: the API
   requests made, by whom (cloudloop's: every request that is neither the
   stand-in's nor the simulator's; both count their own);
2. a 100-task job (50 ms each) submitted by a client process that exits:
   seconds from submission to the first task started on a new machine (the
   task's own clock), and from the last task's end to zero machines in the
   group (desired 0, none running).

The alarm-driven part of (2) (the scale-out alarm's one-minute period) runs
20 times faster than on AWS; the boot does not.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_md import write_section

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = "## Auto Scaling group: zero → work → zero (cloud-in-a-box)"

PROFILE = """
[profiles.aws]
backend = "aws://bench-group-{pid}/jobs?region=us-east-1&endpoint={endpoint}"
provider = "ec2"
instance_types = ["c7a.large"]
max_workers = 4
workers_per_instance = 2
prices = {{ "c7a.large" = 0.10 }}
idle_exit = "8s"
"""

SUBMIT = """
import time
import cloudloop as cl

def timed(i):
    t = time.time()
    time.sleep(0.05)
    return (t, time.time())

job = cl.Executor(profile="aws").map_job(timed, range(100))
print(job.id)
"""


def requests(box) -> int:
    """Requests moto_server has logged so far (one access-log line each)."""
    text = (box.root / "moto.log").read_text(errors="replace")
    return len(re.findall(r'"(?:GET|POST|PUT|DELETE|HEAD) [^"]*" \d{3}', text))


def wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise SystemExit(f"bench_group.py: timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_group.py needs root (network namespaces)")
    sys.path.insert(0, str(ROOT / "tests"))
    from cloudbox import FAKE_KEYS, CloudBox

    os.environ.update(FAKE_KEYS)
    argv = " ".join([".venv/bin/python", "benchmarks/bench_group.py", *sys.argv[1:]])
    when = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="cl-bench-group-"))
    (tmp / "box").mkdir()
    box = CloudBox(tmp / "box").start()
    sim_calls = [0]
    box.ec2.meta.events.register(
        "before-call", lambda **_: sim_calls.__setitem__(0, sim_calls[0] + 1)
    )
    rows: list[dict] = []
    try:
        home = tmp / "client"
        home.mkdir()
        (home / "cloudloop.toml").write_text(PROFILE.format(pid=os.getpid(), endpoint=box.endpoint))
        (home / "submit.py").write_text(SUBMIT)
        os.chdir(home)
        from cloudloop.backends import open_backend
        from cloudloop.config import load_profile
        from cloudloop.job import attach_job
        from cloudloop.providers import cluster_for

        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "cloudloop", "up", "--profile", "aws"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        up_s = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        print(f"up returned in {up_s:.1f} s")
        cluster = cluster_for(load_profile("aws"))
        backend = open_backend(load_profile("aws").backend)
        for i in range(args.repeat):
            log = requests(box)
            a0, s0 = box.autoscaling.calls, sim_calls[0]
            time.sleep(30)
            total = requests(box) - log
            standin, sim = box.autoscaling.calls - a0, sim_calls[0] - s0
            ours = max(0, total - standin - sim)
            t_submit = time.time()
            r = subprocess.run([sys.executable, "submit.py"], capture_output=True, text=True,
                               timeout=300)  # fmt: skip
            job = attach_job(backend, r.stdout.strip())
            times = job.results(timeout=600)
            first = min(t for t, _ in times) - t_submit
            last = max(e for _, e in times)
            wait(lambda: not box.running() and cluster.group.describe()["DesiredCapacity"] == 0,
                 600, "zero machines")  # fmt: skip
            to_zero = time.time() - last
            row = {"ours_h": ours * 120, "standin_h": standin * 120, "sim_h": sim * 120,
                   "first": first, "zero": to_zero}  # fmt: skip
            print(f"round {i + 1}: {row}")
            rows.append(row)
        subprocess.run([sys.executable, "-m", "cloudloop", "down", "--profile", "aws"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        os.chdir(ROOT)
        box.close()

    def med(k: str) -> str:
        xs = [r[k] for r in rows]
        return f"{statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"

    text = "\n".join([
        SECTION, "",
        f"{when}; `{argv}`; {len(rows)} rounds, median (range).", "",
        "| | seconds or requests |", "|---|---|",
        f"| `cloudloop up` (group, policies, alarms, wheelhouse upload) returns | {up_s:.1f} s |",
        f"| job submitted (client exits) → first task starts on a new machine, zero running | {med('first')} s |",
        f"| last task ends → zero machines (idle_exit 8 s, each ends itself in the group) | {med('zero')} s |",
        f"| API requests per hour of an idle cluster, by cloudloop | {med('ours_h')} |",
        f"| … by the stand-in for AWS's alarms and scaling (AWS's side, not billed to you) | {med('standin_h')} |",
        "",
        "The scale-out alarm's one-minute period lasts 3 s here (time compressed 20×); on AWS",
        "add about a minute for the queue metric and the alarm, plus a real instance's boot.",
        "Idle, nothing of cloudloop's runs: no client, no machine; the requests counted as",
        "cloudloop's are whatever reached moto from neither the stand-in nor the simulator.",
        "",
    ])  # fmt: skip
    print(text)
    if args.write:
        write_section(Path(args.out), SECTION, text)


if __name__ == "__main__":
    main()
