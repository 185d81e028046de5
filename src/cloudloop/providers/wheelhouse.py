"""Wheels of this very cloudloop and its dependencies, for machines without an index.

Workers must run the client's exact cloudloop. A machine that can reach a
package index installs ``cloudloop==VERSION``; one that cannot (a lab behind a
firewall, an air-gapped cluster, a test network) gets a directory of wheels
built here and copied over, then installs with ``pip install --no-index
--find-links DIR``.

A cloudloop installed from a source tree (``pip install -e .`` or ``pip
install .``) is built from that tree, so a development version ships as it is
on the client. Wheelhouses are cached under ``~/.cache/cloudloop/wheelhouse``
by version, extras, requirements and (for a source tree) a digest of the
source, so repeated ``up`` calls cost nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import __version__
from ..errors import ConfigError


def source_tree() -> Path | None:
    """The project directory cloudloop was installed from, if it was a local tree."""
    try:
        text = metadata.distribution("cloudloop").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        text = None
    if text:
        info = json.loads(text)
        url = info.get("url", "")
        if url.startswith("file://") and "dir_info" in info:
            path = Path(unquote(urlsplit(url).path))
            if (path / "pyproject.toml").exists():
                return path
    here = Path(__file__).resolve().parents[3]  # src/cloudloop/providers -> project
    return here if (here / "pyproject.toml").exists() and (here / "src").is_dir() else None


def digest(tree: Path | None, extras: tuple[str, ...], requirements: tuple[str, ...]) -> str:
    h = hashlib.sha256(f"{__version__}|{sys.version_info[:2]}|{extras}|{requirements}".encode())
    if tree is not None:
        for path in sorted((tree / "src").rglob("*.py")) + [tree / "pyproject.toml"]:
            h.update(str(path.relative_to(tree)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloudloop" / "wheelhouse"


def build(
    extras: tuple[str, ...] = (), requirements: tuple[str, ...] = (), dest: Path | None = None
) -> Path:
    """A directory of wheels: cloudloop (with ``extras``), its dependencies, ``requirements``.

    Raises:
        ConfigError: pip could not build or fetch a wheel (its output says which).
    """
    tree = source_tree()
    dest = dest or cache_root() / digest(tree, tuple(extras), tuple(requirements))
    done = dest / ".complete"
    if done.exists():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = str(tree) if tree else f"cloudloop=={__version__}"
    if extras:
        spec += f"[{','.join(extras)}]"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--disable-pip-version-check",
        "--wheel-dir",
        str(tmp),
        spec,
        *requirements,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise ConfigError(
            f"could not build the wheels workers install from ({' '.join(cmd[3:])}):\n{tail}"
        )
    (tmp / ".complete").write_text(spec + "\n")
    if dest.exists():
        shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def wheels(path: Path) -> list[Path]:
    return sorted(path.glob("*.whl"))
