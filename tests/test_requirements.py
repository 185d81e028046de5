"""requirements = "auto": a job records what its function imports, workers run only
jobs whose environment they have.

The packages a job pins here are the ones installed in this venv (numpy,
scikit-learn, scipy) and a throwaway distribution, ``cldummy``, built in two
versions into two directories that look like site-packages: the client
imports 1.0, one worker has 2.0 on its PYTHONPATH, another 1.0.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_for
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cloudloop as cl
from cloudloop import cli, environment, keys
from cloudloop.backends import open_backend
from cloudloop.config import load_profile
from cloudloop.errors import ConfigError
from cloudloop.heartbeat import worker_records
from cloudloop.job import _lacking
from cloudloop.model import JobOptions, SetAside, WorkerRecord
from cloudloop.providers import REGISTRY
from cloudloop.providers.base import Cluster, Provider, WorkerPool
from cloudloop.submit import JobWriter

SRC = Path(cl.__file__).resolve().parents[1]
NUMPY = f"numpy=={metadata.version('numpy')}"
SKLEARN = f"scikit-learn=={metadata.version('scikit-learn')}"
SCIPY = f"scipy=={metadata.version('scipy')}"

# ---------------------------------------------------------------- pins_for

_X = np.arange(12.0).reshape(4, 3)
_MODEL = make_pipeline(StandardScaler(), LinearRegression()).fit(_X, _X @ [1.0, 2.0, 3.0])


def _top_level(x):
    return float(np.sqrt(x))


def _closure_over_a_model():
    model = _MODEL

    def predict(x):
        return model.predict([[x, x, x]])[0]

    return predict


def _imports_when_it_runs(x):
    from scipy import special

    return special.expit(x)


def _plain(x):
    return json.dumps({"x": x})


def _uses_cloudloop(x):
    return cl.progress(x)


def _default_array(x, table=_X):
    return table[x]


class _Predictor:
    def __init__(self):
        self.model = _MODEL

    def __call__(self, x):
        return self.model.predict(x)

    def predict(self, x):
        return self.model.predict(x)


@pytest.mark.parametrize(
    ("fn", "pins"),
    [
        (_top_level, (NUMPY,)),
        (_closure_over_a_model(), (NUMPY, SKLEARN)),
        (lambda x: np.exp(x), (NUMPY,)),
        (_Predictor().predict, (NUMPY, SKLEARN)),
        (_Predictor(), (NUMPY, SKLEARN)),
        (functools.partial(_top_level), (NUMPY,)),
        (_imports_when_it_runs, (SCIPY,)),
        (_default_array, (NUMPY,)),
        (np.sqrt, (NUMPY,)),
        (LinearRegression().fit, (SKLEARN,)),
        (_plain, ()),
        (_uses_cloudloop, ()),
        (print, ()),
    ],
    ids=["top-level", "closure", "lambda", "method", "callable", "partial", "import-inside",
         "default-arg", "ufunc", "installed-method", "stdlib", "cloudloop", "builtin"],
)  # fmt: skip
def test_pins_name_the_installed_distributions_a_function_reaches(fn, pins):
    assert environment.pins_for(fn) == pins


def test_a_users_own_module_is_looked_into_not_pinned(tmp_path, monkeypatch):
    (tmp_path / "myhelpers.py").write_text(
        "import numpy as np\n\ndef train(x):\n    return np.ones(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myhelpers", raising=False)
    helpers = importlib.import_module("myhelpers")
    try:
        assert environment.pins_for(lambda x: helpers.train(x)) == (NUMPY,)
    finally:
        sys.modules.pop("myhelpers", None)


class _Hostile:
    """An object that raises on every look (a lazy proxy gone wrong)."""

    def __getattribute__(self, name):
        raise RuntimeError(f"no {name} for you")


def test_what_cannot_be_looked_into_is_skipped_and_it_stays_fast():
    hostile = _Hostile()

    def task(x):
        return hostile, np.zeros(x), [list(range(1000))] * 1000

    assert environment.pins_for(task) == (NUMPY,)
    environment.pins_for(_closure_over_a_model())  # warm: each module's owner is cached
    t0 = time.perf_counter()
    for _ in range(20):
        assert environment.pins_for(_closure_over_a_model()) == (NUMPY, SKLEARN)
    assert (time.perf_counter() - t0) / 20 < 0.02


def test_missing_says_what_this_interpreter_lacks():
    np_version = metadata.version("numpy")
    assert environment.missing((NUMPY, f"numpy=={np_version}+cpu")) == ()  # a local label
    assert environment.missing(("numpy==0.1", "no-such-dist-here==1.0")) == (
        ("numpy==0.1", np_version),
        ("no-such-dist-here==1.0", ""),
    )


# ---------------------------------------------------------------- what the status says


def _live(wid: str, python: str = "3.11") -> WorkerRecord:
    return WorkerRecord(wid, last_seen=time.time(), python=python)


_NEED = "no worker can run this job: it needs "
_FIX = ' (install it, or let the provider install requirements = "auto")'


@pytest.mark.parametrize(
    ("live", "aside", "problem"),
    [
        ([_live("w1")], [SetAside("w1", ("scikit-learn==1.5.2",), ("1.4.0",))],
         f"{_NEED}scikit-learn==1.5.2, workers have 1.4.0{_FIX}"),
        ([_live("w1"), _live("w2")],
         [SetAside("w1", ("scikit-learn==1.5.2",), ("1.4.0",)),
          SetAside("w2", ("scikit-learn==1.5.2",), ("",))],
         f"{_NEED}scikit-learn==1.5.2, workers have 1.4.0, none{_FIX}"),
        ([_live("w1")], [SetAside("w1", ("a==1", "b==2"), ("0.9", ""))],
         f"{_NEED}a==1, workers have 0.9; b==2, workers have none (install them, or let "
         'the provider install requirements = "auto")'),
        # another worker has not said it lacks anything: it may run the job
        ([_live("w1"), _live("w2")], [SetAside("w1", ("a==1",), ("",))], None),
        # a worker of another Python is the Python problem's, not this one's
        ([_live("w1"), _live("w3", "3.13")], [SetAside("w1", ("a==1",), ("",))],
         f"{_NEED}a==1, workers have none{_FIX}"),
        ([], [SetAside("w1", ("a==1",), ("",))], None),
        ([_live("w1")], [], None),
    ],
)  # fmt: skip
def test_status_names_what_the_workers_lack(live, aside, problem):
    assert _lacking("3.11", live, aside) == ((problem,) if problem else ())


# ---------------------------------------------------------------- a real job, real workers


def _dummy_site(root: Path, version: str) -> Path:
    """A directory that looks like site-packages holding distribution cldummy==version."""
    site = root / f"cldummy-{version}" / "site-packages"
    (site / "cldummy").mkdir(parents=True)
    (site / "cldummy" / "__init__.py").write_text(
        f"VERSION = {version!r}\n\ndef double(x):\n    return 2 * x\n"
    )
    info = site / f"cldummy-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: cldummy\nVersion: {version}\n")
    (info / "RECORD").write_text(
        f"cldummy/__init__.py,,\ncldummy-{version}.dist-info/METADATA,,\n"
        f"cldummy-{version}.dist-info/RECORD,,\n"
    )
    return site


@pytest.fixture
def cldummy(tmp_path, monkeypatch):
    """cldummy 1.0 imported here; (site of 1.0, site of 2.0) for workers."""
    one, two = _dummy_site(tmp_path, "1.0"), _dummy_site(tmp_path, "2.0")
    monkeypatch.syspath_prepend(str(one))
    importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, "cldummy", raising=False)
    module = importlib.import_module("cldummy")
    assert module.VERSION == "1.0"
    yield module, one, two
    sys.modules.pop("cldummy", None)


def _doubler(module):
    def task(x):
        return module.double(x)

    return task


class _Workers:
    """``cloudloop worker`` processes on one backend, each with its own PYTHONPATH."""

    def __init__(self, tmp_path: Path, url: str):
        self.tmp, self.url, self.procs = tmp_path, url, []
        (tmp_path / "none.toml").write_text("")

    def start(self, site: Path) -> subprocess.Popen:
        env = {**os.environ, "CLOUDLOOP_BACKEND": self.url, "PYTHONNOUSERSITE": "1",
               "PYTHONPATH": f"{SRC}{os.pathsep}{site}",
               "CLOUDLOOP_CONFIG": str(self.tmp / "none.toml")}  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudloop", "worker", "--no-profile", "--heartbeat", "0.5"],
            env=env, cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(tmp_path):
    w = _Workers(tmp_path, f"sqlite://{tmp_path / 'backend'}")
    yield w
    w.stop()


def test_a_worker_with_another_version_leaves_the_job_to_one_that_has_it(cldummy, workers, capsys):
    module, one, two = cldummy
    url = workers.url
    with cl.Executor(backend=url, workers=0, requirements="auto") as ex:
        job = ex.map_job(_doubler(module), range(6), chunksize=6)  # one message
        assert job.manifest.requires == ("cldummy==1.0",)
        assert cl.attach(job.id, backend=url).manifest.requires == ("cldummy==1.0",)
        other = workers.start(two)
        needs = (
            "no worker can run this job: it needs cldummy==1.0, workers have 2.0 "
            '(install it, or let the provider install requirements = "auto")'
        )
        wait_for(lambda: needs in job.status().problems, timeout=60,
                 what="the status to name what the worker lacks")  # fmt: skip
        assert cli.main(["status", job.id, "--backend", url]) == 0
        assert needs in capsys.readouterr().out  # `cloudloop status JOB`
        # a command job pins nothing: the same worker runs it, past the job it left alone
        echo = ex.command_job("echo {x}", [{"x": 1}, {"x": 2}])
        assert echo.manifest.requires == ()
        assert [r["stdout"].strip() for r in echo.results(timeout=60)] == ["1", "2"]
        st = job.status()
        assert st.done == 0 and st.failed == 0 and not st.state.finished
        with open_backend(url) as b:
            (rec,) = worker_records(b)
            assert rec.failures == 0 and rec.error is None
            assert b.store.list(keys.DEADLETTER) == []  # set aside, never dead-lettered
            aside = SetAside.from_dict(b.get_record(keys.aside(job.id, rec.id)))
            assert aside == SetAside(rec.id, ("cldummy==1.0",), ("2.0",), aside.at)
        # a worker that has cldummy 1.0 comes: it runs every task, the problem goes
        workers.start(one)
        assert job.results(timeout=120) == [2 * x for x in range(6)]
        assert rec.id not in {o.worker for o in job.outcomes().values()}
        assert not any("no worker can run" in p for p in job.status().problems)
    assert other.poll() is None  # the other worker is alive and well, serving on


def test_without_auto_a_job_pins_nothing(cldummy, tmp_path):
    module, _, _ = cldummy
    with cl.Executor(backend=f"sqlite://{tmp_path / 'b'}", workers=0) as ex:
        assert ex.map_job(_doubler(module), range(2)).manifest.requires == ()
        job = ex.map_job(_doubler(module), range(2), requirements="auto")
        assert job.manifest.requires == ("cldummy==1.0",)
        with pytest.raises(ConfigError, match='requirements for a job is "auto"'):
            ex.map_job(_doubler(module), range(2), requirements=["cldummy"])
        ex.shutdown(cancel_futures=True)  # no worker: nothing to wait for


def test_a_session_job_pins_what_its_first_function_imports(tmp_path):
    with cl.Executor(backend=f"sqlite://{tmp_path / 'b'}", workers=0, requirements="auto") as ex:
        ex.submit(_top_level, 4)
        assert ex.session_job().manifest.requires == (NUMPY,)
        ex.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- for a provider


def _job(backend, requires, kind="python"):
    writer = JobWriter.plan(backend, JobOptions(), kind=kind, requires=requires,
                            command="echo" if kind == "command" else None)  # fmt: skip
    writer.write_items(None if kind == "command" else _plain, [(1,)], iter([1, 1]))  # one task
    writer.seal()
    time.sleep(0.01)  # created times apart: the newer job is the later one
    return writer.id


def test_waiting_requirements_are_the_pins_of_unfinished_jobs(tmp_path):
    with open_backend(f"sqlite://{tmp_path / 'b'}") as b:
        assert environment.waiting_requirements(b) == ((), [])
        old = _job(b, ("numpy==1.0", "cldummy==1.0"))
        cancelled = _job(b, ("gone==1.0",))
        cl.attach(cancelled, backend=b.url).cancel()
        _job(b, ("numpy==1.0",))
        _job(b, (), kind="command")
        new = _job(b, ("cldummy==2.0", "Other_Dist==3"))
        pins, warnings = environment.waiting_requirements(b)
        assert pins == ("cldummy==2.0", "numpy==1.0", "Other_Dist==3")
        assert warnings == [
            f"jobs {new} and {old} pin different versions of cldummy: installing "
            f"cldummy==2.0 (the newer job's); workers will leave job {old}'s tasks alone "
            "(it needs cldummy==1.0)"
        ]


class _FakePool(WorkerPool):
    def stop(self, timeout: float = 10.0) -> None:
        pass

    def alive(self) -> int:
        return 0


class FakeProvider(Provider):
    """Starts nothing; notes what it would have installed when it was asked to start."""

    name = "fake"
    started: list[tuple[str, ...]] = []

    def start(self, backend_url, n, worker):
        with open_backend(backend_url) as b:
            FakeProvider.started.append(environment.waiting_requirements(b)[0])
        return _FakePool()

    def cluster(self, backend_url, worker) -> Cluster:
        raise NotImplementedError


def test_an_auto_profile_starts_its_workers_once_the_first_job_is_stored(tmp_path, monkeypatch):
    config = tmp_path / "cloudloop.toml"
    config.write_text(
        f'[profiles.p]\nbackend = "sqlite://{tmp_path / "b"}"\nprovider = "fake"\n'
        'workers = 2\nrequirements = "auto"\n'
    )
    monkeypatch.setenv("CLOUDLOOP_CONFIG", str(config))
    monkeypatch.setitem(REGISTRY, "fake", (__name__, "FakeProvider"))
    monkeypatch.setattr(FakeProvider, "started", [])
    assert load_profile("p").auto_requirements
    with cl.Executor(profile="p") as ex:
        assert FakeProvider.started == []  # nothing to install yet
        job = ex.map_job(_top_level, range(3))
        assert job.manifest.requires == (NUMPY,)
        assert FakeProvider.started == [(NUMPY,)]  # started once, seeing the job's pins
        ex.map_job(_top_level, range(3))
        assert FakeProvider.started == [(NUMPY,)]
        ex.shutdown(cancel_futures=True)
    assert job.status().state.value == "cancelled"


def test_the_ssh_provider_installs_what_the_waiting_jobs_pin(tmp_path, monkeypatch):
    from cloudloop.model import WorkerOptions
    from cloudloop.providers import ssh

    settings = ssh.SshSettings.from_options({"hosts": ["n1"], "requirements": "auto"})
    assert settings.requirements == "auto"
    with pytest.raises(ConfigError, match='list of strings or "auto"'):
        ssh.SshSettings.from_options({"hosts": ["n1"], "requirements": "numpy"})
    url = f"sqlite://{tmp_path / 'b'}"
    cluster = ssh.SshCluster(settings, url, WorkerOptions(), "lab")
    built = []
    monkeypatch.setattr(
        ssh.wheelhouse, "build", lambda extras, reqs: built.append(reqs) or tmp_path
    )
    empty = cluster.digest
    assert cluster.choose_requirements() == ()
    assert cluster.notes == [
        'requirements = "auto": installing nothing (no waiting job pins a package)'
    ]
    with open_backend(url) as b:
        old = _job(b, ("cldummy==1.0",))
        new = _job(b, ("cldummy==2.0", "numpy==1.0"))
    assert cluster.choose_requirements() == ("cldummy==2.0", "numpy==1.0")
    assert cluster.digest != empty  # another venv on the hosts
    assert cluster.notes[0] == 'requirements = "auto": installing cldummy==2.0, numpy==1.0'
    assert cluster.notes[1].startswith(f"jobs {new} and {old} pin different versions of cldummy")
    cluster.wheels()
    assert built == [("cldummy==2.0", "numpy==1.0")]
