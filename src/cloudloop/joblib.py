"""joblib (and so scikit-learn) on cloudloop workers: ``backend="cloudloop"``.

::

    import joblib
    import cloudloop  # registers the backend as soon as joblib is imported

    with joblib.parallel_config(backend="cloudloop", profile="aws"):
        GridSearchCV(model, grid, n_jobs=-1).fit(X, y)        # every fit on a worker
        cross_val_score(model, X, y, cv=10, n_jobs=-1)
        Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)

``import cloudloop`` must stay fast and must not import joblib (nor the numpy
it drags in), so registration is deferred: if joblib is already imported it
happens at once, otherwise a one-shot import hook registers the backend right
after the user's own ``import joblib`` runs. :func:`register` does the same
explicitly. The backend itself lives in :mod:`cloudloop.joblib_backend`.

Backend parameters (``parallel_config(backend="cloudloop", ...)``): ``profile``,
``url`` (a backend URL; ``backend`` is joblib's own parameter), ``workers``
and any job or worker option of :class:`cloudloop.Executor` (``retries``,
``timeout``, ``memory``, ``lease``, ...).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

NAME = "cloudloop"
log = logging.getLogger("cloudloop")


def _factory(**params: Any):
    from .joblib_backend import CloudloopBackend

    return CloudloopBackend(**params)


def register(name: str = NAME, make_default: bool = False) -> None:
    """Register the cloudloop backend with joblib under ``name``.

    Raises:
        ImportError: joblib is not installed (``pip install joblib``).
    """
    try:
        from joblib.parallel import register_parallel_backend
    except ImportError as e:
        raise ImportError(
            "cloudloop.joblib.register() needs joblib: pip install 'joblib>=1.3'"
        ) from e
    register_parallel_backend(name, _factory, make_default=make_default)


class _RegisterOnImport:
    """A meta path finder (a plain class: importlib.abc costs an import) for ``joblib``,
    once; it registers the backend right after joblib's module has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "joblib":
            return None
        _remove_hook()
        import importlib.util

        spec = importlib.util.find_spec("joblib")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                register()
            except Exception as e:  # never break the user's import of joblib
                log.warning("could not register the cloudloop joblib backend: %s", e)

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterOnImport)]


def install() -> None:
    """Register now if joblib is imported, else as soon as it is (cheap, idempotent)."""
    if "joblib" in sys.modules:
        try:
            register()
        except Exception as e:
            log.warning("could not register the cloudloop joblib backend: %s", e)
        return
    if not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


__all__ = ["install", "register"]
