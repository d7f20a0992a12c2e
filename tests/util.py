"""Small helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path


def siblings(final: Path) -> list[str]:
    """What lies beside an artifact directory, less its build lock file (kept on purpose: deleting lock files races)."""
    return sorted(p.name for p in final.parent.iterdir() if not p.name.endswith(".lock"))
