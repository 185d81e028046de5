"""Backend registry: URL scheme -> factory, imported lazily.

A new backend adds one line here and a fixture in ``tests/contract/conftest.py``;
the contract suites are parametrised from :data:`REGISTRY`, so it cannot skip them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..errors import ConfigError
from .base import Backend, Queue, Store, scheme_of

#: scheme -> (module, factory name, pip extra that provides its dependencies)
REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("cloudloop.backends.sqlite", "open_sqlite", None),
    "aws": ("cloudloop.backends.aws", "open_aws", "aws"),
    "redis": ("cloudloop.backends.redis", "open_redis", "redis"),
    "rediss": ("cloudloop.backends.redis", "open_redis", "redis"),
}


def known_schemes() -> list[str]:
    return sorted(REGISTRY)


def normalize_url(url: str) -> str:
    """Accept a bare directory path as the SQLite backend."""
    if "://" not in url:
        return "sqlite://" + url
    return url


def _factory(scheme: str) -> Callable[[str], Backend]:
    if scheme not in REGISTRY:
        raise ConfigError(
            f"backend scheme {scheme!r} is not known; known: {', '.join(known_schemes())}"
        )
    module, name, extra = REGISTRY[scheme]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        hint = f" (pip install 'cloudloop[{extra}]')" if extra else ""
        raise ConfigError(f"backend {scheme!r} needs {e.name}{hint}") from e
    factory: Callable[[str], Backend] = getattr(mod, name)
    return factory


def open_backend(url: str) -> Backend:
    """Open the backend a URL names, e.g. ``sqlite:///home/me/.cloudloop``."""
    url = normalize_url(url)
    return _factory(scheme_of(url))(url)


__all__ = ["REGISTRY", "Backend", "Queue", "Store", "known_schemes", "open_backend"]
