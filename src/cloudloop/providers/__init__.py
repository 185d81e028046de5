"""Provider registry: profile ``provider = "name"`` -> class, imported lazily."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from .base import Provider, WorkerPool

REGISTRY: dict[str, tuple[str, str]] = {
    "local": ("cloudloop.providers.local", "LocalProvider"),
    "ec2": ("cloudloop.providers.ec2", "Ec2Provider"),
    "ssh": ("cloudloop.providers.ssh", "SshProvider"),
}


def get_provider(name: str, options: dict[str, Any] | None = None, profile: str = "") -> Provider:
    if name not in REGISTRY:
        raise ConfigError(f"provider {name!r} is not known; known: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"provider {name!r} needs {e.name} (pip install 'cloudloop[aws]')") from e
    return getattr(mod, cls)(options, profile=profile)


__all__ = ["REGISTRY", "Provider", "WorkerPool", "get_provider"]
