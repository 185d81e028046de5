"""``cloudloop rm``, ``gc`` and ``outputs``: a store's jobs, removed or fetched."""

from __future__ import annotations

from typing import Any


def add_commands(sub: Any, common: Any) -> None:
    """Add this module's subcommands to the CLI's parser."""
