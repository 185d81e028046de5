"""A worker's start-up stays cheap: what a task runner and a worker import.

Every worker slot starts a ``cloudloop worker`` process and a task runner child
(``python -m cloudloop.runner``); hundreds may start at once on one machine,
so what they import is CPU paid hundreds of times. The package imports its
public names lazily and the modules on these paths import what only a client,
a command task or a cluster command needs where it is used. These tests pin
the module lists (not times: those depend on the machine), and check that the
lazy public names are the same objects as before.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import cloudloop as cl

# imported by neither a task runner nor a worker at start-up
NOT_AT_START = [
    "cloudloop.executor",  # the client side
    "cloudloop.job",
    "cloudloop.results",
    "cloudloop.session",
    "cloudloop.submit",
    "cloudloop.items",  # command tasks: imported when the first one runs
    "cloudloop.template",
    "cloudloop.shellrules",
    "cloudloop.shellsyntax",
    "cloudloop.providers",  # cluster commands
    "importlib.metadata",  # only to check a job's requirements
    "tomllib",  # only when there is a cloudloop.toml to read
    "urllib.request",  # only with instance metadata (spot notices)
    "csv",
]
# the runner needs none of these either
NOT_IN_RUNNER = [
    *NOT_AT_START,
    "cloudloop.config",
    "cloudloop.environment",
    "cloudloop.backends",
    "hmac",  # a runner never signs nor verifies: OpenSSL's hashes are ~4 MB a runner
    "_hashlib",
    "sysconfig",
]


def _imported(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_task_runner_imports_only_what_it_runs():
    heavy = sorted(set(NOT_IN_RUNNER) & _imported("import cloudloop.runner"))
    assert not heavy, f"importing cloudloop.runner imports {heavy}"


def test_a_worker_imports_only_what_it_serves_with():
    heavy = sorted(set(NOT_AT_START) & _imported("import cloudloop.worker, cloudloop.cli"))
    assert not heavy, f"starting a worker imports {heavy}"


def test_import_cloudloop_leaves_the_client_until_it_is_used():
    assert not {"cloudloop.executor", "cloudloop.config"} & _imported("import cloudloop")


@pytest.mark.parametrize("name", cl.__all__)
def test_every_public_name_is_there(name):
    assert name in dir(cl)
    assert getattr(cl, name) is not None


def test_the_lazy_names_are_the_modules_own():
    from cloudloop import context, executor, job, model, outputs

    # the function, though cloudloop.chunks is a module too
    assert cl.chunks is sys.modules["cloudloop.chunks"].chunks
    assert cl.map is executor.map and cl.Executor is executor.Executor
    assert cl.Job is job.Job and cl.FailedTask is job.FailedTask
    assert cl.JobState is model.JobState and cl.task_rng is context.task_rng
    assert cl.output_dir is outputs.output_dir
    namespace: dict = {}
    exec("from cloudloop import *", namespace)
    assert set(cl.__all__) <= set(namespace)


def test_submodules_and_unknown_names():
    assert cl.codec.__name__ == "cloudloop.codec"  # as when the package imported it eagerly
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        cl.no_such_name  # noqa: B018
    assert not hasattr(cl, "__no_such_dunder__")


def test_command_names_resolve_from_commands():
    from cloudloop import commands, items, template

    for name in commands.__all__:
        assert getattr(commands, name) is not None
    assert commands.prepare is template.prepare and commands.read_table is items.read_table
    with pytest.raises(AttributeError):
        commands.no_such_name  # noqa: B018
