"""Progress where the user looks: a terminal, a log file or pipe, a Jupyter notebook."""

from __future__ import annotations

import io
import sys
import types

from cloudloop.display import ProgressBar, in_notebook, progress_display
from cloudloop.model import JobState, JobStatus


def _square(i: int) -> int:
    return i * i


def _status(done: int, total: int = 100, state: JobState = JobState.RUNNING) -> JobStatus:
    return JobStatus("j1", "grid", state, total, done, 0, 2, 2, 0.0, 10.0, 5.0, 3.0)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_pipe_prints_occasional_plain_lines():
    out = io.StringIO()
    bar = ProgressBar(out)
    for done in range(101):
        for _ in range(10):  # polled far more often than anything changes
            bar.update(_status(done))
    bar.update(_status(100, state=JobState.COMPLETED), final=True)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 10 <= len(lines) <= 13  # every 10 % step and the end, not every poll
    assert all(line.startswith("j1: [") for line in lines)
    assert "100 ok of 100" in lines[-1] and "completed" in lines[-1]


def test_bar_on_a_terminal_redraws_one_line():
    out = _Tty()
    bar = ProgressBar(out)
    bar.update(_status(5))
    bar.update(_status(100, state=JobState.COMPLETED), final=True)
    text = out.getvalue()
    assert text.startswith("\r\x1b[2K[") and text.endswith("\n")
    assert text.count("\n") == 1


def test_wait_with_progress_when_stderr_is_captured(make_executor, capsys):
    ex = make_executor(workers=1)
    job = ex.map_job(_square, range(8), name="piped")
    job.wait(timeout=60, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert f"{job.id}: [" in err and "8 ok of 8" in err.splitlines()[-1]


def _fake_ipython(monkeypatch, kernel: bool):
    """A stand-in for IPython's API as a Jupyter kernel presents it (IPython is not a
    test dependency): records what would be displayed."""
    shown: list[str] = []

    class Handle:
        def update(self, obj):
            shown.append(obj.data)

    def display(obj, display_id=False):
        assert display_id is True
        shown.append(obj.data)
        return Handle()

    shell = types.SimpleNamespace(kernel=object() if kernel else None)
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    disp = types.ModuleType("IPython.display")
    disp.HTML = lambda data: types.SimpleNamespace(data=data)
    disp.display = display
    ipython.display = disp
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", disp)
    return shown


def test_terminal_ipython_is_not_a_notebook(monkeypatch):
    assert not in_notebook()
    _fake_ipython(monkeypatch, kernel=False)
    assert not in_notebook()
    assert isinstance(progress_display(), ProgressBar)


def test_wait_in_a_notebook_updates_one_html_card(make_executor, monkeypatch, capsys):
    shown = _fake_ipython(monkeypatch, kernel=True)
    assert in_notebook()
    ex = make_executor(workers=1)
    job = ex.map_job(_square, range(8), name="in a notebook")
    job.wait(timeout=60, progress=True)
    assert capsys.readouterr().err == ""  # no text bar as well
    assert len(shown) >= 2  # the empty placeholder, then updates in place
    assert "8 ok of 8" in shown[-1] and "completed" in shown[-1]
    card = job._repr_html_()
    assert card.startswith("<div") and "in a notebook" in card and job.id in card
    assert "width:100.00%" in card


def test_a_real_jupyter_kernel_shows_html_progress_and_a_job_card(url, tmp_path):
    """``job.wait(progress=True)`` and ``job`` as the last expression, in a real IPython
    kernel, as a notebook front end receives them (Jupyter's messaging protocol)."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        code = (
            "import cloudloop as cl\n"
            f"ex = cl.Executor(backend={url!r}, workers=1)\n"
            "job = ex.map_job(abs, range(-5, 0), name='from a notebook')\n"
            "job.wait(timeout=120, progress=True)\n"
            "ex.shutdown()\n"
            "job\n"
        )
        msg_id = kc.execute(code)
        shown, updates, result, stderr = [], [], None, ""
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "display_data":
                shown.append(content)
            elif kind == "update_display_data":
                updates.append(content["data"]["text/html"])
            elif kind == "execute_result":
                result = content["data"]
            elif kind == "stream" and content["name"] == "stderr":
                stderr += content["text"]
            elif kind == "error":
                raise AssertionError("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert len(shown) == 1 and shown[0]["transient"]["display_id"]  # one card, updated in place
    assert "5 ok of 5" in updates[-1] and "completed" in updates[-1]
    assert "\r" not in stderr and "[####" not in stderr  # no text bar as well
    assert "from a notebook" in result["text/html"] and "completed" in result["text/html"]
