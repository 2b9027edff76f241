"""Full calibration suite and the planning table: prints both and writes them into
docs/statistics.md.

    .venv/bin/python benchmarks/calibration.py [--scale 1.0] [--no-write]

Seeds are fixed, so the table is reproducible; `--scale` multiplies the replication counts.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import date
from pathlib import Path

from ab_pipeline.devtools.calibration import markdown_table, plan_table, run_all

DOC = Path(__file__).resolve().parent.parent / "docs" / "statistics.md"
BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"
PLANS_BEGIN, PLANS_END = "<!-- plans:begin -->", "<!-- plans:end -->"


def replace_block(text: str, begin: str, end: str, block: str) -> str:
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    wrapped = f"{begin}\n{block}\n{end}"
    return pattern.sub(lambda _: wrapped, text) if pattern.search(text) else f"{text}\n{wrapped}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    table = markdown_table(run_all(args.scale))
    elapsed = time.perf_counter() - started
    block = (
        f"{table}\n\nMeasured on {date.today().isoformat()} by "
        f"`.venv/bin/python benchmarks/calibration.py` (scale {args.scale:g}, {elapsed:.0f} s on "
        "one core)."
    )
    plans = plan_table()
    print(table, f"\n{elapsed:.1f} s\n", plans, sep="\n")
    if not args.no_write:
        text = replace_block(DOC.read_text(), BEGIN, END, block)
        DOC.write_text(replace_block(text, PLANS_BEGIN, PLANS_END, plans))


if __name__ == "__main__":
    main()
