"""Which run produced which table: a results file holds parts, each from one recorded run on one machine.

A run is one ``python -m bench`` invocation: an id, its date, the commit it measured and the machine probed at its
start. ``make bench`` runs every part in one run; ``--part`` re-runs one part and keeps the others only when they
were measured on the same CPU model and class (another machine's figures would sit beside these under one heading).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commit() -> str:
    """The measured commit; ``+dirty`` when the work tree has uncommitted changes to tracked files."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def new_run(machine: dict, quick: bool) -> dict:
    """A record of this invocation: id, date (UTC), commit, machine, quick or not."""
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"id": f"{date[:10]}-{uuid.uuid4().hex[:6]}", "date": date, "commit": _commit(), "quick": quick,
            "machine": machine}  # fmt: skip


def same_machine(a: dict, b: dict) -> bool:
    """Figures can share a results file only when measured on the same CPU model and integer-kernel class."""
    return (a.get("cpu"), a.get("class")) == (b.get("cpu"), b.get("class"))


def keep(previous: dict | None, run: dict, rerun: set[str]) -> tuple[dict, list[str]]:
    """The parts of ``previous`` a run of ``rerun`` keeps (same machine only), and why the others were dropped."""
    if not previous:
        return {}, []
    if "parts" not in previous:
        return {}, ["the previous results file records no runs; none of its parts is kept"]
    kept, dropped = {}, []
    for name, part in previous["parts"].items():
        if name in rerun:
            continue
        origin = previous["runs"][part["run"]]
        if same_machine(origin["machine"], run["machine"]):
            kept[name] = part
        else:
            dropped.append(f"{name}: measured on {origin['machine']['cpu']} ({origin['machine']['class']}), "
                           f"not this machine")  # fmt: skip
    return kept, dropped


def stamp(table: str, run: dict) -> str:
    """The part's markdown with its run named under the heading."""
    heading, _, rest = table.partition("\n")
    machine = run["machine"]
    line = (f"Run `{run['id']}`: {run['date'][:10]}, commit `{run['commit']}`, {machine['cpu']} "
            f"({machine['class']}), {machine['threads']} threads{' (quick)' if run['quick'] else ''}.")  # fmt: skip
    return f"{heading}\n\n{line}\n{rest}"


def document(parts: dict, runs: dict, order: tuple[str, ...]) -> str:
    """results.md: which run made which part, then every part's table in ``order``."""
    lines = ["# Bench results", "", "| run | date | commit | CPU | class | parts |", "|---|---|---|---|---|---|"]
    for run_id, run in runs.items():
        names = ", ".join(name for name in order if name in parts and parts[name]["run"] == run_id)
        lines.append(f"| `{run_id}` | {run['date']} | `{run['commit']}` | {run['machine']['cpu']} | "
                     f"{run['machine']['class']} | {names} |")  # fmt: skip
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(parts[name]["table"] for name in order if name in parts)
