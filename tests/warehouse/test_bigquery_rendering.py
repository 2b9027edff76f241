"""Every statement a real readout runs (on DuckDB) is rendered for BigQuery, parsed back by
sqlglot's BigQuery dialect and compared with a golden file reviewed by hand
(`tests/warehouse/golden/bigquery/<experiment>.sql`). tests/test_bigquery_parity.py runs
readouts against a BigQuery emulator; this test also covers the statements the emulator
cannot run (docs/engines.md).

After a deliberate change to the generated SQL, rewrite the golden files with
`AB_PIPELINE_UPDATE_GOLDEN=1 pytest tests/warehouse/test_bigquery_rendering.py` and review the
diff.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import pytest
import sqlglot
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.readout.extract import ExtractPlan
from ab_pipeline.warehouse import dispose_all
from ab_pipeline.warehouse.dialects import dialect_named, recording
from tests.conftest import REPO_ROOT

GOLDEN = Path(__file__).parent / "golden" / "bigquery"
SEPARATOR = ";\n\n"
TIMESTAMP = re.compile(r"'(\d{4}-\d\d-\d\d) \d\d:\d\d:\d\d'")
# Three metric mixes: proportions with an `unless` and a quantile; catalog references with a
# mean and a ratio; a count mean.
EXPERIMENTS = ("refund-query-rewrite", "delivery-estimate", "onboarding-checklist")

pytestmark = pytest.mark.slow


def rendered_readout(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The canonical statements of one readout, rendered for BigQuery. The readout runs on
    DuckDB with the extract planned as for BigQuery (no `rowid`, no memory partitions) and
    the data-quality checks run as there (no witness queries), so the statements are those
    a BigQuery readout issues."""
    bigquery = dialect_named("bigquery")
    plan = ExtractPlan(
        histograms_in_pass=bigquery.histograms_in_pass,
        unit_key=bigquery.unit_key,
        dialect=bigquery.name,
    )
    monkeypatch.setattr(ExtractPlan, "for_warehouse", classmethod(lambda *_: plan))
    # BigQuery bills a sample's full columns, so it runs no witness (`samples_cheaply`).
    duckdb = type(dialect_named("duckdb"))
    monkeypatch.setattr(duckdb, "samples_cheaply", bigquery.samples_cheaply)
    config_path = REPO_ROOT / "dags" / "experiments" / f"{key}.yaml"
    config = load_config(config_path)
    scenario = yaml.safe_load((REPO_ROOT / "simulations" / f"{key}.yaml").read_text())
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    simulate(config, parse_scenario(scenario), url)
    try:
        with recording() as statements:
            run_pipeline(RunContext(config_path, config.end, url, tmp_path / "out"), deliver=False)
    finally:
        dispose_all()
    return [_without_now(bigquery.render(s), config.end) for s in statements]


def _without_now(statement: str, end: date) -> str:
    """The data-quality gate's "no event from the future" cutoff is the time of the run: a
    timestamp after the experiment's end reads `<now>` in the golden file."""

    def mask(match: re.Match[str]) -> str:
        return "'<now>'" if date.fromisoformat(match[1]) > end else match[0]

    return TIMESTAMP.sub(mask, statement)


@pytest.mark.parametrize("key", EXPERIMENTS)
def test_every_statement_of_a_readout_renders_to_bigquery_sql_that_parses_back(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = rendered_readout(key, tmp_path, monkeypatch)
    assert len(rendered) > 40  # extract, every gate's queries, analysis, results tables
    for statement in rendered:
        parsed = sqlglot.parse(statement, read="bigquery")
        assert len(parsed) == 1 and parsed[0] is not None, statement
    golden = GOLDEN / f"{key}.sql"
    text = SEPARATOR.join(rendered) + "\n"
    if os.environ.get("AB_PIPELINE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"BigQuery rendering of {key} changed: see {golden}"


def test_bigquery_rendering_uses_its_own_parameters_quoting_functions_and_keys() -> None:
    bigquery = dialect_named("bigquery")
    sql = bigquery.render(
        'WITH narrow AS MATERIALIZED (SELECT unit_id FROM "Events" WHERE event_name = :event) '
        "SELECT COUNT(*) AS n, CAST(x.properties AS JSON)->>:field AS v FROM narrow x"
    )
    assert sql == (
        "WITH narrow AS (SELECT unit_id FROM `Events` WHERE event_name = @event) "
        """SELECT COUNT(*) AS n, JSON_VALUE(x.properties, CONCAT('$."', @field, '"')) AS v """
        "FROM narrow AS x"
    )
    ddl = bigquery.render('CREATE TABLE "t" (a TEXT NOT NULL, PRIMARY KEY (a))')
    assert ddl == "CREATE TABLE `t` (a STRING NOT NULL, PRIMARY KEY (a) NOT ENFORCED)"
