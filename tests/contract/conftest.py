"""One factory per backend scheme; the contract suites run against each.

The suites are parametrised from the live registry, so registering a backend
without adding its factory here fails the suite instead of skipping it. The aws
scheme runs twice: on moto (``aws``) and on LocalStack (``aws-localstack``),
two independent implementations of SQS and S3.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import pytest

from cloudloop.backends import REGISTRY, Backend, open_backend


@contextlib.contextmanager
def _sqlite(tmp_path, request) -> Iterator[str]:
    yield "sqlite://" + str(tmp_path / "contract")


@contextlib.contextmanager
def _aws(tmp_path, request) -> Iterator[str]:
    yield request.getfixturevalue("aws_url")


@contextlib.contextmanager
def _redis(tmp_path, request) -> Iterator[str]:
    # each test gets its own key prefix on one session-wide server
    yield request.getfixturevalue("redis_server").url(prefix=f"t{secrets.token_hex(4)}")


@contextlib.contextmanager
def _rediss(tmp_path, request) -> Iterator[str]:
    yield request.getfixturevalue("rediss_server").url(prefix=f"t{secrets.token_hex(4)}")


@contextlib.contextmanager
def _aws_localstack(tmp_path, request) -> Iterator[str]:
    yield request.getfixturevalue("localstack_aws_url")


FACTORIES = {"sqlite": _sqlite, "aws": _aws, "redis": _redis, "rediss": _rediss}

# a second implementation of a registered scheme's services, run beside the first:
# what passes on one emulator only is that emulator's reading of the API
SECOND_IMPLEMENTATIONS = {"aws-localstack": _aws_localstack}


@pytest.fixture(params=sorted(REGISTRY) + sorted(SECOND_IMPLEMENTATIONS))
def backend(request, tmp_path) -> Iterator[Backend]:
    name = request.param
    factory = FACTORIES.get(name) or SECOND_IMPLEMENTATIONS.get(name)
    if factory is None:
        pytest.fail(f"backend {name!r} is registered but has no contract-test factory")
    with factory(tmp_path, request) as url:
        b = open_backend(url)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on loopback for the whole session (append-only, no snapshots)."""
    import redis_server as rs

    rs.require()
    server = rs.RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rediss_server(tmp_path_factory):
    """The same over TLS (a self-signed certificate) with a password."""
    import redis_server as rs

    rs.require()
    server = rs.RedisServer(tmp_path_factory.mktemp("rediss"), tls=True, password="s3cret/pw")
    yield server
    server.stop()
