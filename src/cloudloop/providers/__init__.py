"""Provider registry: profile ``provider = "name"`` -> class, imported lazily."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from .base import Provider, WorkerPool

REGISTRY: dict[str, tuple[str, str]] = {
    "local": ("cloudloop.providers.local", "LocalProvider"),
}


def get_provider(name: str, options: dict[str, Any] | None = None) -> Provider:
    if name not in REGISTRY:
        raise ConfigError(f"provider {name!r} is not known; known: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(options)


__all__ = ["REGISTRY", "Provider", "WorkerPool", "get_provider"]
