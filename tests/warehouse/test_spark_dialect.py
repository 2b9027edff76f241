"""The Spark dialect's rendering (no server needed) and its session against a real server."""

from __future__ import annotations

from datetime import datetime

import pytest

from ab_pipeline.warehouse import Warehouse, connection_env_value, url_from_connection_fields
from ab_pipeline.warehouse.dialects import dialect_for

SPARK = dialect_for("sc://127.0.0.1:15002")


def test_sc_urls_name_the_spark_dialect() -> None:
    assert SPARK.name == "spark" and SPARK.sqlglot_name == "spark"
    assert not SPARK.read_only_transactions


def test_a_temporary_table_becomes_a_cached_view() -> None:
    rendered = SPARK.render("CREATE TEMP TABLE ab_tmp_x AS SELECT unit_id FROM exposures")
    assert rendered.startswith("CACHE TABLE ab_tmp_x AS SELECT")


def test_an_unlogged_step_table_becomes_a_plain_table_of_the_catalog() -> None:
    rendered = SPARK.render('CREATE UNLOGGED TABLE "s"."ab_tmp_x_0a" AS SELECT 1 AS a')
    assert rendered == "CREATE TABLE `s`.`ab_tmp_x_0a` AS SELECT 1 AS a"


def test_json_fields_are_read_with_get_json_object_also_by_bound_key() -> None:
    rendered = SPARK.render("SELECT CAST(d.doc AS JSON)->>:field_0 AS v, x.p->>'a' AS w FROM t d")
    assert "GET_JSON_OBJECT(d.doc, CONCAT('$.', :field_0))" in rendered
    assert "GET_JSON_OBJECT(x.p, '$.a')" in rendered
    assert "TO_JSON" not in rendered


def test_constraints_materialized_and_json_types_are_left_out() -> None:
    table = SPARK.render("CREATE TABLE IF NOT EXISTS r (a TEXT NOT NULL, p JSON, PRIMARY KEY (a))")
    assert table == "CREATE TABLE IF NOT EXISTS r (a STRING NOT NULL, p STRING)"
    cte = SPARK.render("WITH e AS MATERIALIZED (SELECT 1 AS x) SELECT x FROM e")
    assert "MATERIALIZED" not in cte


def test_hash_buckets_are_never_negative() -> None:
    assert SPARK.hash_bucket("u.unit_id", 4) == "pmod(hash(u.unit_id), 4)"


def test_airflow_spark_connect_connections_become_sc_urls() -> None:
    assert url_from_connection_fields("spark_connect", "sc://spark", port=15003) == (
        "sc://spark:15003"
    )
    assert url_from_connection_fields("spark_connect", "spark") == "sc://spark:15002"
    value = connection_env_value("sc://127.0.0.1:4321")
    assert '"conn_type": "spark_connect"' in value and '"port": 4321' in value


def test_spark_is_no_sqlalchemy_url() -> None:
    with pytest.raises(ValueError, match="Spark Connect"):
        SPARK.engine_url("sc://127.0.0.1:15002")


@pytest.mark.slow
def test_the_session_queries_updates_and_deletes_on_a_real_server(spark_url: str) -> None:
    warehouse = Warehouse(spark_url)
    warehouse.execute(
        [
            "DROP TABLE IF EXISTS ab_session_check",
            "CREATE TABLE ab_session_check (k TEXT, t TIMESTAMP, v DOUBLE PRECISION)",
            "INSERT INTO ab_session_check VALUES ('a', :t, 1.5), ('b', :t, 2.5)",
            "CREATE TEMP TABLE ab_tmp_check AS SELECT k, v FROM ab_session_check",
            "UPDATE ab_tmp_check SET v = f.v FROM (SELECT 'b' AS k, 9.0 AS v) f "
            "WHERE f.k = ab_tmp_check.k",
        ],
        {"t": datetime(2026, 5, 1, 23, 30)},
    )
    updated = warehouse.query("SELECT k, v FROM ab_tmp_check ORDER BY k")
    assert updated == [{"k": "a", "v": 1.5}, {"k": "b", "v": 9.0}]
    assert _views_of(spark_url, "ab_tmp_check") == ["ab_tmp_check", "ab_tmp_check__updated_1"]
    # UPDATEs that match no row leave the table as it is, without a rebuild.
    warehouse.execute(
        [
            "UPDATE ab_tmp_check SET v = f.v FROM (SELECT 'z' AS k, 7.0 AS v) f "
            "WHERE f.k = ab_tmp_check.k",
            "UPDATE ab_tmp_check SET v = 0 WHERE k = :none",
        ],
        {"none": "z"},
    )
    assert warehouse.query("SELECT k, v FROM ab_tmp_check ORDER BY k") == updated
    assert _views_of(spark_url, "ab_tmp_check") == ["ab_tmp_check", "ab_tmp_check__updated_1"]
    warehouse.execute("UPDATE ab_tmp_check SET v = 0 WHERE k = :a", {"a": "a"})
    assert warehouse.query("SELECT k, v FROM ab_tmp_check ORDER BY k") == [
        {"k": "a", "v": 0.0},
        {"k": "b", "v": 9.0},
    ]
    # A step table of the catalog (`shared_step_tables`) is updated the same way; a user's
    # Parquet table is not.
    warehouse.execute(
        [
            "CREATE UNLOGGED TABLE ab_tmp_step AS SELECT k, v FROM ab_session_check",
            "UPDATE ab_tmp_step SET v = 5 WHERE k = :b",
        ],
        {"b": "b"},
    )
    assert warehouse.query("SELECT k, v FROM ab_tmp_step ORDER BY k") == [
        {"k": "a", "v": 1.5},
        {"k": "b", "v": 5.0},
    ]
    warehouse.execute("DROP TABLE ab_tmp_step")
    assert not warehouse.table_exists("ab_tmp_step")
    assert _views_of(spark_url, "ab_tmp_step") == []
    with pytest.raises(ValueError, match="only the extract's step tables"):
        warehouse.execute("UPDATE ab_session_check SET v = 0 WHERE k = :a", {"a": "a"})
    warehouse.execute("DELETE FROM ab_session_check WHERE k = :gone", {"gone": "a"})
    rows = warehouse.query("SELECT k, t, v, 0.5 AS d FROM ab_session_check")
    assert rows == [{"k": "b", "t": datetime(2026, 5, 1, 23, 30), "v": 2.5, "d": 0.5}]
    assert isinstance(rows[0]["d"], float)  # Spark's DECIMAL literal arrives as a float
    assert warehouse.table_exists("ab_session_check")
    assert "ab_session_check" in warehouse.table_names()
    warehouse.execute(["DROP TABLE ab_tmp_check", "DROP TABLE ab_session_check"])
    assert not warehouse.table_exists("ab_session_check")


def _views_of(url: str, table: str) -> list[str]:
    """The session's temporary views that hold `table` and its updated versions."""
    from ab_pipeline.warehouse.dialects.spark import spark_session

    listed = spark_session(url).catalog.listTables()
    return sorted(t.name for t in listed if t.isTemporary and t.name.startswith(table))
