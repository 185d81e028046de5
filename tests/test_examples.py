"""Every example runs with one command on the embedded default (small sizes here)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import cloudloop as cl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, *args: str) -> tuple[str, cl.Job]:
    """Run an example as a user would (from the test's own directory); its job."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"^job (\S+):", proc.stdout, re.M).group(1)
    return proc.stdout, cl.attach(job_id)  # the default backend: ./.cloudloop


def load(script: str):
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_leave_one_out_random_forest_keeps_a_model_per_task():
    out, job = run("loo_random_forest.py", "--rows", "6", "--trees", "8")
    assert "leave-one-out accuracy: " in out
    scores = job.results()
    assert [s["row"] for s in scores] == list(range(6))
    files = job.outputs().by_task()
    assert sorted(files) == list(range(6))
    assert [f.name for f in files[4]] == ["model.pkl", "score.json"]
    from sklearn.datasets import load_wine

    X, _ = load_wine(return_X_y=True)
    model = pickle.loads(files[4][0].read())
    assert len(model.estimators_) == 8
    assert model.predict(X[4:5])[0] == json.loads(files[4][1].read())["predicted"]


def test_parallel_forest_combines_sub_forests_as_accurate_as_one_forest():
    out, job = run("parallel_forest.py", "--parts", "4", "--trees", "8", "--rows", "1500")
    combined = float(re.search(r"combined forest: 32 trees, test accuracy ([\d.]+)", out).group(1))
    single = float(re.search(r"single forest: +32 trees, test accuracy ([\d.]+)", out).group(1))
    assert combined > 0.7 and single > 0.7
    assert abs(combined - single) <= 0.06
    seeds = {f.random_state for f in job.results()}
    assert len(seeds) == 4, "every sub-forest grew from its own task seed"


def test_text_sample_is_the_same_whatever_the_chunks_and_writes_a_report(tmp_path):
    out, job = run("text_sample.py", "--lines", "3000", "--chunk", "32KB")
    example = load("text_sample.py")
    lines = (tmp_path / "demo-output" / "reviews.jsonl").read_bytes().splitlines()
    expected = [json.loads(x)["text"] for x in lines if example.keep(x, 0.10, 42)]
    got = [t for f in job.outputs() for t in f.read().decode().splitlines()]
    assert got == expected, "the sample is decided per line, not per chunk or worker"
    assert 0.07 < len(got) / len(lines) < 0.13
    assert len(job.outputs()) > 3
    assert f"sampled {len(got):,} of 3,000 reviews" in out
    page = (tmp_path / "demo-output" / "report.html").read_text()
    assert "<svg" in page and page.count("<circle") == 40
    # what the demo makes is under demo-output/ (git-ignored), next to the store
    assert {p.name for p in tmp_path.iterdir()} <= {".cloudloop", "demo-output"}
    # the caption says which topics the two axes hold apart, as the drawn words show
    words = re.findall(
        r"<tr><td>([^<]+)</td><td>(\w+)</td><td>\d+</td><td>([-+.\d]+)</td><td>([-+.\d]+)</td>",
        page,
    )
    assert len(words) == 40
    pts: dict[str, list[tuple[float, float]]] = {}
    for _, topic, x, y in words:
        pts.setdefault(topic, []).append((float(x), float(y)))
    common = pts.pop("common")
    cx, cy = (sum(p[i] for p in common) / len(common) for i in (0, 1))
    reach = 2 * (sum((x - cx) ** 2 + (y - cy) ** 2 for x, y in common) / len(common)) ** 0.5
    caption = re.search(r"These two axes hold (.*?) apart", page).group(1)
    for topic, p in pts.items():
        tx, ty = (sum(q[i] for q in p) / len(p) for i in (0, 1))
        held_apart = ((tx - cx) ** 2 + (ty - cy) ** 2) ** 0.5 > reach
        assert (topic in caption) == held_apart, (topic, caption)
    assert "Words used together sit together" not in page


def test_monte_carlo_is_reproducible_however_tasks_are_grouped():
    args = ["--tasks", "6", "--paths", "5000", "--seed", "3"]
    first, _ = run("monte_carlo.py", *args)
    second, _ = run("monte_carlo.py", *args, "--chunksize", "4")
    price = re.compile(r"Monte Carlo price: (\S+) ± (\S+)")
    assert price.search(first).groups() == price.search(second).groups()
    off = float(re.search(r"off by ([-+\d.]+) standard errors", first).group(1))
    assert abs(off) < 4


def test_r_command_task_writes_per_task_files(tmp_path):
    # Rscript comes from scripts/test-deps.sh (Debian r-base-core); without it this fails
    out, job = run("r_command.py", "--ns", "30,2000", "--noises", "0.5,4")
    files = job.outputs()
    assert sorted({f.name for f in files}) == ["coefficients.csv", "fit.pdf"]
    assert sorted(files.by_task()) == [0, 1, 2, 3]
    rows = {}
    for f in files:
        if f.name == "coefficients.csv":
            slope = list(csv.DictReader(io.StringIO(f.read().decode())))[1]
            rows[(slope["n"], slope["noise"])] = float(slope["estimate"])
        else:
            assert f.read().startswith(b"%PDF")
    assert set(rows) == {("30", "0.5"), ("30", "4"), ("2000", "0.5"), ("2000", "4")}
    assert abs(rows[("2000", "0.5")] - 3) < 0.02
    assert (tmp_path / "demo-output" / "r-outputs" / "3" / "fit.pdf").is_file()
    assert "n=2000 noise=4 slope=" in out


def test_docs_name_only_tests_and_files_that_exist():
    root = EXAMPLES.parent
    tests = {p.name: p.read_text() for p in (root / "tests").glob("test_*.py")}
    for page in (root / "docs").rglob("*.md"):
        text = page.read_text()
        for name in re.findall(r"\b(test_\w+\.py)\b", text):
            assert name in tests, f"{page.name} names {name}, which does not exist"
        for fn in re.findall(r"::(test_\w+\*?)", text):
            pattern = re.compile(r"^def " + fn.replace("*", r"\w*") + r"\(", re.M)
            assert any(pattern.search(src) for src in tests.values()), f"{page.name}: {fn}"
        for link in re.findall(r"\]\(([^)#]+)\)", text):
            if not link.startswith("http"):
                assert (page.parent / link).exists(), f"{page.name} links to missing {link}"
