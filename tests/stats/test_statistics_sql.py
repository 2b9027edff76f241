"""The statistics engine's SQL path: ratio and CUPED columns, clustered quantiles, corrections,
SRM diagnosis, on a hand-made warehouse (DuckDB and PostgreSQL).

The ratio and CUPED sums the warehouse computes are checked against numpy, scipy and
statsmodels applied to the units table's own per-unit rows, read back in the test.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from scipy import stats

from ab_pipeline.core.config import parse_config
from ab_pipeline.core.errors import ConfigError
from ab_pipeline.gates.srm_diagnosis import srm_diagnosis
from ab_pipeline.readout.analysis import analyse, current_look
from ab_pipeline.readout.extract import build_units_table, covariate_column, ratio_columns
from ab_pipeline.readout.progress import progress
from ab_pipeline.warehouse import Warehouse, quote_ident
from tests.warehouse_fixtures import (
    Event,
    Exposure,
    create_contract_tables,
    experiment_data,
    insert_rows,
)

RUN = date(2026, 5, 31)
START = datetime(2026, 5, 4, 9)


def config(schema: str = "", **extra: Any) -> Any:
    metrics = {
        "solved": {
            "type": "proportion",
            "event": "solved",
            "window": "1d",
            "cuped": {"lookback": "14d"},
        },
        "clicks_per_session": {
            "type": "ratio",
            "numerator": {"event": "click"},
            "denominator": {"event": "session"},
            "window": "1d",
        },
        "latency": {"type": "quantile", "event": "served", "quantile": 0.9},
    }
    data = experiment_data(
        "stats-check",
        metrics,
        "solved",
        schema,
        arms={"control": 0.34, "a": 0.33, "b": 0.33},
        plan={"baseline": 0.38, "mde": 0.02},
    )
    return parse_config(data | extra)


def load(warehouse: Warehouse) -> None:
    create_contract_tables(warehouse)
    exposures, events = [], []
    for i in range(90):
        arm = ("control", "a", "b")[i % 3]
        unit, first = f"u{i}", START + timedelta(hours=i)
        props = {"platform": "ios" if i % 2 else "android", "country": "de"}
        exposures.append(("stats-check", unit, arm, first, False, False, props))
        if i % 4 == 0:
            exposures.append(
                ("stats-check", unit, arm, first + timedelta(hours=1), False, False, props)
            )
        pre_solved = i % 5
        for k in range(pre_solved):  # pre-exposure history: the covariate
            events.append((unit, "solved", first - timedelta(days=1 + k), None, None))
        events.append((unit, "solved", first - timedelta(days=20), None, None))  # too early
        if pre_solved >= 2 or (arm != "control" and i % 7 == 0):
            events.append((unit, "solved", first + timedelta(hours=2), None, None))
        sessions = 1 + i % 3
        for s in range(sessions):
            events.append((unit, "session", first + timedelta(minutes=10 + s), None, None))
        for c in range(i % 4):
            events.append((unit, "click", first + timedelta(minutes=20 + c), None, None))
        for e in range(1 + i % 3):
            value = 100.0 + 10 * (i % 9) + e + (5 if arm != "control" else 0)
            events.append((unit, "served", first + timedelta(minutes=30 + e), value, None))
    insert_rows(warehouse, exposures, events)


def test_ratio_and_cuped_columns_and_analysis(duckdb_warehouse: Warehouse) -> None:
    load(duckdb_warehouse)
    cfg = config()
    table = build_units_table(duckdb_warehouse, cfg, RUN)
    rows = {
        r["unit_id"]: r
        for r in duckdb_warehouse.query(f'SELECT * FROM "{table}"')  # noqa: S608
    }
    num, den = ratio_columns("clicks_per_session")
    assert rows["u7"][num] == 3 and rows["u7"][den] == 2
    # Covariate: solved (0/1, as the metric) in the 14 days before exposure; day -20 is outside.
    assert rows["u4"][covariate_column("solved")] == 1
    assert rows["u5"][covariate_column("solved")] == 0
    metrics = analyse(duckdb_warehouse, cfg, table, RUN)
    solved = metrics["solved"]["comparisons"]
    assert set(solved) == {"a", "b"}
    for comparison in solved.values():
        assert comparison["cuped"]["variance_reduction"] > 0.2
        assert comparison["se"] < comparison["cuped"]["se_unadjusted"]
        assert comparison["correction"]["method"] == "holm"
        assert comparison["p_value_adjusted"] >= comparison["p_value"]
    ratio = metrics["clicks_per_session"]
    assert ratio["arms"]["control"]["denominator"] > 0
    assert "delta" in ratio["comparisons"]["a"]["method"]
    latency = metrics["latency"]["comparisons"]["a"]
    # Few distinct latencies (100 + 10 k + e): the p90 sits on a tie, so it is discrete.
    assert latency["discrete"] and latency["se"] is None and latency["p_value"] is None
    assert latency["ci"][0] <= latency["absolute"] <= latency["ci"][1]


def test_srm_diagnosis_and_progress(duckdb_warehouse: Warehouse) -> None:
    load(duckdb_warehouse)
    cfg = config()
    table = build_units_table(duckdb_warehouse, cfg, RUN)
    diagnosis = srm_diagnosis(duckdb_warehouse, cfg, table, failed=True)
    assert diagnosis["repeat_exposure_rate"] == pytest.approx(23 / 90)
    assert diagnosis["multiple_exposure_rate"] == 0
    assert sum(sum(d["counts"].values()) for d in diagnosis["by_day"]) == 90
    platforms = {s["value"]: s["counts"] for s in diagnosis["by_property"]["platform"]}
    assert sum(platforms["ios"].values()) == 45 and set(diagnosis["by_property"]) == {
        "country",
        "platform",
    }
    assert "by_day" not in srm_diagnosis(duckdb_warehouse, cfg, table, failed=False)
    made = progress(cfg, {"control": 30, "a": 30, "b": 30}, date(2026, 5, 13))
    # Two treatment arms: the plan (Fleiss formula) at alpha / 2 per comparison.
    assert made is not None and made["planned_per_arm"] == 11305
    assert made["enrolment_per_day"] == pytest.approx(3.0) and made["days_left"] == 3759
    assert made["mde_now"] > 0.3


def seeded_rows(units: int = 600, seed: int = 20260531) -> tuple[list[Exposure], list[Event]]:
    """Random units whose outcome depends on their pre-exposure history (so CUPED has
    something to remove) and whose clicks and sessions vary per unit and arm."""
    rng = random.Random(seed)
    exposures: list[Exposure] = []
    events: list[Event] = []
    for i in range(units):
        unit, arm = f"s{i:04d}", rng.choice(["control", "a", "b"])
        first = START + timedelta(minutes=rng.randrange(0, 20 * 24 * 60))
        exposures.append(("stats-check", unit, arm, first, False, False, {"platform": "web"}))
        history = rng.choice([0, 0, 1, 1, 2, 3, 5])
        for _ in range(history):  # the covariate: solved within the 14 days before exposure
            events.append(
                (unit, "solved", first - timedelta(minutes=rng.randrange(1, 20_000)), None, None)
            )
        lift = {"control": 0.0, "a": 0.06, "b": 0.02}[arm]
        if rng.random() < 0.15 + 0.15 * min(history, 3) + lift:
            events.append(
                (unit, "solved", first + timedelta(minutes=rng.randrange(0, 1440)), None, None)
            )
        sessions = rng.randint(1, 6)
        for _ in range(sessions):
            events.append(
                (unit, "session", first + timedelta(minutes=rng.randrange(0, 1440)), None, None)
            )
        for _ in range(sum(rng.random() < 0.4 + lift for _ in range(2 * sessions))):
            events.append(
                (unit, "click", first + timedelta(minutes=rng.randrange(0, 1440)), None, None)
            )
        for _ in range(rng.randint(1, 3)):
            value = round(rng.lognormvariate(5, 0.3), 1)
            events.append(
                (unit, "served", first + timedelta(minutes=rng.randrange(0, 600)), value, None)
            )
    return exposures, events


@pytest.fixture(params=["duckdb", "postgresql"])
def loaded_warehouse(request: pytest.FixtureRequest) -> tuple[Warehouse, str]:
    """(warehouse, schema) holding seeded_rows(), on either engine."""
    if request.param == "duckdb":
        warehouse, schema = request.getfixturevalue("duckdb_warehouse"), ""
    else:
        warehouse, schema = request.getfixturevalue("postgres_schema")
    create_contract_tables(warehouse, schema)
    insert_rows(warehouse, *seeded_rows(), schema)
    return warehouse, schema


def units_rows(warehouse: Warehouse, table: str) -> dict[str, dict[str, np.ndarray]]:
    """Per arm, the units table's ratio and CUPED columns as float arrays."""
    num, den = ratio_columns("clicks_per_session")
    rows = warehouse.query(
        f"SELECT arm, {num} AS x, {den} AS y, m_solved AS outcome, "
        f"{covariate_column('solved')} AS covariate FROM {quote_ident(table)}"
    )
    arms: dict[str, dict[str, np.ndarray]] = {}
    for arm in ("control", "a", "b"):
        mine = [r for r in rows if r["arm"] == arm]
        arms[arm] = {
            k: np.array([float(r[k]) for r in mine]) for k in ("x", "y", "outcome", "covariate")
        }
    return arms


def delta_ratio(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """sum X / sum Y and its variance by linearisation: Var(mean(X - R Y)) / mean(Y)^2."""
    r = x.sum() / y.sum()
    return float(r), float(np.var(x - r * y, ddof=1) / (len(x) * y.mean() ** 2))


def test_ratio_and_cuped_equal_numpy_and_statsmodels_on_the_units_rows(
    loaded_warehouse: tuple[Warehouse, str],
) -> None:
    warehouse, schema = loaded_warehouse
    cfg = config(schema)
    table = build_units_table(warehouse, cfg, RUN)
    arms = units_rows(warehouse, table)
    assert sum(len(a["x"]) for a in arms.values()) == 600
    metrics = analyse(warehouse, cfg, table, RUN)

    z = stats.norm.ppf(0.975)
    ratio = metrics["clicks_per_session"]
    r_c, var_c = delta_ratio(arms["control"]["x"], arms["control"]["y"])
    for arm in ("control", "a", "b"):
        got = ratio["arms"][arm]
        assert got["numerator"] == pytest.approx(arms[arm]["x"].sum())
        assert got["denominator"] == pytest.approx(arms[arm]["y"].sum())
    for arm in ("a", "b"):
        r_t, var_t = delta_ratio(arms[arm]["x"], arms[arm]["y"])
        se = np.sqrt(var_c + var_t)
        comparison = ratio["comparisons"][arm]
        assert comparison["absolute"] == pytest.approx(r_t - r_c, rel=1e-9)
        assert comparison["se"] == pytest.approx(se, rel=1e-9)
        assert comparison["ci"] == pytest.approx([r_t - r_c - z * se, r_t - r_c + z * se])
        assert comparison["p_value"] == pytest.approx(2 * stats.norm.sf(abs(r_t - r_c) / se))
        assert comparison["relative"] == pytest.approx(r_t / r_c - 1, rel=1e-9)
    assert ratio["comparisons"]["a"]["p_value"] < 0.05  # the seeded click lift is found

    check_cuped(metrics["solved"]["comparisons"], arms)


def check_cuped(comparisons: dict[str, Any], arms: dict[str, dict[str, np.ndarray]]) -> None:
    """CUPED = the treatment coefficient of OLS y ~ arm + x (pooled within-arm theta), with
    Welch's test on y - theta (x - mean x); the unadjusted numbers are the Wald ones."""
    import statsmodels.api as sm
    from statsmodels.stats.proportion import confint_proportions_2indep

    names = list(arms)
    y = np.concatenate([arms[a]["outcome"] for a in names])
    x = np.concatenate([arms[a]["covariate"] for a in names])
    dummies = np.column_stack(
        [
            np.concatenate([np.full(len(arms[b]["outcome"]), float(a == b)) for b in names])
            for a in ("a", "b")
        ]
    )
    fit = sm.OLS(y, sm.add_constant(np.column_stack([dummies, x]))).fit()
    theta = fit.params[3]
    adjusted = {a: arms[a]["outcome"] - theta * (arms[a]["covariate"] - x.mean()) for a in names}
    control = arms["control"]["outcome"]
    for i, arm in enumerate(("a", "b"), start=1):
        comparison, treated = comparisons[arm], arms[arm]["outcome"]
        cuped = comparison["cuped"]
        assert cuped["theta"] == pytest.approx(theta, rel=1e-9) and theta > 0.1
        assert comparison["absolute"] == pytest.approx(fit.params[i], rel=1e-9)
        lift = adjusted[arm].mean() / adjusted["control"].mean() - 1
        assert comparison["relative"] == pytest.approx(lift, rel=1e-9)
        welch = stats.ttest_ind(adjusted[arm], adjusted["control"], equal_var=False)
        assert comparison["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
        assert comparison["ci"] == pytest.approx(list(welch.confidence_interval(0.95)), rel=1e-9)
        se = np.sqrt(
            adjusted[arm].var(ddof=1) / len(treated)
            + adjusted["control"].var(ddof=1) / len(control)
        )
        assert comparison["se"] == pytest.approx(se, rel=1e-9)
        se0 = np.sqrt(treated.var() / len(treated) + control.var() / len(control))
        assert cuped["se_unadjusted"] == pytest.approx(se0, rel=1e-9)
        assert cuped["variance_reduction"] == pytest.approx(1 - se**2 / se0**2, rel=1e-9)
        wald = confint_proportions_2indep(
            treated.sum(), len(treated), control.sum(), len(control), method="wald"
        )
        assert cuped["ci_unadjusted"] == pytest.approx(list(wald), rel=1e-9)
        assert cuped["absolute_unadjusted"] == pytest.approx(treated.mean() - control.mean())


def test_a_covariate_window_reaching_past_exposure_is_a_config_error() -> None:
    metrics = config().model_dump(mode="json")["metrics"]
    metrics["solved"]["cuped"] = {"lookback": "14d", "until": "+1h"}
    with pytest.raises(ConfigError, match="reaches past the first exposure"):
        config(metrics=metrics)


def test_sequential_look_index() -> None:
    cfg = config(analysis={"sequential": "obrien_fleming", "looks": 4})
    assert [current_look(cfg, date(2026, 5, d)) for d in (5, 10, 11, 20, 31)] == [1, 1, 2, 3, 4]
