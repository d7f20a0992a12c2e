"""``make mutation``: mutmut over the modules whose mistakes are silent, each against the tests that guard it.

Each module runs in a scratch copy of the tracked tree (``.cache/mutation/<module>``) whose ``setup.cfg`` names it
as the one file to mutate and its tests as the ones to run, so the runs are independent and the repository's own
configuration stays untouched. Prints killed / survived per module and every survivor; ``--only NAME`` runs one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".cache" / "mutation"
DECODE_TESTS = ("decode_step and auto and (llama or gpt2) or in_place or max_new_tokens or penalty_counts "
                "or stops_at_the_context or not_a_decoder")
# module → the tests that guard it (the fast ones: every mutant reruns the tests that reach the mutated function)
MODULES: dict[str, list[str]] = {
    "onnxforge/runtime/decoder.py": ["tests/test_generate.py", "-k", DECODE_TESTS],
    "onnxforge/runtime/sampling.py": ["tests/test_sampling.py"],
    "onnxforge/quantization/gate.py": ["tests/test_gate.py"],
    "onnxforge/quantization/per_token.py": ["tests/test_per_token.py", "-k", "not passes_a_gate"],
    "onnxforge/artifact.py": ["tests/test_artifact.py"],
}  # fmt: skip
# mutmut's exit-code meaning (mutmut.__main__.status_by_exit_code), the ones that occur here
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", None: "not checked"}


def _scratch(module: str, tests: list[str]) -> Path:
    """A copy of the tracked files (and untracked, unignored ones) with a setup.cfg for ``module`` alone."""
    where = SCRATCH / Path(module).stem
    shutil.rmtree(where, ignore_errors=True)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()  # fmt: skip
    for name in listed:
        if (ROOT / name).is_file():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, where / name)
    others = sorted(str(p.relative_to(where)) for p in (where / "onnxforge").rglob("*.py") if str(p.relative_to(where)) != module)
    lines = ["[mutmut]", "source_paths=onnxforge/", "do_not_mutate=", *(f"    {p}" for p in others),
             "also_copy=", "    tests/", "    artifacts.toml", "    pyproject.toml",
             "pytest_add_cli_args_test_selection=", *(f"    {t}" for t in tests)]  # fmt: skip
    (where / "setup.cfg").write_text("\n".join(lines) + "\n")  # read as pyproject.toml has no [tool.mutmut]
    return where


def run(module: str, tests: list[str]) -> Counter:
    """Mutate ``module``, run ``tests`` against every mutant; returns the count per status."""
    where = _scratch(module, tests)
    # one OpenMP thread: mutmut forks a child per mutant after the tests ran torch, and a forked child blocks on
    # the parent's OpenMP pool (the decoder tests hung at their first mutant)
    subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=where, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    meta = json.loads((where / "mutants" / f"{module}.meta").read_text())
    statuses = {name: STATUS.get(code, f"exit {code}") for name, code in meta["exit_code_by_key"].items()}
    for name, status in sorted(statuses.items()):
        if status != "killed":
            print(f"  {status:<10} {name}")
    return Counter(statuses.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=[Path(m).stem for m in MODULES], help="one module")
    parser.add_argument("--tests", nargs="+", help="with --only: these tests instead of the module's own")
    args = parser.parse_args()
    if args.tests and not args.only:
        parser.error("--tests needs --only")
    totals = {m: run(m, args.tests or tests) for m, tests in MODULES.items() if args.only in (None, Path(m).stem)}
    print(f"\n{'module':<40} {'mutants':>8} {'killed':>8} {'survived':>9} {'other':>6}")
    for module, counts in totals.items():
        total, killed, survived = sum(counts.values()), counts["killed"], counts["survived"]
        print(f"{module:<40} {total:>8} {killed:>8} {survived:>9} {total - killed - survived:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
