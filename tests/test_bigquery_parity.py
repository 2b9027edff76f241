"""The sample experiments read out on BigQuery (a bqemulator server) give what DuckDB gives.

The same seeded data goes into an embedded DuckDB file and, through the simulator's BigQuery
sink (NDJSON load jobs), into a local BigQuery emulator that google-cloud-bigquery's client
talks to over HTTP (tests/bigquery_server.py). Every extract runs in a BigQuery session of its
own (temporary tables), the data-quality suites run through GX's SQL datasource over
BigQuery's DB-API, and the contract check reads the dataset's INFORMATION_SCHEMA.COLUMNS.
Decisions, units per arm, estimates and every gate outcome must agree (floats to 1e-9
relative).

Two things the emulator (bqemulator 1.4.0) cannot do shape this test; docs/engines.md says
why, and the last tests here check that they still hold:

- It qualifies every unqualified table name with the job's default dataset, a temporary
  table's too, and then cannot create it. The BigQuery URL here names no default dataset, so
  the configs name their tables `ab.exposures` / `ab.events` (the DuckDB side runs the same
  configs, in a schema `ab`).
- It cannot GROUP BY an expression that holds a bound parameter (`GROUP BY 1` over
  `CONCAT(x.arm, @p)` of a stored table: "column must appear in the GROUP BY clause"), which
  refund-query-rewrite's `receipt` check and search-ranking-v2's SRM diagnosis (it failed
  SRM by design) do (`JSON_VALUE(doc, CONCAT('$."', @field_0, '"'))`, grouped): those two
  samples are left out.
- It cannot parse `PRIMARY KEY (...) NOT ENFORCED`, the only primary key BigQuery takes, so
  the results tables cannot be created: each readout runs every stage up to the results
  (extract, gates, analysis, `assemble_results`), not the results store and brief.

delivery-estimate reads its sources through `{sql: ...}` queries (their column types from the
schema BigQuery returns with a LIMIT 0 result); the other two read the tables (their types
from INFORMATION_SCHEMA.COLUMNS).

What this does not prove: the emulator runs the SQL on DuckDB after translating it, and does
not scope temporary tables to a session, so BigQuery's own semantics are not exercised.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import Source, load_config
from ab_pipeline.devtools.simulate import main_simulate
from ab_pipeline.orchestration.pipeline import RunContext, assemble_results, run_readout_stages
from ab_pipeline.warehouse import dispose_all
from ab_pipeline.warehouse.bigquery_client import bigquery_client
from tests.bigquery_server import DATASET, serving_bigquery
from tests.test_postgres_parity import VARIANT, comparable, same, with_ratio_and_cuped

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# Not refund-query-rewrite nor search-ranking-v2: the first's `receipt` check, the second's SRM
# diagnosis group by an expression holding a bound parameter, which the emulator cannot run
# (see the module docstring). onboarding-checklist also runs with a ratio, a CUPED and a `sql:`
# metric.
EXPERIMENTS = ("delivery-estimate", "onboarding-checklist", VARIANT)


# delivery-estimate's sources as the team's own queries: SQL that DuckDB runs as written too.
SOURCE_QUERIES = {
    "exposures": (
        "SELECT x.experiment_key, x.unit_id, x.arm, x.exposed_at, x.is_internal, x.is_bot, "
        f"x.properties FROM {DATASET}.exposures AS x"
    ),
    "events": (
        "SELECT e.unit_id, e.event_name, e.occurred_at, e.value, e.experiment_key "
        f"FROM {DATASET}.events AS e"
    ),
}
QUERY_SOURCED = "delivery-estimate"

# Support tickets per unit: GoogleSQL that DuckDB runs as written too.
TICKETS_SQL = (
    f"SELECT unit_id, COUNT(*) AS value FROM {DATASET}.events "
    "WHERE event_name = 'support_ticket' GROUP BY unit_id"
)


def qualified_config(key: str, folder: Path, queries: bool = False) -> Path:
    """The sample config (or the ratio+CUPED variant) with its tables in the dataset `ab`,
    written to folder; with `queries`, its sources as SOURCE_QUERIES."""
    original = (
        with_ratio_and_cuped(folder / "variant")
        if key == VARIANT
        else REPO / "dags" / "experiments" / f"{key}.yaml"
    )
    data = yaml.safe_load(original.read_text())
    source = data.setdefault("source", {})
    source["exposures"] = f"{DATASET}.exposures"
    source["events"] = f"{DATASET}.events"
    if queries:  # a query has no schema: the run's units table goes to `work_schema`
        source.update({which: {"sql": sql} for which, sql in SOURCE_QUERIES.items()})
        source["work_schema"] = DATASET
    if key == VARIANT:  # and a `sql:` metric, read in the extract's BigQuery session
        data["metrics"]["tickets"] = {"type": "mean", "sql": TICKETS_SQL}
    path = folder / key / ("queries" if queries else "") / f"{original.stem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def readout(url: str, config: Path, out: Path) -> dict[str, Any]:
    """Every stage of `run_pipeline` up to the results (not the results store: see above)."""
    ctx = RunContext(config, load_config(config).end, url, out)
    run_readout_stages(ctx)
    return dict(json.loads(json.dumps(assemble_results(ctx), default=str)))


def record_job_inserts(url: str, into: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Keep (request, response) of every job the process's client for `url` inserts."""

    def keep(response: Any, *args: Any, **kwargs: Any) -> None:
        request = response.request
        path = request.url.split("?")[0]
        # Query jobs only: a load job's upload is a multipart POST to /upload/.../jobs.
        if request.method == "POST" and path.endswith("/jobs") and "/upload/" not in path:
            into.append((json.loads(request.body), response.json()))

    bigquery_client(url)._http.hooks["response"].append(keep)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("bigquery_parity")
    duck = f"duckdb:///{root / 'warehouse.duckdb'}"
    configs = {key: qualified_config(key, root) for key in EXPERIMENTS}
    with serving_bigquery(root / "emulator") as bigquery:
        runs: dict[str, Any] = {"duckdb": {}, "bigquery": {}, "requests": [], "url": bigquery}
        record_job_inserts(bigquery, runs["requests"])
        for key, config in configs.items():
            scenario = str(REPO / "simulations" / f"{config.stem}.yaml")
            for label, url in (("duckdb", duck), ("bigquery", bigquery)):
                simulated = [scenario, "--warehouse", url, "--config", str(config)]
                assert main_simulate([*simulated, "--schema", DATASET]) == 0
                read = qualified_config(key, root, queries=True) if key == QUERY_SOURCED else config
                runs[label][key] = readout(url, read, root / label / key)
        yield runs
        dispose_all()


def test_decisions_and_numbers_match_duckdb(both: dict[str, Any]) -> None:
    duck, bigquery = both["duckdb"], both["bigquery"]
    assert duck.keys() == bigquery.keys() == set(EXPERIMENTS)
    for key, expected in duck.items():
        got = bigquery[key]
        assert got["decision"] == expected["decision"], key
        assert got["decision_reason"] == expected["decision_reason"], key
        assert got["gates"]["srm"]["counts"] == expected["gates"]["srm"]["counts"], key
        assert same(comparable(expected), comparable(got)) == [], key


def test_every_gate_ran_and_the_primary_was_estimated_on_bigquery(both: dict[str, Any]) -> None:
    """Parity above would also hold if both sides skipped everything: they do not."""
    for key, results in both["bigquery"].items():
        gates = results["gates"]
        assert len(gates["data_quality"]["checks"]) >= 10, key
        assert sum(gates["srm"]["counts"].values()) > 1000, key
        assert results["decision"] != "RERUN", key
        [primary] = [m for m in results["metrics"].values() if m["role"] == "primary"]
        assert all(c["se"] > 0 for c in primary["comparisons"].values()), key
    variant = both["bigquery"][VARIANT]["metrics"]
    assert variant["tickets_per_session"]["comparisons"]["treatment"]["se"] > 0
    assert variant["sessions_7d"]["comparisons"]["treatment"]["cuped"]["theta"] != 0
    assert variant["tickets"]["comparisons"]["treatment"]["se"] > 0


def test_the_contract_check_reads_every_column_and_names_an_instant_timestamp(
    both: dict[str, Any], tmp_path: Path
) -> None:
    """BigQuery's DATETIME is the contract's timestamp (wall-clock UTC); its TIMESTAMP is an
    instant, refused as TIMESTAMP WITH TIME ZONE is elsewhere, from a table's
    INFORMATION_SCHEMA and from a source query's result schema alike."""
    from ab_pipeline.gates.data_quality import contract_problems
    from ab_pipeline.warehouse import Warehouse
    from ab_pipeline.warehouse.sources import source_columns

    url = both["url"]
    warehouse = Warehouse(url)
    config = load_config(qualified_config("onboarding-checklist", tmp_path))
    assert contract_problems(warehouse, config, config.end) == []
    listed = warehouse.query(
        warehouse.sql_dialect.column_types_sql(url, {"events": f"{DATASET}.events"}) or ""
    )
    assert {r["column_name"]: r["data_type"] for r in listed} == {
        "unit_id": "STRING",
        "event_name": "STRING",
        "occurred_at": "TIMESTAMP",
        "value": "DOUBLE",
        "experiment_key": "STRING",
    }
    instant = "SELECT e.* REPLACE (TIMESTAMP(e.occurred_at) AS occurred_at) FROM ab.events AS e"
    bigquery_client(url).query(f"CREATE OR REPLACE TABLE ab.events_instant AS {instant}").result()
    as_table, as_query = (
        config.model_copy(update={"source": Source.model_validate({**tables, "events": events})})
        for tables in [config.source.model_dump()]
        for events in (f"{DATASET}.events_instant", {"sql": instant})
    )
    assert source_columns(warehouse, as_query.source, "events")["occurred_at"] == (
        "TIMESTAMP WITH TIME ZONE"
    )
    for changed in (as_table, as_query):
        problems = contract_problems(warehouse, changed, config.end)
        assert problems == ["events.occurred_at is TIMESTAMP WITH TIME ZONE"]


def test_each_extract_ran_in_one_bigquery_session(both: dict[str, Any]) -> None:
    """Read from the requests the client sent (the emulator keeps no job's session): each
    extract's first statement creates a session, every later one names it, and
    `BQ.ABORT_SESSION` in it comes last; each extract has a session of its own."""
    extracts = [s for s in sessions(both["requests"]) if "ab_tmp_enrolled" in " ".join(s)]
    assert len(extracts) == len(EXPERIMENTS)
    for statements in extracts:
        # (With a `sql:` metric, its rows are read first, into a temporary table.)
        assert statements[0].startswith(
            ("DROP TABLE IF EXISTS `ab`.`ab_units__", "CREATE TEMPORARY TABLE ab_tmp_sql_metric")
        )
        assert any(s.startswith("CREATE TEMPORARY TABLE ab_tmp_enrolled") for s in statements)
        assert any(s.startswith("UPDATE ab_tmp_enrolled") for s in statements)
        assert statements[-1] == "CALL BQ.ABORT_SESSION()"
    # The `sql:` metric's values, and the query that refuses several rows for a unit, in the
    # session whose temporary tables they are.
    [with_sql] = [s for s in extracts if any("ab_tmp_sql_metric_values" in q for q in s)]
    assert any("HAVING COUNT(*) > 1" in q for q in with_sql)


def sessions(requests: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[list[str]]:
    """The statements of each session, in order, from (request, response) pairs of job
    inserts; fails if a statement names a session that no earlier statement created."""
    found: dict[str, list[str]] = {}
    for request, response in requests:
        query = request["configuration"]["query"]
        if query.get("createSession"):
            created = response["statistics"]["sessionInfo"]["sessionId"]
            assert created not in found
            found[created] = [query["query"]]
            continue
        named = {p["key"]: p["value"] for p in query.get("connectionProperties", [])}
        if "session_id" in named:
            found[named["session_id"]].append(query["query"])
    return list(found.values())


@pytest.mark.parametrize(
    ("statement", "default_dataset", "message"),
    [
        ("CREATE TEMP TABLE t AS SELECT 1 AS a", True, "Schema with name"),
        ("CREATE TABLE ab.pk (a STRING, PRIMARY KEY (a) NOT ENFORCED)", False, "ENFORCED"),
        (
            "SELECT CONCAT(x.experiment_key, @p) AS v FROM ab.exposures AS x GROUP BY 1",
            False,
            "must appear in the GROUP BY clause",
        ),
        ("CALL BQ.ABORT_SESSION()", False, "routine:ab-test.BQ.ABORT_SESSION"),
    ],
)
def test_what_the_emulator_cannot_run_still_fails_there(
    both: dict[str, Any], statement: str, default_dataset: bool, message: str
) -> None:
    """The emulator limits docs/engines.md lists and this module works around: when one of
    these starts to pass (a newer bqemulator), the parity above can cover more."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.cloud.bigquery import ConnectionProperty, QueryJobConfig, ScalarQueryParameter

    client = bigquery_client(both["url"])
    session = client.query("SELECT 1", job_config=QueryJobConfig(create_session=True))
    session.result()
    config = QueryJobConfig(
        query_parameters=[ScalarQueryParameter("p", "STRING", "z")] if "@p" in statement else [],
        connection_properties=[ConnectionProperty("session_id", session.session_info.session_id)],
    )
    if default_dataset:
        config.default_dataset = f"{client.project}.{DATASET}"
    with pytest.raises(GoogleAPICallError, match=message):
        client.query(statement, job_config=config).result()


def test_a_failed_data_quality_query_raises_where_the_emulator_answers_it_with_no_rows(
    both: dict[str, Any],
) -> None:
    """GX's engine (`sa_bigquery`) runs each query as a job, whose failure raises: through
    the DB-API's `jobs.query` shortcut the emulator answers a failed query with an empty
    result, and a data-quality check would pass without having run."""
    import sqlalchemy as sa
    from google.cloud.bigquery import dbapi

    from ab_pipeline.warehouse import sa_bigquery

    missing = f"SELECT unit_id FROM {DATASET}.no_such_table"
    shortcut = dbapi.connect(client=bigquery_client(both["url"])).cursor()
    shortcut.execute(missing)
    assert shortcut.fetchall() == []  # the emulator's limit: when this fails, drop the job ids
    sa_bigquery.register()
    engine = sa.create_engine("bigquery+ab_dbapi://" + both["url"].split("://", 1)[1])
    with engine.connect() as connection, pytest.raises(sa.exc.DatabaseError, match="no_such_table"):
        connection.execute(sa.text(missing))
    engine.dispose()
