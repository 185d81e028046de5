"""One factory per backend scheme; the contract suites run against each.

The suites are parametrised from the live registry, so registering a backend
without adding its factory here fails the suite instead of skipping it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from cloudloop.backends import REGISTRY, Backend, open_backend


@contextlib.contextmanager
def _sqlite(tmp_path, request) -> Iterator[str]:
    yield "sqlite://" + str(tmp_path / "contract")


@contextlib.contextmanager
def _aws(tmp_path, request) -> Iterator[str]:
    yield request.getfixturevalue("aws_url")


FACTORIES = {"sqlite": _sqlite, "aws": _aws}


@pytest.fixture(params=sorted(REGISTRY))
def backend(request, tmp_path) -> Iterator[Backend]:
    scheme = request.param
    if scheme not in FACTORIES:
        pytest.fail(f"backend {scheme!r} is registered but has no contract-test factory")
    with FACTORIES[scheme](tmp_path, request) as url:
        b = open_backend(url)
        try:
            yield b
        finally:
            b.close()
