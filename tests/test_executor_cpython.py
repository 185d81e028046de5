"""CPython's own executor tests, run against ``cl.Executor``.

``cl.Executor`` claims to be a drop-in ``concurrent.futures.Executor``; the
reference for that claim is the test suite CPython runs against its own
executors (``Lib/test/test_concurrent_futures``). We do not copy that code into
this repository: it is found at test time, where Python installs its own tests
-- the running interpreter's ``test.test_concurrent_futures`` if it has one,
else the closest version under ``$(pyenv root)/versions/*/lib/python3.*/test/``
(one file up to 3.12, a package since 3.13) -- and loaded under a private
module name. Its test classes are then built from its generic mixins the way
upstream builds them for ``ProcessPoolExecutor`` (``create_executor_tests``),
with one more executor mixin: ``CloudloopMixin`` makes a ``cl.Executor`` with
``worker_count`` local workers on an sqlite backend (one directory per class).

The tests that upstream runs in a subprocess (interpreter exit) import the
executor by name from ``concurrent.futures`` and the test helpers from
``test.test_concurrent_futures``; the subprocess gets a few lines in front of
its script that make both names mean ours (``_CHILD_PRELUDE``).

Every test that does not run is in ``SKIPPED`` with its reason. Only tests of
``ProcessPoolExecutor``'s own machinery are skipped (its processes, its
``mp_context``, its manager thread and call queue, ``BrokenProcessPool`` for a
worker that dies while unpickling its task); one is adapted (``ADAPTED``).
If the tests cannot be found, this module fails in CI and skips locally;
``CLOUDLOOP_CPYTHON_TESTS`` names them explicitly (a file or a package path).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from types import ModuleType

import cloudpickle
import pytest

import cloudloop as cl

PRIVATE = "_cpython_test_concurrent_futures"

# upstream mixin (by its name in either layout) -> the module of the package layout
MIXINS = {
    "ProcessPoolExecutorTest": "test_process_pool",
    "ProcessPoolShutdownTest": "test_shutdown",
    "WaitTests": "test_wait",
    "AsCompletedTests": "test_as_completed",
    "ExecutorDeadlockTest": "test_deadlock",
    "InitializerMixin": "test_init",
    "FailingInitializerMixin": "test_init",
}

SKIPPED = {
    # ---- ProcessPoolExecutor's processes, seen through its private attributes
    "ProcessPoolExecutorTest.test_killed_child": (
        "terminates one of ProcessPoolExecutor._processes and expects the whole pool to "
        "break; cloudloop's workers are not the client's to kill, and a lost worker's task "
        "is re-run elsewhere (tests/test_durability.py)"
    ),
    "ProcessPoolExecutorTest.test_traceback": (
        "asserts that the cause is ProcessPoolExecutor's private _RemoteTraceback class; "
        "cloudloop's is cl.RemoteTraceback with the same .tb text, checked with the rest "
        "of this test in tests/test_executor.py"
    ),
    "ProcessPoolExecutorTest.test_saturation": (
        "counts ProcessPoolExecutor._processes and passes an mp_context semaphore"
    ),
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": "counts ProcessPoolExecutor._processes",
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": (
        "counts ProcessPoolExecutor._processes"
    ),
    "ProcessPoolExecutorTest.test_ressources_gced_in_workers": (
        "passes a multiprocessing Manager proxy from mp_context, whose authkey only the "
        "pool's own child processes share"
    ),
    "ProcessPoolExecutorTest.test_max_tasks_per_child": "ProcessPoolExecutor's max_tasks_per_child",
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (
        "ProcessPoolExecutor's max_tasks_per_child and _mp_context"
    ),
    "ProcessPoolExecutorTest.test_max_tasks_early_shutdown": (
        "ProcessPoolExecutor's max_tasks_per_child"
    ),
    "ProcessPoolExecutorTest.test_python_finalization_error": (
        "mocks the thread start of ProcessPoolExecutor's manager and queue feeder threads"
    ),
    "ProcessPoolShutdownTest.test_processes_terminate": "joins ProcessPoolExecutor._processes",
    "ProcessPoolShutdownTest.test_context_manager_shutdown": (
        "builds a ProcessPoolExecutor itself and joins its _processes"
    ),
    "ProcessPoolShutdownTest.test_del_shutdown": (
        "joins ProcessPoolExecutor's _executor_manager_thread, _processes and _call_queue"
    ),
    "ProcessPoolShutdownTest.test_shutdown_no_wait": (
        "joins ProcessPoolExecutor's _executor_manager_thread, _processes and _call_queue"
    ),
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": (
        "joins ProcessPoolExecutor._executor_manager_thread (what it checks first, a "
        "PicklingError after shutdown(wait=False), is in tests/test_executor.py)"
    ),
    "ExecutorDeadlockTest.test_gh105829_should_not_deadlock_if_wakeup_pipe_full": (
        "mocks ProcessPoolExecutor's _ThreadWakeup pipe"
    ),
    # ---- BrokenProcessPool for a task whose arguments kill the worker's unpickler
    "ExecutorDeadlockTest.test_exit_at_task_unpickle": (
        "expects BrokenProcessPool because ProcessPoolExecutor's worker process dies "
        "unpickling the call; cloudloop unpickles arguments inside the task, so the future "
        "gets the SystemExit itself and the worker lives on (tests/test_executor.py)"
    ),
    "ExecutorDeadlockTest.test_error_at_task_unpickle": (
        "expects BrokenProcessPool because ProcessPoolExecutor's worker process dies "
        "unpickling the call; cloudloop unpickles arguments inside the task, so the future "
        "gets the UnpicklingError itself and the worker lives on (tests/test_executor.py)"
    ),
}

# tests that run in a form changed as said (each made by a function below)
ADAPTED = {
    "ExecutorDeadlockTest.test_error_at_task_pickle": (
        "cloudloop refuses an argument it cannot pickle in submit() (naming the culprit), "
        "where ProcessPoolExecutor fails the future later; the error is the same "
        "pickle.PicklingError, so this runs with submit() inside the assertRaises"
    ),
    "ProcessPoolShutdownTest.test_cancel_futures": (
        "upstream counts on some of 50 futures submitted an instant before "
        "shutdown(cancel_futures=True) having started: ProcessPoolExecutor hands "
        "max_workers + 1 calls to its processes at once, while a cloudloop worker claims "
        "a task only as it starts it (and its workers may still be starting up). So this "
        "waits until the first future is RUNNING, then runs upstream's checks unchanged"
    ),
}


# ---------------------------------------------------------------- finding upstream


def _version_of(path: Path) -> tuple[int, int]:
    m = re.search(r"python(\d+)\.(\d+)", str(path))
    return (int(m.group(1)), int(m.group(2))) if m else sys.version_info[:2]


def _pyenv_root() -> Path | None:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    exe = shutil.which("pyenv")
    if exe:
        try:
            out = subprocess.run([exe, "root"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    home = Path.home() / ".pyenv"
    return home if home.is_dir() else None


def candidates() -> list[Path]:
    """Where CPython's executor tests are, closest version first
    (``$CLOUDLOOP_CPYTHON_TESTS``, a file or package path, comes first)."""
    found: list[Path] = []
    if os.environ.get("CLOUDLOOP_CPYTHON_TESTS"):
        found.append(Path(os.environ["CLOUDLOOP_CPYTHON_TESTS"]))
    try:
        spec = importlib.util.find_spec("test.test_concurrent_futures")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        origin = Path(spec.origin)
        found.append(origin.parent if origin.name == "__init__.py" else origin)
    root = _pyenv_root()
    if root is not None:
        pattern = "versions/*/lib/python3.*/test/test_concurrent_futures"
        others = [*root.glob(pattern + ".py"), *root.glob(pattern)]
        here = sys.version_info[:2]
        others = [p for p in others if p.suffix == ".py" or (p / "__init__.py").exists()]
        others.sort(key=lambda p: (abs(_version_of(p)[1] - here[1]), -_version_of(p)[1]))
        found += [p for p in others if p not in found]
    return found


def _load(path: Path) -> dict[str, ModuleType]:
    """Upstream's modules by layout-neutral role: {"": the file or package, name: submodule}."""
    for name in [m for m in sys.modules if m == PRIVATE or m.startswith(PRIVATE + ".")]:
        del sys.modules[name]
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(
            PRIVATE, path / "__init__.py", submodule_search_locations=[str(path)]
        )
    else:
        spec = importlib.util.spec_from_file_location(PRIVATE, path)
    assert spec is not None and spec.loader is not None
    top = importlib.util.module_from_spec(spec)
    sys.modules[PRIVATE] = top
    spec.loader.exec_module(top)
    modules = {"": top}
    if path.is_dir():
        for sub in {"util", "executor", *MIXINS.values()}:
            modules[sub] = importlib.import_module(f"{PRIVATE}.{sub}")
    return modules


def _find(name: str, modules: dict[str, ModuleType]):
    for mod in modules.values():
        if name in vars(mod):
            return vars(mod)[name]
    raise AttributeError(f"{name} is in none of {sorted(m.__name__ for m in modules.values())}")


def load_upstream() -> tuple[Path, dict[str, ModuleType]] | str:
    """(where, modules) of the closest CPython tests that load here, or why none did."""
    why = []
    for path in candidates():
        try:
            return path, _load(path)
        except (Exception, unittest.SkipTest) as e:
            why.append(f"{path}: {type(e).__name__}: {e}")
    if not why:
        return (
            "CPython's test_concurrent_futures was found neither in this interpreter "
            "(test.test_concurrent_futures) nor under $(pyenv root)/versions/*/lib/python3.*/test/"
        )
    return "CPython's test_concurrent_futures did not load: " + "; ".join(why)


# ---------------------------------------------------------------- the executor mixin


_CHILD_PRELUDE = """\
import concurrent.futures, importlib.util, sys
import cloudpickle
import cloudloop as _cl
_path = {path!r}
if _path.endswith(".py"):
    _spec = importlib.util.spec_from_file_location({private!r}, _path)
else:
    _spec = importlib.util.spec_from_file_location(
        {private!r}, _path + "/__init__.py", submodule_search_locations=[_path])
_top = importlib.util.module_from_spec(_spec)
sys.modules[{private!r}] = _top
_spec.loader.exec_module(_top)
sys.modules["test.test_concurrent_futures"] = _top
if not _path.endswith(".py"):
    _shutdown = importlib.import_module({private!r} + ".test_shutdown")
    sys.modules["test.test_concurrent_futures.test_shutdown"] = _shutdown
cloudpickle.register_pickle_by_value(_top)
class {name}(_cl.Executor):
    def __init__(self, max_workers=None, mp_context=None, **kwargs):
        super().__init__(backend={url!r}, max_workers=max_workers, **kwargs)
concurrent.futures.{name} = {name}
"""


def _bound_executor(url: str) -> type:
    class CloudloopExecutor(cl.Executor):
        """``cl.Executor`` as the upstream tests make executors: ``(max_workers, mp_context)``."""

        def __init__(self, max_workers=None, mp_context=None, **kwargs):
            if mp_context is not None:
                raise TypeError("cl.Executor has no mp_context: its workers are not forked")
            kwargs.setdefault("lease", 3)
            kwargs.setdefault("heartbeat", 1)
            super().__init__(backend=url, max_workers=max_workers, **kwargs)

    return CloudloopExecutor


_child = {"url": ""}  # the backend of the test that runs a subprocess


def _python_ok_in_child(real, source: Path):
    """``assert_python_ok`` whose script finds our executor and upstream's helpers by
    the names it uses (``concurrent.futures.<executor>``, ``test.test_concurrent_futures``)."""

    def assert_python_ok(*args, **env):
        args = list(args)
        i = args.index("-c") + 1
        prelude = _CHILD_PRELUDE.format(
            path=str(source), private=PRIVATE, name="CloudloopExecutor", url=_child["url"]
        )
        args[i] = prelude + args[i]
        return real(*args, **env)

    return assert_python_ok


def _make_mixin(modules: dict[str, ModuleType]) -> type:
    base = _find("ExecutorMixin", modules)

    class CloudloopMixin(base):
        worker_count = 2
        executor_type: type = cl.Executor

        @classmethod
        def setUpClass(cls):
            super().setUpClass()
            cls._dir = tempfile.mkdtemp(prefix="cl-cpython-")
            cls._url = "sqlite://" + cls._dir
            cls.executor_type = _bound_executor(cls._url)

        @classmethod
        def tearDownClass(cls):
            shutil.rmtree(cls._dir, ignore_errors=True)
            super().tearDownClass()

        def setUp(self):
            _child["url"] = self._url
            super().setUp()

        def get_context(self):
            return None  # cl.Executor takes no mp_context; the factory accepts None

    return CloudloopMixin


def _adapted_error_at_task_pickle(modules: dict[str, ModuleType]):
    """test_error_at_task_pickle with submit() inside the assertRaises (see ADAPTED)."""
    error_at_pickle = _find("ErrorAtPickle", modules)

    def test_error_at_task_pickle(self):
        self.executor.shutdown(wait=True)
        executor = self.executor_type(max_workers=2)
        try:
            with self.assertRaises(pickle.PicklingError):
                executor.submit(id, error_at_pickle()).result(timeout=30)
        finally:
            executor.shutdown(wait=True)

    return test_error_at_task_pickle


def _adapted_cancel_futures(modules: dict[str, ModuleType]):
    """test_cancel_futures once a task has started (see ADAPTED)."""

    def test_cancel_futures(self):
        assert self.worker_count <= 5, "test needs few workers"
        fs = [self.executor.submit(time.sleep, 0.1) for _ in range(50)]
        deadline = time.monotonic() + 30
        while not (fs[0].running() or fs[0].done()) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.executor.shutdown(cancel_futures=True)
        cancelled = [fut for fut in fs if fut.cancelled()]
        self.assertGreater(len(cancelled), 20)
        others = [fut for fut in fs if not fut.cancelled()]
        for fut in others:
            self.assertTrue(fut.done(), msg=f"{fut._state=}")
            self.assertIsNone(fut.exception())
        self.assertGreater(len(others), 0)

    return test_cancel_futures


def _strip(name: str) -> str:
    if name.endswith(("Mixin", "Tests")):
        return name[:-5]
    return name[:-4] if name.endswith("Test") else name


def build_tests(source: Path, modules: dict[str, ModuleType]) -> dict[str, type]:
    """Upstream's generic mixins x CloudloopMixin, as upstream's create_executor_tests."""
    for mod in modules.values():
        cloudpickle.register_pickle_by_value(mod)
        if "assert_python_ok" in vars(mod):
            mod.assert_python_ok = _python_ok_in_child(mod.assert_python_ok, source)
    mixin = _make_mixin(modules)
    base = _find("BaseTestCase", modules)
    adapted = {
        "ExecutorDeadlockTest.test_error_at_task_pickle": _adapted_error_at_task_pickle,
        "ProcessPoolShutdownTest.test_cancel_futures": _adapted_cancel_futures,
    }
    out = {}
    for name in MIXINS:
        try:
            upstream = _find(name, modules)
        except AttributeError:
            continue  # an older CPython without this mixin
        attrs: dict = {"__module__": __name__}
        for qual, reason in SKIPPED.items():
            cls_name, test = qual.split(".")
            if cls_name == name and hasattr(upstream, test):
                attrs[test] = unittest.skip(reason)(getattr(upstream, test))
        for qual, make in adapted.items():
            cls_name, test = qual.split(".")
            if cls_name == name and hasattr(upstream, test):
                attrs[test] = make(modules)
        cls = type(f"Cloudloop{_strip(name)}Test", (upstream, mixin, base), attrs)
        out[cls.__name__] = cls
    return out


_loaded = load_upstream()
if isinstance(_loaded, str):
    if os.environ.get("CI"):
        raise RuntimeError(_loaded)
    pytest.skip(_loaded, allow_module_level=True)
SOURCE, _MODULES = _loaded
globals().update(build_tests(SOURCE, _MODULES))
