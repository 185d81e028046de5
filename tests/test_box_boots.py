"""Boots in a cloud-in-a-box no kinder than AWS (see cloudbox.py).

Every machine boots from an image: Amazon Linux 2023's (``python3`` is 3.9, dnf
installs 3.11 or 3.12) unless a test registers its own. No machine sees a
package index or the client's site-packages: cloudloop and the profile's
requirements reach it only through the store's wheelhouse, built here from
this development tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib import metadata

from helpers import wait_for

import cloudloop as cl

PROFILE = """
[profiles.aws]
backend = "aws://boot-{tag}/jobs?region=us-east-1&endpoint={endpoint}"
provider = "ec2"
instance_types = ["c7a.large"]
max_workers = 4
workers_per_instance = 1
prices = {{ "c7a.large" = 0.10 }}
lease = "12s"
heartbeat = "1s"
idle_exit = "20s"
{extra}
"""


def client(box, tmp_path, extra=""):
    home = tmp_path / "client"
    home.mkdir(exist_ok=True)
    text = PROFILE.format(tag=f"{os.getpid()}-{time.time_ns() % 10**6}", endpoint=box.endpoint,
                          extra=extra)  # fmt: skip
    (home / "cloudloop.toml").write_text(text)
    os.chdir(home)
    return home


def cli(*args, cwd, ok=True, timeout=300):
    r = subprocess.run([sys.executable, "-m", "cloudloop", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if ok:
        assert r.returncode == 0, f"cloudloop {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout + r.stderr


def where(_):
    import idna  # a requirement of the profile: only the wheelhouse has it

    return {"idna": metadata.version("idna"), "python": list(sys.version_info[:2]),
            "prefix": sys.prefix, "file": idna.__file__}  # fmt: skip


def test_instances_install_cloudloop_and_a_requirement_from_the_store_with_no_index(box, tmp_path):
    idna = metadata.version("idna")
    home = client(box, tmp_path, f'requirements = ["idna=={idna}"]')
    job = cl.Executor(profile="aws").map_job(where, range(3))
    out = cli("up", "--profile", "aws", "-n", "1", cwd=home)
    assert "desired capacity 0 -> 1" in out and "wheelhouse" in out and "uploaded" in out, out
    results = job.results(timeout=180)
    assert all(r["idna"] == idna and r["python"] == list(sys.version_info[:2]) for r in results)
    roots = [str(m.root) for m in box.machines.values()]
    assert all(any(r["prefix"].startswith(x) for x in roots) for r in results)  # their own venvs
    m = next(m for m in box.machines.values() if str(m.root) in results[0]["prefix"])
    log = m.log()
    assert "no python3.11 here (python3 is 3.9); trying the package manager" in log
    assert "fetched" in log and "--no-index" in log
    ls = cli("ls", "--profile", "aws", cwd=home)
    assert "workers started" in ls, ls
    # the wheelhouse is built and uploaded once: the next launch finds it in the store
    assert "in the store already" in cli("up", "--profile", "aws", "-n", "1", cwd=home)


def test_an_image_without_the_python_fails_says_why_and_launching_stops(box, tmp_path):
    """With nobody watching: the group's boots fail, `ls` says why, and the
    max_failed_boots-th failure in a row turns the group's scale-out alarm off (no stream
    of failing machines); `resume` launches again."""
    from cloudbox import Image

    ami = box.register(Image("bare", pythons={"python3": "3.9"}))  # and no package manager
    home = client(box, tmp_path, f'image = "{ami}"\nmax_failed_boots = 2')
    job = cl.Executor(profile="aws").map_job(where, range(1))  # one machine at a time
    cli("up", "--profile", "aws", cwd=home)  # the group, and nothing of ours runs
    t0 = time.monotonic()
    ls = wait_for(lambda: (o := cli("ls", "--profile", "aws", cwd=home)) and "boot failed" in o and o,
                  timeout=60, interval=1, what="ls to show the failed boot")  # fmt: skip
    assert time.monotonic() - t0 < 60
    assert f"no python3.11 on {ami} (python3 is 3.9)" in ls, ls
    assert "set image = or python =" in ls and "    | " in ls  # the log's tail, too
    ls = wait_for(lambda: (o := cli("ls", "--profile", "aws", cwd=home)) and "launching stopped" in o
                  and o, timeout=120, interval=1, what="launching to stop")  # fmt: skip
    launched = len(box.history)
    assert launched == 2, ls
    second = (box.root / box.history[1] / "opt" / "bootstrap.log").read_text()
    assert "2 boots in a row failed; group cloudloop-aws starts no more machines" in second, second
    time.sleep(8)  # the alarm stays in ALARM (a task waits): nothing more is launched
    assert len(box.history) == launched and not box.running()
    status = cli("status", job.id, "--profile", "aws", cwd=home, ok=False)
    assert "boot failed" in status and "no python3.11" in status, status
    assert "launching stopped" in status, status
    cli("resume", "--profile", "aws", cwd=home)  # the user says: try again
    wait_for(lambda: len(box.history) > launched, timeout=60, what="a launch after resume")
    cli("down", "--profile", "aws", cwd=home)


def test_a_worker_of_another_python_leaves_the_job_alone_and_status_says_so(box, tmp_path):
    home = client(box, tmp_path, 'python = "3.12"')  # the profile asks for it: dnf installs it
    job = cl.Executor(profile="aws").map_job(where, range(3))
    cli("up", "--profile", "aws", "-n", "1", cwd=home)  # the group: it follows the queue too
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"

    def problem():
        return " ".join(job.status().problems)

    said = wait_for(lambda: "workers have 3.12" in problem() and problem(), timeout=180,
                    what="the status to name the mismatch")  # fmt: skip
    assert f"it needs Python {mine}" in said
    assert "workers have 3.12" in cli("status", job.id, "--profile", "aws", cwd=home, ok=False)
    st = job.status()
    assert st.done == 0 and st.failed == 0
    for m in list(box.machines.values()):
        assert "python3.12 -m venv" in m.log() and "Traceback" not in m.worker_logs()
    cli("down", "--profile", "aws", cwd=home)


def test_an_instance_that_never_serves_ends_itself_at_the_boot_deadline(box, tmp_path):
    from cloudbox import Image

    # a package manager that never finishes (a mirror that does not answer)
    ami = box.register(
        Image("stuck", pythons={"python3": "3.9"}, installable={"python3.11": "hang"})
    )
    home = client(box, tmp_path, f'image = "{ami}"\nboot_timeout = "30s"')
    cl.Executor(profile="aws").map_job(where, range(1))  # work waits: the group keeps machines
    cli("up", "--profile", "aws", "-n", "1", cwd=home)
    m = wait_for(box.running, timeout=30, what="a machine")[0]
    wait_for(lambda: m.ended, timeout=90, what="the machine to end at its deadline")
    assert 30 <= m.ended - m.booted < 60
    ls = cli("ls", "--profile", "aws", cwd=home)
    assert "no worker served within 30 s of boot (boot_timeout)" in ls, ls
