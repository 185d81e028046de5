"""Per-task output files: written in the task's output directory, listed by job.outputs()."""

from __future__ import annotations

from pathlib import Path

import pytest

import cloudloop as cl
from cloudloop.backends import open_backend


def _write(x):
    out = cl.output_dir()
    (out / "model.txt").write_text(f"model {x}\n")
    (out / "sub").mkdir(exist_ok=True)
    (out / "sub" / "data.bin").write_bytes(bytes([x]) * (x + 1))
    if x == 3:
        raise ValueError("task 3 fails after writing")
    return str(out)


def test_function_task_outputs_are_stored_and_listed(make_executor, url, tmp_path):
    ex = make_executor(workers=2)
    job = ex.map_job(_write, range(5))
    job.wait()
    dirs = job.results(return_exceptions=True)
    assert isinstance(dirs[3], ValueError)
    assert len({d for d in dirs if isinstance(d, str)}) == 4, "a directory per task"
    assert not any(Path(d).exists() for d in dirs if isinstance(d, str)), "removed after upload"

    files = job.outputs()
    assert [(f.index, f.name) for f in files] == [
        (i, name) for i in (0, 1, 2, 4) for name in ("model.txt", "sub/data.bin")
    ], "a failed task uploads nothing"
    assert files[2].read() == b"model 1\n"
    assert [f.name for f in job.outputs(4)] == ["model.txt", "sub/data.bin"]
    assert job.outputs(4)[1].read() == b"\x04" * 5

    again = cl.attach(job.id, backend=url)  # from anywhere: a fresh handle sees them too
    saved = again.outputs().download(tmp_path / "got")
    assert (tmp_path / "got" / "2" / "sub" / "data.bin").read_bytes() == b"\x02" * 3
    assert len(saved) == 8
    assert sorted(again.outputs().by_task()) == [0, 1, 2, 4]


def test_command_task_out_dir_and_env(make_executor):
    ex = make_executor(workers=1)
    cmd = 'echo "fit {alpha}" > "$CLOUDLOOP_OUTPUT/fit.txt" && mkdir -p out/plots && echo {index} > out/plots/p.txt'
    job = ex.command_job(cmd, [{"alpha": 0.1}, {"alpha": 2}])
    job.results()
    got = {(f.index, f.name): f.read() for f in job.outputs()}
    assert got == {
        (0, "fit.txt"): b"fit 0.1\n",
        (0, "plots/p.txt"): b"0\n",
        (1, "fit.txt"): b"fit 2\n",
        (1, "plots/p.txt"): b"1\n",
    }


def test_outputs_are_signed(make_executor, url):
    ex = make_executor(workers=1)
    job = ex.map_job(_write, [1])
    job.results()
    f = job.outputs()[0]
    store = open_backend(url).store
    store.put(f.key, store.get(f.key)[:-1] + b"X")
    with pytest.raises(cl.TamperedError):
        f.read()


def test_output_dir_outside_a_task_is_local(tmp_path):
    assert _write(1) == "outputs"
    assert (tmp_path / "outputs" / "model.txt").read_text() == "model 1\n"
