"""The command lines the R example prints run as printed, from a fresh shell."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "r_command.py"


def _printed_command() -> str:
    (line,) = [ln.strip() for ln in EXAMPLE.read_text().splitlines() if "cloudloop run" in ln]
    return line


def test_the_grid_holds_the_rows_the_example_uses():
    rows = list(csv.DictReader((ROOT / "examples" / "grid.csv").open()))
    text = EXAMPLE.read_text()
    ns = re.search(r'"--ns", default="([^"]+)"', text).group(1).split(",")
    noises = re.search(r'"--noises", default="([^"]+)"', text).group(1).split(",")
    assert rows == [{"n": n, "noise": s} for n in ns for s in noises]
    assert 'default="demo-output/r-outputs"' in text


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="needs Rscript (r-base-core)")
def test_the_shell_command_in_the_r_example_runs_as_printed(tmp_path):
    env = {
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "CLOUDLOOP_BACKEND": "sqlite://" + str(tmp_path / "backend"),
    }
    done = subprocess.run(
        ["bash", "-c", _printed_command()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "9 ok of 9" in done.stderr + done.stdout
