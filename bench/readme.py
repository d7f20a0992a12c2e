"""The README's benchmark tables, copied from results files so that none can go stale.

In README.md a block ``<!-- bench CLASS/PART -->`` … ``<!-- /bench -->`` holds the table of PART from
``bench/results/CLASS/results.json``, with the run that measured it. ``python -m bench.readme`` (``make
readme-figures``) rewrites every block; ``--check`` (and ``tests/test_tooling.py``) fails when a block differs
from its results file, or when the Benchmarks section's prose outside the blocks quotes a measured figure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .runs import ROOT

README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
BLOCK = re.compile(r"(<!-- bench (?P<cls>[\w-]+)/(?P<part>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench -->)", re.DOTALL)
# A measured figure in prose: a decimal number (not a dotted version such as 4.8.5), or a ratio such as 2×.
FIGURE = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])|\d×")


def table(cls: str, part: str, results: Path = RESULTS) -> str:
    """The stamped table of one part, as its results file holds it."""
    path = results / cls / "results.json"
    if not path.is_file():
        raise SystemExit(f"README names {cls}/{part}, but {path} does not exist (python -m bench on a {cls} machine)")
    parts = json.loads(path.read_text()).get("parts", {})
    if part not in parts:
        raise SystemExit(f"README names {cls}/{part}, but {path} has no part {part!r} (it has {sorted(parts)})")
    return parts[part]["table"]


def render(text: str, results: Path = RESULTS) -> str:
    """The README with every bench block refilled from its results file."""
    return BLOCK.sub(lambda m: m.group(1) + "\n" + table(m["cls"], m["part"], results) + "\n" + m.group(5), text)


def prose_figures(text: str) -> list[str]:
    """Lines of the Benchmarks section, outside the generated blocks, that quote a measured figure."""
    section = text.split("\n## Benchmarks\n", 1)[-1].split("\n## ", 1)[0]
    prose = BLOCK.sub("", section)
    return [line for line in prose.splitlines() if FIGURE.search(line)]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme")
    p.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the results files")
    args = p.parse_args()
    text = README.read_text()
    fresh = render(text)
    problems = [f"a figure in the Benchmarks prose, not from a results file: {line}" for line in prose_figures(fresh)]
    if args.check:
        if fresh != text:
            problems.append("README.md's bench tables differ from bench/results (run: make readme-figures)")
    else:
        README.write_text(fresh)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
