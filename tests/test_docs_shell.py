"""Every shell block in the README and docs/ runs as written, in a fresh shell, after `make demo`.

A block runs unless the line just before its fence says why not:
``<!-- shell: synopsis -->`` (a command's forms, with placeholders like JOB) or
``<!-- shell: not here: <reason> -->`` (it needs an AWS account, ssh hosts, your
own files). Each block that runs gets its own fresh ``bash`` (``env -i``: no venv
on PATH, no CLOUDLOOP_* settings) in a directory holding the repository's
``examples/``, its ``.venv`` (what ``make demo`` made) and a store with one
finished job, whose id replaces the docs' example id. As the README says, the
venv is activated first. Lines that install (``pip install``, ``make``) are the
set-up itself and are not re-run here; ``cloudloop dashboard`` serves until
stopped, so it runs until it prints its address.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_ID = "20261125-140827-b49288"
FENCE = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.M | re.S)
MARK = re.compile(r"<!-- shell: (synopsis|not here: [^>]+) -->\s*$")
SET_UP = re.compile(r"^\s*(pip install|make)\b")
SERVES = re.compile(r"^\s*cloudloop dashboard\b")


def blocks() -> list[tuple[str, int, str, str | None]]:
    out = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = MARK.search(before)
            out.append((str(page.relative_to(ROOT)), line, m.group(1), mark and mark.group(1)))
    return out


BLOCKS = blocks()


def test_every_shell_block_runs_or_says_why_not():
    assert len(BLOCKS) > 10
    for where, line, _, mark in BLOCKS:
        if mark and mark.startswith("not here"):
            assert len(mark) > len("not here: ") + 10, f"{where}:{line}: say why it cannot run"


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A fresh shell's view of the repository after `make demo`: examples, the venv,
    a store with one finished job of 5 tasks (task i printed ``line i``)."""
    venv = ROOT / ".venv"
    if not (venv / "bin" / "cloudloop").exists():
        pytest.fail("no .venv/bin/cloudloop: run `make demo` (make test does) first")
    d = tmp_path_factory.mktemp("fresh")
    shutil.copytree(ROOT / "examples", d / "examples")
    (d / ".venv").symlink_to(venv)
    (d / "home").mkdir()
    code = (
        "import cloudloop as cl\n"
        "def say(i):\n    print('line', i)\n    return i * i\n"
        "with cl.Executor(workers=1) as ex:\n"
        "    job = ex.map_job(say, range(5), name='docs')\n"
        "    job.wait()\n"
        "print(job.id)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=d, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return d, proc.stdout.split()[-1]


def _fresh_shell(d: Path, script: str, timeout: float) -> subprocess.CompletedProcess:
    env = {"HOME": str(d / "home"), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=d,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


RUN = [b for b in BLOCKS if b[3] is None]


@pytest.mark.parametrize("where,line,text,mark", RUN, ids=[f"{b[0]}:{b[1]}" for b in RUN])
def test_shell_block_runs_as_written(place, where, line, text, mark):
    d, job = place
    lines = [s for s in text.replace(EXAMPLE_ID, job).splitlines() if not SET_UP.match(s)]
    serving = [s for s in lines if SERVES.match(s)]
    script = "\n".join(s for s in lines if not SERVES.match(s))
    if "source .venv/bin/activate" not in script:
        script = "source .venv/bin/activate\n" + script
    proc = _fresh_shell(d, script, timeout=120)
    assert proc.returncode == 0, f"{where}:{line} failed:\n{script}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, f"{where}:{line}:\n{proc.stderr}"
    for s in serving:  # serves until stopped: it must come up and say where
        cmd = s.split("#")[0].strip()
        cmd += "" if "--port" in cmd else " --port 0"
        out = _fresh_shell(
            d, f"source .venv/bin/activate\n(timeout 8 {cmd} || true) 2>&1", timeout=60
        )
        assert re.search(r"http://127\.0\.0\.1:\d+/\?token=", out.stdout), (where, s, out.stdout)


def test_the_demo_prints_cloudloop_commands_that_work_in_a_fresh_shell(place, monkeypatch):
    d, job = place
    import importlib.util

    spec = importlib.util.spec_from_file_location("grid_search", ROOT / "examples/grid_search.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    monkeypatch.chdir(d)
    for path, word in [("/usr/local/bin:/usr/bin:/bin", ".venv/bin/cloudloop"), (None, None)]:
        if path is None:  # the venv active: its bin first on PATH
            path = f"{d / '.venv/bin'}:/usr/bin:/bin"
            word = "cloudloop"
        monkeypatch.setenv("PATH", path)
        monkeypatch.setattr(sys, "executable", str(d / ".venv/bin/python"))
        cmd = demo.cloudloop_command()
        assert cmd == word
        proc = _fresh_shell(d, f"{cmd} status {job}", timeout=60) if "/" in cmd else None
        assert proc is None or (proc.returncode == 0 and "completed" in proc.stdout), proc
