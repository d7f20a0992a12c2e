"""``make mutation``: mutmut over the modules whose mistakes are silent, each against the tests that guard it.

Each module runs in a scratch copy of the tracked tree (``.cache/mutation/<module>``) whose ``setup.cfg`` names it
as the one file to mutate and its tests as the ones to run, so the runs are independent and the repository's own
configuration stays untouched. Prints killed / survived per module and every survivor; ``--only NAME`` runs one.

Exits 1 when a module has more survivors than its recorded baseline (``scripts/mutation_baseline.json``), when a
module has no baseline, or when mutmut leaves mutants unchecked; ``--record`` writes this run's counts as the
baseline. The baseline is a ratchet, not a verdict that every survivor is harmless: a change that lets more mutants
live fails, and lowering it (a survivor killed by a new test) is recorded the same way.
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
    "onnxforge/runtime/beam_search.py": ["tests/test_beam_search.py"],
    "onnxforge/runtime/constraints.py": ["tests/test_beam_search.py"],
    "onnxforge/quantization/ggml_blocks.py": ["tests/test_gguf_blocks.py", "-k", "each_format or unknown_format"],
    "onnxforge/quantization/saturation.py": ["tests/test_saturation.py", "-k",
                                             "rule_matches or audit_names_a_saturating or audit_covers or cpu_class"],
    "onnxforge/quantization/tables.py": ["tests/test_quantize.py", "-k", "tables or table_gathered or 4_bit_rows"],
}  # fmt: skip
# Not run: every test that guards them exports or trains a model in its fixtures, and mutmut starts a pytest session
# per mutant, so each mutant costs 30-60 s (hours per module). Their tests are checked by make cache-faults instead.
LEFT_OUT = {
    "onnxforge/runtime/text2text.py": "fixtures export three seq2seq models per session",
    "onnxforge/runtime/continuous.py": "fixtures train and export tiny decoders per session",
    "onnxforge/runtime/kv_pool.py": "guarded by the engine tests, whose fixtures train and export decoders",
    "onnxforge/quantization/gguf_blocks.py": "fixtures train, write as GGUF and export decoders per session",
}
BASELINE = Path(__file__).with_name("mutation_baseline.json")
# mutmut's exit-code meaning (mutmut.__main__.status_by_exit_code), the ones that occur here
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", None: "not checked"}
# mutants no test reaches count as survivors; timeouts (a mutant that loops) as killed, as mutmut itself counts them
KILLED = ("killed", "timeout")


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
    parser.add_argument("--record", action="store_true", help="write this run's survivors as the baseline")
    args = parser.parse_args()
    if args.tests and not args.only:
        parser.error("--tests needs --only")
    totals = {m: run(m, args.tests or tests) for m, tests in MODULES.items() if args.only in (None, Path(m).stem)}
    baseline = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {}
    print("\n| module | mutants | killed | survived | baseline | verdict |\n|---|---:|---:|---:|---:|---|")
    failed = False
    for module, counts in totals.items():
        total, killed = sum(counts.values()), sum(counts[s] for s in KILLED)
        survived, unchecked = counts["survived"] + counts["no tests"], counts["not checked"]
        allowed = baseline.get(module)
        verdict = verdict_of(survived, unchecked, allowed)
        failed |= verdict != "ok" and not args.record
        shown = "" if allowed is None else allowed
        print(f"| {module} | {total} | {killed} | {survived} | {shown} | {verdict} |")
        if args.record:
            baseline[module] = survived
    for module, why in LEFT_OUT.items():
        print(f"| {module} | not run: {why} | | | | |")
    if args.record:
        BASELINE.write_text(json.dumps(dict(sorted(baseline.items())), indent=1) + "\n")
    return 1 if failed else 0


def verdict_of(survived: int, unchecked: int, allowed: int | None) -> str:
    """ok, or what fails the run: no baseline, mutants left unchecked, or more survivors than the baseline."""
    if allowed is None:
        return "no baseline (review the survivors, then --record)"
    if unchecked:
        return f"{unchecked} mutants not checked"
    return "ok" if survived <= allowed else f"{survived - allowed} more survivors than the baseline"


if __name__ == "__main__":
    raise SystemExit(main())
