"""Peak resident memory of the current process, for workers in any venv (standard library only)."""

from __future__ import annotations

from pathlib import Path


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (VmHWM; ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
