"""The Cookie Cats table (examples/cookie-cats/): one row per player, generated offline.

The published Cookie Cats A/B test (a mobile puzzle game moved its first gate from level 30 to
level 40) is one table of 90,189 players: `userid`, `version` (`gate_30` / `gate_40`),
`sum_gamerounds` (rounds played in the first 14 days), `retention_1` and `retention_7` (the
player came back 1 and 7 days after installing). This module writes a table of that shape,
deterministically (fixed seed), with the published per-version counts exactly:

| version | players | retained day 1 | retained day 7 |
|---|---|---|---|
| gate_30 | 44,700 | 20,034 | 8,502 |
| gate_40 | 45,489 | 20,119 | 8,279 |

Everything else is synthetic: which players are retained, how day-1 and day-7 retention overlap
(three quarters of the day-7 players also came back on day 1), the game rounds (overdispersed
counts, higher for retained players) and the user ids.

    python -m ab_pipeline.devtools.cookie_cats --warehouse duckdb:///var/cookie-cats.duckdb
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ab_pipeline.warehouse import Warehouse, quote_ident

if TYPE_CHECKING:
    import pandas as pd

TABLE = "cookie_cats"
SEED = 20_190_905
COLUMNS = ("userid", "version", "sum_gamerounds", "retention_1", "retention_7")
DDL = (
    "CREATE TABLE {table} (userid INTEGER NOT NULL, version TEXT NOT NULL, "
    "sum_gamerounds INTEGER NOT NULL, retention_1 BOOLEAN NOT NULL, retention_7 BOOLEAN NOT NULL)"
)
# Share of the day-7 players who also came back on day 1 (synthetic: the published counts are
# per version only).
BOTH_DAYS = 0.75
# Mean game rounds by retention (neither, day 1 only, day 7) and the negative binomial's shape.
ROUNDS_MEAN = (12.0, 40.0, 130.0)
ROUNDS_SHAPE = 0.8


@dataclass(frozen=True)
class VersionCounts:
    players: int
    retained_1: int
    retained_7: int


PUBLISHED = {
    "gate_30": VersionCounts(44_700, 20_034, 8_502),
    "gate_40": VersionCounts(45_489, 20_119, 8_279),
}


def cookie_cats_frame(seed: int = SEED) -> pd.DataFrame:
    """The players, one row each, ordered by `userid`; the same frame for the same seed."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    total = sum(c.players for c in PUBLISHED.values())
    # Increasing ids with random gaps, like an install counter sampled by the test.
    userid = 116 + np.cumsum(rng.integers(1, 200, size=total))
    slots = rng.permutation(total)
    parts = []
    start = 0
    for version, counts in PUBLISHED.items():
        mine = slots[start : start + counts.players]
        start += counts.players
        both = round(BOTH_DAYS * counts.retained_7)
        # The version's players in random order: both days, day 1 only, day 7 only, neither.
        kind = np.repeat(
            [0, 1, 2, 3],
            [
                both,
                counts.retained_1 - both,
                counts.retained_7 - both,
                counts.players - counts.retained_1 - counts.retained_7 + both,
            ],
        )
        kind = rng.permutation(kind)
        retention_1 = kind <= 1
        retention_7 = (kind == 0) | (kind == 2)
        mean = np.where(retention_7, ROUNDS_MEAN[2], np.where(retention_1, ROUNDS_MEAN[1], 0.0))
        mean = np.where(mean == 0.0, ROUNDS_MEAN[0], mean)
        rounds = rng.negative_binomial(ROUNDS_SHAPE, ROUNDS_SHAPE / (ROUNDS_SHAPE + mean))
        parts.append(
            pd.DataFrame(
                {
                    "userid": userid[mine],
                    "version": version,
                    "sum_gamerounds": rounds.astype("int64"),
                    "retention_1": retention_1,
                    "retention_7": retention_7,
                }
            )
        )
    frame = pd.concat(parts).sort_values("userid", ignore_index=True)
    return frame[list(COLUMNS)]


def load_cookie_cats(
    warehouse_url: str, schema: str | None = None, frame: pd.DataFrame | None = None
) -> int:
    """(Re)create the `cookie_cats` table (in `schema` when given) and load the players;
    returns the number of rows. DuckDB reads the frame directly, PostgreSQL by COPY."""
    frame = cookie_cats_frame() if frame is None else frame
    warehouse = Warehouse(warehouse_url)
    table = quote_ident(f"{schema}.{TABLE}" if schema else TABLE)
    with warehouse.connect() as connection:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        connection.exec_driver_sql(DDL.format(table=table))
        raw: Any = connection.connection.driver_connection
        if warehouse.dialect == "duckdb":
            raw.register("cookie_cats_rows", frame)
            try:
                raw.execute(f"INSERT INTO {table} SELECT * FROM cookie_cats_rows")
            finally:
                raw.unregister("cookie_cats_rows")
        elif warehouse.dialect == "postgresql":
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False)
            buffer.seek(0)
            with raw.cursor() as cursor:
                cursor.copy_expert(
                    f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)", buffer
                )
        else:
            raise ValueError(f"loading Cookie Cats into {warehouse.dialect} is not implemented")
        if warehouse.dialect == "postgresql":
            connection.exec_driver_sql(f"ANALYZE {table}")
    return len(frame)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ab_pipeline.devtools.cookie_cats",
        description="create the cookie_cats table (one row per player) in a warehouse",
    )
    parser.add_argument("--warehouse", required=True, help="duckdb:///file or postgresql://...")
    parser.add_argument("--schema", help="schema of the table (PostgreSQL), default: none")
    args = parser.parse_args(argv)
    rows = load_cookie_cats(args.warehouse, args.schema)
    print(f"{TABLE}: {rows:,} players")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
