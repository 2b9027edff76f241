"""The documentation's contracts, checked against the code and real services.

docs/config.md names every field of the config's schema and its example is a valid config;
docs/warehouse.md's CREATE TABLE, COPY/\\copy and INSERT statements and its CSV files load into
real DuckDB and PostgreSQL and enroll the units the page says; docs/connections.md's connection
values resolve (through Airflow's own environment-variable backend) to the URLs it shows, and
its SMTP example delivers; nothing in the repository points outside it, and docs speak of dates.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import json_schema, parse_config
from ab_pipeline.devtools.lint import lint_config
from ab_pipeline.readout.extract import build_units_table
from ab_pipeline.readout.results_model import json_schema as results_json_schema
from ab_pipeline.warehouse import (
    Warehouse,
    dispose_all,
    url_from_connection_fields,
    warehouse_for_connection,
)
from tests.conftest import POSTGRES_URL
from tests.local_services import Inbox, serving_smtp

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.M | re.S)


def blocks(page: str, info: str) -> list[str]:
    """The bodies of the page's fenced code blocks whose info string is exactly `info`."""
    text = (DOCS / page).read_text()
    return [m["body"] for m in FENCE.finditer(text) if m["info"].strip() == info]


def one_block(page: str, info: str) -> str:
    [body] = blocks(page, info)
    return body


# ---- docs/config.md ----


def schema_fields() -> dict[str, list[str]]:
    """{model title: its field names}, the top level included, from the live pydantic model."""
    schema = json_schema()
    models = {"(top level)": list(schema["properties"])}
    for name, definition in schema["$defs"].items():
        models[name] = list(definition.get("properties", {}))
    return models


def test_config_doc_names_every_schema_field() -> None:
    text = (DOCS / "config.md").read_text()
    top = text[text.index("## Top level") : text.index("## `hypothesis`")]
    missing_top = [f for f in schema_fields()["(top level)"] if f"| `{f}` |" not in top]
    assert missing_top == [], f"docs/config.md's top-level table lacks {missing_top}"
    missing = {
        model: gaps
        for model, fields in schema_fields().items()
        if (gaps := [f for f in fields if f"`{f}`" not in text])
    }
    assert missing == {}, f"docs/config.md does not mention {missing}"


def test_config_doc_example_is_a_clean_valid_config() -> None:
    config = parse_config(yaml.safe_load(one_block("config.md", "yaml")), "docs/config.md")
    assert config.key == "checkout-copy"
    assert lint_config(config) == []  # no checklist warning either
    # Every kind of metric and the optional sections the page describes are exercised.
    assert {m.type for m in config.metrics.values()} == {"proportion", "mean", "ratio", "quantile"}
    assert config.assignment_check is not None and config.plan is not None


def test_config_doc_catalog_example_is_a_valid_catalog_file(tmp_path: Path) -> None:
    from ab_pipeline.core.catalog import load_catalog

    (tmp_path / "support.yaml").write_text(one_block("config.md", "yaml catalog"))
    catalog = load_catalog(tmp_path)
    assert catalog.problems == []
    assert catalog.metrics["repeat_contact_rate"].guardrail == {"max_increase": 0.01}


# ---- docs/results.md ----

SPAN = re.compile(r"`([^`]+)`")
SHAPE_TOKEN = re.compile(r"\\?\||\.\.\.|[{}\[\],:]|[A-Za-z_][A-Za-z0-9_]*\??")
# Names the page uses for data-named keys (docs/results.md, "Shapes are written ...").
PLACEHOLDERS = {"arm", "name", "gate", "guardrail", "property"}
Tree = dict[str, Any]


def parse_shape(text: str) -> Tree:
    """`{a, b?: {c}, d: [{e}] \\| null}` -> {"a": {}, "b": {"c": {}}, "d": {"e": {}}}.

    Lists are transparent (their items' keys are the list's); literals (`false`, `n`) and
    `...` (an open part) name no key; a span not opening with `{` or `[` is a list of items.
    """
    tokens = SHAPE_TOKEN.findall(text)
    if tokens[0] not in ("{", "["):
        tokens = ["{", *tokens, "}"]
    tree, end = _shape_value(tokens, 0)
    assert end == len(tokens), f"cannot read the shape {text!r}"
    return tree


def _merge(a: Tree, b: Tree) -> Tree:
    return {k: _merge(a.get(k, {}), b.get(k, {})) for k in a.keys() | b.keys()}


def _shape_value(tokens: list[str], i: int) -> tuple[Tree, int]:
    tree: Tree = {}
    while True:
        if tokens[i] == "{":
            sub, i = _shape_object(tokens, i + 1)
        elif tokens[i] == "[":
            sub, i = ({}, i) if tokens[i + 1] == "]" else _shape_value(tokens, i + 1)
            assert tokens[i + 1 if tokens[i] == "[" else i] == "]"
            i += 2 if tokens[i] == "[" else 1
        else:
            sub, i = {}, i + 1  # a literal
        tree = _merge(tree, sub)
        if i < len(tokens) and tokens[i] in ("|", "\\|"):
            i += 1
            continue
        return tree, i


def _shape_object(tokens: list[str], i: int) -> tuple[Tree, int]:
    tree: Tree = {}
    while tokens[i] != "}":
        if tokens[i] == "...":
            i += 1
        else:
            key, i = tokens[i].rstrip("?"), i + 1
            sub: Tree = {}
            if tokens[i] == ":":
                sub, i = _shape_value(tokens, i + 1)
            tree = _merge(tree, {key: sub})
        if tokens[i] == ",":
            i += 1
    return tree, i + 1


def results_doc_rows() -> list[tuple[list[tuple[str, ...]], list[str]]]:
    """Each table row of docs/results.md: (the key column's paths, the meaning's shapes)."""
    rows = []
    for line in (DOCS / "results.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        _, keys, meaning, _ = re.split(r"(?<!\\)\|", line)
        paths: list[tuple[str, ...]] = []
        for key in SPAN.findall(keys):
            relative = key.startswith(".")
            paths.append((*paths[-1][:-1], key[1:]) if relative else tuple(key.split(".")))
        shapes = [s for s in SPAN.findall(meaning) if "{" in s or "[" in s]
        rows.append((paths, shapes))
    return rows


def _concrete(schema: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    """The object schemas a value at `node` may be ($ref followed, unions and lists opened)."""
    if "$ref" in node:
        return _concrete(schema, schema["$defs"][node["$ref"].rsplit("/", 1)[1]])
    if "anyOf" in node:
        return [c for branch in node["anyOf"] for c in _concrete(schema, branch)]
    if node.get("type") == "array":
        items = [node["items"]] if "items" in node else node.get("prefixItems", [])
        return [c for item in items for c in _concrete(schema, item)]
    return [node] if node.get("type") == "object" else []


Step = tuple[str, dict[str, Any], str]  # (path segment, the value's schema, its model)


def _step(schema: dict[str, Any], node: dict[str, Any], key: str) -> Step:
    """One key down from `node`: a named property, `*` for a data-named key of a map, or
    (`*` on a list) its items."""
    objects = _concrete(schema, node)
    for candidate in objects:
        if key in candidate.get("properties", {}):
            return key, candidate["properties"][key], candidate["title"]
    if key in PLACEHOLDERS | {"*"}:
        for candidate in objects:
            if isinstance(candidate.get("additionalProperties"), dict):
                return "*", candidate["additionalProperties"], ""
    if key == "*":
        lists = [n for n in [node, *node.get("anyOf", [])] if n.get("type") == "array"]
        if lists:
            return "", lists[0], ""
    raise KeyError(key)


def documented_keys(schema: dict[str, Any]) -> tuple[set[tuple[str, str]], list[str]]:
    """(model, key) for every key docs/results.md names where it sits in the file, and the
    keys it names where the model has none."""
    found: set[tuple[str, str]] = set()
    unknown: list[str] = []

    def walk(node: dict[str, Any], tree: Tree, shown: str) -> None:
        for key, sub in tree.items():
            try:
                segment, child, model = _step(schema, node, key)
            except KeyError:
                unknown.append(f"{shown}.{key}".lstrip("."))
                continue
            if model:
                found.add((model, segment))
            walk(child, sub, f"{shown}.{key}")

    for paths, shapes in results_doc_rows():
        for keys in paths:
            tree: Tree = {}
            for key in reversed(keys):
                tree = {key: tree}
            walk(schema, tree, "")
        anchor = paths[0] if len(paths) == 1 else paths[0][:-1]
        for text in shapes:
            tree = parse_shape(text)
            for key in reversed(anchor):
                tree = {key: tree}
            walk(schema, tree, "")
    return found, unknown


def model_keys(schema: dict[str, Any]) -> set[tuple[str, str]]:
    """(model, key) for every key of the results model and its nested models."""
    models = [schema, *schema["$defs"].values()]
    return {(m["title"], key) for m in models for key in m.get("properties", {})}


def test_results_doc_and_model_name_the_same_keys() -> None:
    schema = results_json_schema()
    documented, unknown = documented_keys(schema)
    assert unknown == [], f"docs/results.md names keys the results model lacks: {unknown}"
    undocumented = sorted(f"{model}.{key}" for model, key in model_keys(schema) - documented)
    assert undocumented == [], f"docs/results.md does not name {undocumented}"


def test_results_doc_lists_every_top_level_key_in_its_key_column() -> None:
    top = {keys[0] for paths, _ in results_doc_rows() for keys in paths if len(keys) == 1}
    assert top == set(results_json_schema()["properties"])


def test_results_doc_shapes_are_read_as_written() -> None:
    assert parse_shape("{a, b?: {arm: n}, c: [{d}] \\| null, e: [], ...}") == {
        "a": {},
        "b": {"arm": {}},
        "c": {"d": {}},
        "e": {},
    }
    assert parse_shape("by_day: [{day}], by_property: {property: [{value}]}") == {
        "by_day": {"day": {}},
        "by_property": {"property": {"value": {}}},
    }


def test_published_results_schema_matches_the_model() -> None:
    published = json.loads((DOCS / "results.schema.json").read_text())
    assert published == results_json_schema(), (
        "run: .venv/bin/ab-pipeline schema --results -o docs/results.schema.json"
    )


# ---- docs/warehouse.md ----


def example_config(exposures: str, events: str) -> Any:
    return parse_config(
        {
            "key": "checkout-copy",
            "version": 1,
            "title": "the warehouse page's example",
            "owner": "growth@example.com",
            "recipients": ["growth@example.com"],
            "hypothesis": {"change": "c", "metric": "purchase_rate", "direction": "increase"},
            "unit": "account",
            "arms": {"control": 0.5, "treatment": 0.5},
            "control": "control",
            "start": "2026-06-01",
            "end": "2026-06-28",
            "source": {"exposures": exposures, "events": events},
            "metrics": {
                "purchase_rate": {"type": "proportion", "event": "purchase", "window": "1d"}
            },
            "primary": "purchase_rate",
        }
    )


def write_csv_files(directory: Path) -> None:
    for name in ("exposures.csv", "events.csv"):
        (directory / name).write_text(one_block("warehouse.md", f"csv {name}"))


def enrolled(warehouse: Warehouse, exposures: str, events: str) -> list[dict[str, Any]]:
    table = build_units_table(warehouse, example_config(exposures, events), date(2026, 6, 5))
    rows = warehouse.query(
        f"SELECT unit_id, arm, first_exposed_at, exposures, m_purchase_rate FROM {table} "
        "ORDER BY unit_id"
    )
    return [{**row, "first_exposed_at": str(row["first_exposed_at"])} for row in rows]


# What the page says a readout on 2026-06-05 enrolls (u3 is internal).
ENROLLED = [
    {
        "unit_id": "u1",
        "arm": "control",
        "first_exposed_at": str(datetime(2026, 6, 1, 9, 0)),
        "exposures": 2,
        "m_purchase_rate": 1,
    },
    {
        "unit_id": "u2",
        "arm": "treatment",
        "first_exposed_at": str(datetime(2026, 6, 1, 9, 5)),
        "exposures": 1,
        "m_purchase_rate": 0,
    },
]


def statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


def test_warehouse_doc_loads_into_duckdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_csv_files(tmp_path)
    monkeypatch.chdir(tmp_path)  # COPY reads 'exposures.csv' relative to the process
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    try:
        warehouse.execute(statements(one_block("warehouse.md", "sql duckdb")))
        warehouse.execute(statements(one_block("warehouse.md", "sql duckdb-load")))
        [counts] = warehouse.query(
            "SELECT (SELECT COUNT(*) FROM exposures) AS x, (SELECT COUNT(*) FROM events) AS e, "
            "(SELECT properties->>'app_version' FROM exposures LIMIT 1) AS app"
        )
        assert counts == {"x": 4, "e": 4, "app": "5.2"}
        assert enrolled(warehouse, "exposures", "events") == ENROLLED
    finally:
        dispose_all()


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A PostgreSQL database of its own (the page's schema name `raw` is fixed), dropped after."""
    name = f"ab_docs_{uuid.uuid4().hex[:10]}"
    admin = POSTGRES_URL.rsplit("/", 1)[0]
    subprocess.run(["psql", f"{admin}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)
    try:
        yield f"{admin}/{name}"
    finally:
        dispose_all()
        subprocess.run(
            ["psql", f"{admin}/postgres", "-qc", f"DROP DATABASE {name} WITH (FORCE)"], check=True
        )


def test_warehouse_doc_loads_into_postgresql(tmp_path: Path, scratch_database: str) -> None:
    write_csv_files(tmp_path)
    script = tmp_path / "load.sql"
    script.write_text(
        one_block("warehouse.md", "sql postgresql")
        + one_block("warehouse.md", "sql postgresql-load")
    )
    # psql itself, as the page says: `\copy` is a psql command, run from the CSVs' directory.
    loaded = subprocess.run(
        ["psql", scratch_database, "-v", "ON_ERROR_STOP=1", "-qf", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr
    warehouse = Warehouse(scratch_database)
    [counts] = warehouse.query(
        "SELECT (SELECT COUNT(*) FROM raw.exposures) AS x, (SELECT COUNT(*) FROM raw.events) AS e"
    )
    assert counts == {"x": 4, "e": 4}
    assert enrolled(warehouse, "raw.exposures", "raw.events") == ENROLLED


def test_warehouse_doc_loads_into_snowflake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's Snowflake statements, sent as written through the connector (PUT reads the
    CSVs relative to the process) to a fakesnow server."""
    from tests.snowflake_server import serving_fakesnow

    write_csv_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    with serving_fakesnow(tmp_path / "fakesnow") as url:
        warehouse = Warehouse(url)
        try:
            raw = warehouse.engine().raw_connection()
            cursor = raw.cursor()
            for block in ("sql snowflake", "sql snowflake-load"):
                for statement in statements(one_block("warehouse.md", block)):
                    cursor.execute(statement)
            raw.commit()
            raw.close()
            [counts] = warehouse.query(
                "SELECT (SELECT COUNT(*) FROM exposures) AS x, (SELECT COUNT(*) FROM events) AS e"
            )
            assert counts == {"x": 4, "e": 4}
            assert enrolled(warehouse, "exposures", "events") == ENROLLED
        finally:
            dispose_all()


def ddl_columns(ddl: str) -> list[str]:
    """Column names of a CREATE TABLE body (constraints left out)."""
    parts = re.split(r",\s*(?![^()]*\))", ddl)  # commas outside parentheses
    names = [part.split()[0] for part in parts if part.split()]
    return [n for n in names if n.upper() not in ("PRIMARY", "CHECK", "(")]


def test_warehouse_doc_names_every_column_the_pipeline_writes() -> None:
    from ab_pipeline.readout import decision_records, results_store

    text = (DOCS / "warehouse.md").read_text()
    tables = {name: ddl_columns(ddl) for name, ddl in results_store.TABLES.items()}
    human = decision_records._DDL.split("(", 1)[1].rsplit(")", 1)[0]
    tables[decision_records.TABLE] = ddl_columns(human)
    assert len(tables) == 5 and "disagrees" in tables["ab_human_decisions"]
    missing = {
        table: gaps
        for table, columns in tables.items()
        if (gaps := [c for c in [table, *columns] if f"`{c}`" not in text])
    }
    assert missing == {}, f"docs/warehouse.md does not mention {missing}"


# ---- docs/connections.md ----

WAREHOUSE_EXAMPLE = re.compile(r"^export AIRFLOW_CONN_AB_WAREHOUSE='([^'\n]+)'\n# -> (\S+)$", re.M)


def warehouse_examples() -> list[tuple[str, str]]:
    return WAREHOUSE_EXAMPLE.findall((DOCS / "connections.md").read_text())


def resolve(value: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL the pipeline builds from AIRFLOW_CONN_AB_WAREHOUSE=value, as Airflow parses it."""
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend

    monkeypatch.setenv("AIRFLOW_CONN_AB_WAREHOUSE", value)
    conn = EnvironmentVariablesBackend().get_connection("ab_warehouse")
    assert conn is not None
    return url_from_connection_fields(
        conn.conn_type or "",
        conn.host,
        conn.login,
        conn.password,
        conn.port,
        conn.schema,
        conn.extra,
    )


def test_connection_examples_resolve_to_the_urls_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    examples = warehouse_examples()
    assert len(examples) == 10, examples  # every example on the page is checked
    for value, url in examples:
        assert resolve(value, monkeypatch) == url, value


def test_connection_examples_reach_real_warehouses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's own resolution (`warehouse_for_connection`) against real databases."""
    examples = dict((url, value) for value, url in warehouse_examples())
    monkeypatch.setenv("AIRFLOW_CONN_AB_WAREHOUSE", examples[POSTGRES_URL])
    assert warehouse_for_connection("ab_warehouse").query("SELECT 1 AS one") == [{"one": 1}]
    # The relative DuckDB path lands under the task process's working directory.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    monkeypatch.setenv("AIRFLOW_CONN_AB_WAREHOUSE", examples["duckdb:///var/warehouse.duckdb"])
    try:
        warehouse_for_connection("ab_warehouse").execute("CREATE TABLE t AS SELECT 1 AS one")
    finally:
        dispose_all()
    assert (tmp_path / "var" / "warehouse.duckdb").is_file()


def test_smtp_example_delivers(monkeypatch: pytest.MonkeyPatch) -> None:
    from ab_pipeline.report.delivery import send_message

    [local, relay] = re.findall(
        r"^export AIRFLOW_CONN_SMTP_DEFAULT='([^'\n]+)'$",
        (DOCS / "connections.md").read_text(),
        re.M,
    )
    assert json.loads(relay)["port"] == 587 and "disable_tls" not in json.loads(relay)["extra"]
    inbox = Inbox()
    with serving_smtp(inbox) as server:
        conn = json.loads(local)
        assert conn["port"] == 1025
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({**conn, "port": server.port}))
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "hi"
        message.set_content("the documented connection works")
        assert send_message(message) is True
    assert inbox.subjects() == ["hi"]


# ---- the repository as a whole ----


def tracked_text_files() -> Iterator[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        path = REPO / name
        if path.is_file() and path.suffix not in (".png", ".duckdb", ".lock"):
            yield path


def test_nothing_refers_to_files_outside_the_repository() -> None:
    outside = ("../" + "shared", "DESIGN" + ".md")  # spelled apart: this file is scanned too
    offenders = [
        f"{path.relative_to(REPO)}: {needle}"
        for path in tracked_text_files()
        for needle in outside
        if needle in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert offenders == []


def test_docs_speak_of_dates_not_work_sessions() -> None:
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    found = [
        f"{page.name}: {match.group(0)}"
        for page in pages
        for match in re.finditer(r"\b[Ss]essions? \d+|\b[Ee]arlier sessions\b", page.read_text())
    ]
    assert found == []
