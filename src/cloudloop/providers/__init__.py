"""Provider registry: profile ``provider = "name"`` -> class, imported lazily.

Everything outside this package reaches a provider through here and through
the interface of :mod:`cloudloop.providers.base` (:class:`Provider`,
:class:`Cluster`): no other module names a provider.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Cluster, Provider, Report, Unsupported, WorkerPool

if TYPE_CHECKING:
    from ..config import Profile

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
    provider: Provider = getattr(mod, cls)(options, profile=profile)
    return provider


def provider_for(profile: Profile) -> Provider:
    """The provider a profile names, with its options."""
    return get_provider(profile.provider, profile.provider_options, profile.name)


def cluster_for(profile: Profile, backend_url: str | None = None) -> Cluster:
    """The profile's cluster: the workers ``cloudloop up`` starts for its backend."""
    return provider_for(profile).cluster(backend_url or profile.backend, profile.worker)


__all__ = [
    "REGISTRY",
    "Cluster",
    "Provider",
    "Report",
    "Unsupported",
    "WorkerPool",
    "cluster_for",
    "get_provider",
    "provider_for",
]
