"""BigQuery: canonical SQL transpiled by sqlglot; rendered, not executed, on this project's
machines (tests parse every rendered statement back with sqlglot's BigQuery dialect).

Bound parameters are `@name` (BigQuery's named query parameters). Temporary tables exist only
inside a BigQuery *session*: a client must create one (`QueryJobConfig(create_session=True)`)
and pass its id (`connection_properties=[ConnectionProperty("session_id", id)]`) to every
statement of an extract, which is what `session_mode` declares.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ab_pipeline.warehouse.dialects.base import Dialect


class BigQuery(Dialect):
    name = "bigquery"
    sqlglot_name = "bigquery"
    schemes = ("bigquery",)
    materialized = False
    session_mode: ClassVar[bool] = True  # temporary tables need a BigQuery session

    def rewrite(self, node: Any) -> Any:
        from sqlglot import exp

        if isinstance(node, exp.Placeholder):
            return node  # sqlglot writes `:name` as BigQuery's `@name`
        if isinstance(node, exp.JSONExtractScalar) and isinstance(node.expression, exp.Placeholder):
            return _json_value(node)
        if isinstance(node, exp.PrimaryKey) and not node.args.get("options"):
            # BigQuery accepts a primary key only as an unenforced hint.
            node.set("options", [exp.var("NOT ENFORCED")])
        return super().rewrite(node)

    def hash_bucket(self, column: str, buckets: int) -> str:
        return f"MOD(ABS(FARM_FINGERPRINT({column})), {buckets})"


def _json_value(node: Any) -> Any:
    """Canonical `doc->>:key` (a top-level key bound as a parameter) as BigQuery's
    `JSON_VALUE(doc, CONCAT('$."', @key, '"'))`: BigQuery addresses JSON by a JSONPath, and
    reads JSON text (a STRING) without a cast."""
    from sqlglot import exp

    doc = node.this
    if isinstance(doc, exp.Cast) and doc.to.is_type("json"):
        doc = doc.this
    path = exp.func("CONCAT", exp.Literal.string('$."'), node.expression, exp.Literal.string('"'))
    return exp.func("JSON_VALUE", doc, path)


DIALECT = BigQuery()
