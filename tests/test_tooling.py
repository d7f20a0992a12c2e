"""The checks on the project's own figures: mutation baselines, bench run records, README figures from results."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bench import readme, runs
from tests.conftest import ROOT


def _mutation():
    spec = importlib.util.spec_from_file_location("mutation", ROOT / "scripts" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pareto_front_keeps_the_rows_nothing_beats_on_speed_and_recall():
    from bench.report import pareto

    rows = [{"system": name, "sentences_per_s": speed, "recall_at_10": recall}
            for name, speed, recall in [("a", 10, 1.0), ("b", 20, 0.9), ("c", 15, 0.85), ("d", 20, 0.8), ("e", 5, 1.0)]]  # fmt: skip
    assert [row["system"] for row in pareto(rows)] == ["b", "a"]  # c is beaten by b, d ties b's speed, e a's recall


def test_mutation_fails_above_its_baseline_and_every_module_has_one():
    mutation = _mutation()
    assert mutation.verdict_of(3, 0, 3) == "ok"
    assert mutation.verdict_of(4, 0, 3) == "1 more survivors than the baseline"
    assert mutation.verdict_of(0, 2, 0) == "2 mutants not checked"
    assert mutation.verdict_of(0, 0, None).startswith("no baseline")
    recorded = json.loads(mutation.BASELINE.read_text())
    assert sorted(recorded) == sorted(mutation.MODULES)


def _run(cpu: str, cls: str, run_id: str) -> dict:
    return {"id": run_id, "date": "2026-12-02T10:00:00Z", "commit": "abc", "quick": False,
            "machine": {"cpu": cpu, "class": cls, "threads": 2}}  # fmt: skip


def test_a_part_rerun_keeps_only_parts_measured_on_the_same_machine():
    here, there = _run("Xeon", "amx", "r1"), _run("EPYC", "avx512-vnni", "r0")
    previous = {"runs": {"r0": there, "r1": here},
                "parts": {"encoder": {"run": "r0", "table": "### e\n"}, "decoder": {"run": "r1", "table": "### d\n"},
                          "serve": {"run": "r1", "table": "### s\n"}}}  # fmt: skip
    kept, dropped = runs.keep(previous, _run("Xeon", "amx", "r2"), {"serve"})
    assert sorted(kept) == ["decoder"]  # serve is re-run; encoder came from another machine
    assert dropped == ["encoder: measured on EPYC (avx512-vnni), not this machine"]
    assert runs.keep({"machine": {}, "tables": {}}, here, {"serve"}) == (
        {}, ["the previous results file records no runs; none of its parts is kept"])


def test_every_table_names_its_run_and_the_file_lists_which_run_made_which_part():
    run = _run("Xeon", "amx", "r2")
    table = runs.stamp("### Title\n\n| a |\n|---|\n| 1 |\n", run)
    assert table.splitlines()[:3] == ["### Title", "", "Run `r2`: 2026-12-02, commit `abc`, Xeon (amx), 2 threads."]
    text = runs.document({"serve": {"run": "r2", "table": table}, "encoder": {"run": "r1", "table": "### E\n"}},
                         {"r1": _run("Xeon", "amx", "r1"), "r2": run}, ("encoder", "serve"))  # fmt: skip
    assert "| `r1` | 2026-12-02T10:00:00Z | `abc` | Xeon | amx | encoder |" in text
    assert "| `r2` | 2026-12-02T10:00:00Z | `abc` | Xeon | amx | serve |" in text
    assert text.index("### E") < text.index("### Title")


def test_readme_blocks_are_refilled_from_results_and_prose_figures_are_caught(tmp_path):
    (tmp_path / "amx").mkdir()
    (tmp_path / "amx" / "results.json").write_text(json.dumps({"parts": {"serve": {"table": "### S\n\n| 2.5 |\n"}}}))
    text = "# x\n\n## Benchmarks\n\nIt is 1.5× faster.\n\n<!-- bench amx/serve -->\nold\n<!-- /bench -->\n\n## Next\n"
    fresh = readme.render(text, tmp_path)
    assert "<!-- bench amx/serve -->\n\n### S\n\n| 2.5 |\n\n<!-- /bench -->" in fresh and "old" not in fresh
    assert readme.prose_figures(fresh) == ["It is 1.5× faster."]  # the table's 2.5 is not prose
    with pytest.raises(SystemExit, match="has no part 'encoder'"):
        readme.render(text.replace("amx/serve", "amx/encoder"), tmp_path)


def test_the_readme_benchmark_figures_are_the_results_files():
    text = readme.README.read_text()
    assert readme.BLOCK.search(text), "the README's Benchmarks section has no generated tables"
    assert readme.render(text) == text, "README.md's bench tables differ from bench/results: make readme-figures"
    assert readme.prose_figures(text) == []
