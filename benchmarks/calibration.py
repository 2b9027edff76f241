"""Full calibration suite: prints the table and writes it into docs/statistics.md.

    .venv/bin/python benchmarks/calibration.py [--scale 1.0] [--no-write]

Seeds are fixed, so the table is reproducible; `--scale` multiplies the replication counts.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from ab_pipeline.calibration import markdown_table, run_all

DOC = Path(__file__).resolve().parent.parent / "docs" / "statistics.md"
BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    table = markdown_table(run_all(args.scale))
    elapsed = time.perf_counter() - started
    block = (
        f"{BEGIN}\n{table}\n\nMeasured by `.venv/bin/python benchmarks/calibration.py` "
        f"(scale {args.scale:g}, {elapsed:.0f} s).\n{END}"
    )
    print(table)
    print(f"\n{elapsed:.1f} s")
    if not args.no_write:
        text = DOC.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        DOC.write_text(
            pattern.sub(lambda _: block, text)
            if pattern.search(text)
            else text + "\n" + block + "\n"
        )


if __name__ == "__main__":
    main()
