"""Generation: units, exposures and events drawn chunk by chunk with numpy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ab_pipeline.devtools.simulate.plan import _Plan, _Source
from ab_pipeline.devtools.simulate.scenario import (
    _DAY,
    _STATUS,
    MeanTruth,
    ProportionTruth,
    ValueDistribution,
)

if TYPE_CHECKING:
    import numpy as np

# --- generation ---------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """One chunk of units with their exposures and events, as arrays."""

    number: np.ndarray  # global unit number (1-based)
    arm: np.ndarray
    status: np.ndarray  # index into _STATUS
    first: np.ndarray  # first exposure, seconds from start midnight
    exp_unit: np.ndarray  # exposure -> index into number
    exp_t: np.ndarray  # seconds from start midnight
    exp_internal: np.ndarray
    exp_bot: np.ndarray
    exp_arm: np.ndarray
    exp_props: np.ndarray
    ev_unit: np.ndarray
    ev_code: np.ndarray
    ev_t: np.ndarray
    ev_value: np.ndarray
    ev_tagged: np.ndarray


@dataclass
class _Events:
    """Event columns collected from the generators of one chunk."""

    unit: list[np.ndarray] = field(default_factory=list)
    code: list[np.ndarray] = field(default_factory=list)
    t: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)

    def add(
        self, unit: np.ndarray, code: int | np.ndarray, t: np.ndarray, value: np.ndarray | None
    ) -> None:
        import numpy as np

        self.unit.append(unit)
        self.code.append(np.broadcast_to(np.asarray(code, dtype=np.int16), len(unit)))
        self.t.append(t)
        self.value.append(value if value is not None else np.full(len(unit), np.nan))

    def arrays(self) -> tuple[np.ndarray, ...]:
        import numpy as np

        return tuple(np.concatenate(part) for part in (self.unit, self.code, self.t, self.value))


class _Generator:
    """Draws the experiment chunk by chunk from one seeded stream."""

    def __init__(self, plan: _Plan) -> None:
        import numpy as np

        self.plan = plan
        self.rng = np.random.default_rng(plan.scenario.seed)
        self.hash_arms = _hash_arms(plan) if plan.hashed else None
        self.cells = self._cells()  # remaining units per (arm, status)
        self.included = self.cells[:, 0].copy()  # remaining analysed units per arm
        self.good = {  # remaining analysed converters per proportion source and arm
            s.metric: self._converters(s.truth)
            for s in plan.sources
            if isinstance(s.truth, ProportionTruth)
        }

    def _cells(self) -> np.ndarray:
        import numpy as np

        scenario, arms = self.plan.scenario, self.plan.arms
        status = np.array(
            [
                1 - scenario.internal_share - scenario.bot_share,
                scenario.internal_share,
                scenario.bot_share,
            ]
        )
        status = np.clip(status, 0, 1)
        if scenario.counts is not None or self.hash_arms is not None:
            sizes = (
                np.bincount(self.hash_arms, minlength=len(arms))
                if self.hash_arms is not None
                else [scenario.counts[arm] for arm in arms]  # type: ignore[index]
            )
            rows = [self.rng.multinomial(size, status) for size in sizes]
            return np.array(rows, dtype=np.int64)
        assignment = scenario.assignment
        if not isinstance(assignment, dict):
            assignment = self.plan.config.arms
        p = np.outer([assignment[arm] for arm in arms], status).ravel()
        cells = self.rng.multinomial(scenario.total_units, p / p.sum())
        return cells.reshape(len(arms), len(_STATUS)).astype(np.int64)

    def _converters(self, truth: ProportionTruth) -> np.ndarray:
        import numpy as np

        rates = np.array([truth.rate[arm] for arm in self.plan.arms])
        if self.plan.scenario.exact:
            return np.floor(rates * self.included + 0.5).astype(np.int64)
        return self.rng.binomial(self.included, rates).astype(np.int64)

    def chunks(self, size: int) -> Iterator[_Chunk]:
        total = self.plan.scenario.total_units
        for start in range(0, total, size):
            yield self._chunk(start, min(size, total - start))

    def _chunk(self, start: int, n: int) -> _Chunk:
        import numpy as np

        rng, plan = self.rng, self.plan
        if self.hash_arms is not None:
            arm, status = self._hashed_labels(self.hash_arms[start : start + n])
        else:
            take = rng.multivariate_hypergeometric(self.cells.ravel(), n, method="marginals")
            self.cells -= take.reshape(self.cells.shape)
            labels = np.repeat(np.arange(take.size), take)
            rng.shuffle(labels)
            arm, status = labels // len(_STATUS), labels % len(_STATUS)
        first = rng.integers(0, plan.enroll_s, n)
        exposures = self._exposures(arm, status, first)
        if plan.scenario.arm_flip_share:
            exposures["exp_arm"] = self._flipped(arm)[exposures["exp_unit"]]
        events = _Events()
        for source in plan.sources:
            self._source_events(events, source, arm, status, first)
        if plan.first_event_code is not None:
            self._first_events(events, first)
        self._unrelated_events(events, first)
        unit, code, t, value = events.arrays()
        # Untagged events are an instrumentation warning, not a different truth.
        tagged = rng.random(len(unit)) >= plan.scenario.untagged_event_share
        self.included -= np.bincount(arm[status == 0], minlength=len(plan.arms))
        number = np.arange(start + 1, start + n + 1)
        return _Chunk(
            number,
            arm,
            status,
            first,
            **exposures,
            ev_unit=unit,
            ev_code=code,
            ev_t=t,
            ev_value=value,
            ev_tagged=tagged,
        )

    def _hashed_labels(self, arm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arms fixed by the hash; statuses handed out from the arm's remaining cells."""
        import numpy as np

        status = np.zeros(len(arm), dtype=np.int64)
        for a in range(len(self.plan.arms)):
            rows = np.flatnonzero(arm == a)
            take = self.rng.multivariate_hypergeometric(self.cells[a], len(rows))
            self.cells[a] -= take
            labels = np.repeat(np.arange(len(_STATUS)), take)
            self.rng.shuffle(labels)
            status[rows] = labels
        return arm.astype(np.int64), status

    def _flipped(self, arm: np.ndarray) -> np.ndarray:
        """The arm logged for each unit: another arm for an `arm_flip_share` of them."""
        import numpy as np

        k = len(self.plan.arms)
        flip = self.rng.random(len(arm)) < self.plan.scenario.arm_flip_share
        other = (arm + self.rng.integers(1, k, len(arm))) % k
        return np.where(flip, other, arm)

    def _first_events(self, events: _Events, first: np.ndarray) -> None:
        """The unit's first `first_event`: up to 10 minutes before its first exposure (not before
        the start), or 1-60 minutes after it for the units whose exposure was logged early."""
        import numpy as np

        truth = self.plan.scenario.first_event
        assert truth is not None and self.plan.first_event_code is not None
        n = len(first)
        early = self.rng.random(n) < truth.early_share
        before = np.maximum(first - self.rng.integers(0, 600, n), 0)
        after = first + self.rng.integers(60, 3600, n)
        t = np.where(early, after, before)
        keep = t < self.plan.end_s
        events.add(np.arange(n)[keep], self.plan.first_event_code, t[keep], None)

    def _exposures(
        self, arm: np.ndarray, status: np.ndarray, first: np.ndarray
    ) -> dict[str, np.ndarray]:
        import numpy as np

        rng, plan, n = self.rng, self.plan, len(arm)
        repeat = rng.random(n) < plan.scenario.repeat_exposure_share
        extra = np.where(repeat, rng.integers(1, 3, n), 0)
        rows = np.repeat(np.arange(n), extra)
        later = first[rows] + rng.integers(1, plan.end_s - first[rows])
        unit = np.concatenate([np.arange(n), rows])
        t = np.concatenate([first, later])
        # Bots are flagged on their last generated exposure only: exclusion must look at any
        # exposure, not just the first.
        last = np.arange(n)
        if len(rows):
            ends = np.flatnonzero(np.r_[rows[1:] != rows[:-1], True])
            last[rows[ends]] = n + ends
        bot = np.zeros(len(unit), dtype=bool)
        bot[last[status == 2]] = True
        platform = rng.choice(len(plan.scenario.platforms), n, p=_probs(plan.scenario.platforms))
        country = rng.choice(len(plan.scenario.countries), n, p=_probs(plan.scenario.countries))
        combo = (arm * len(plan.scenario.platforms) + platform) * len(plan.scenario.countries)
        props = np.asarray(plan.property_codes)[combo + country]
        return {
            "exp_unit": unit,
            "exp_t": t,
            "exp_internal": status[unit] == 1,
            "exp_bot": bot,
            "exp_arm": arm[unit],
            "exp_props": props[unit],
        }

    def _converted(self, source: _Source, arm: np.ndarray, status: np.ndarray) -> np.ndarray:
        """Which units convert: exact per-arm totals among analysed units, coin flips otherwise."""
        import numpy as np

        rng = self.rng
        truth = source.truth
        assert isinstance(truth, ProportionTruth)
        good = self.good[source.metric]
        converted = np.zeros(len(arm), dtype=bool)
        for a in range(len(self.plan.arms)):
            pool = np.flatnonzero((arm == a) & (status == 0))
            if len(pool) == 0:
                continue
            k = rng.hypergeometric(good[a], self.included[a] - good[a], len(pool))
            converted[rng.choice(pool, k, replace=False)] = True
            good[a] -= k
        rates = np.array([truth.rate[a] for a in self.plan.arms])
        excluded = np.flatnonzero(status != 0)
        converted[excluded] = rng.random(len(excluded)) < rates[arm[excluded]]
        return converted

    def _decayed(self, truth: ProportionTruth, arm: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Per-unit coin flips at a rate whose lift over control fades with the exposure day."""
        import numpy as np

        assert truth.decay is not None
        rates = np.array([truth.rate[a] for a in self.plan.arms])
        control = truth.rate[self.plan.config.control]
        rate = control + (rates[arm] - control) * np.exp(-truth.decay * (first // _DAY))
        return self.rng.random(len(arm)) < rate

    def _values(self, source: _Source, arm: np.ndarray) -> np.ndarray | None:
        import numpy as np

        dist: ValueDistribution | None = getattr(source.truth, "value", None)
        if dist is None:
            return None
        centre = np.array([dist.centre[a] for a in self.plan.arms])[arm]
        noise = self.rng.standard_normal(len(arm)) * dist.spread
        raw = centre * np.exp(noise) if dist.distribution == "lognormal" else centre + noise
        return np.round(raw, dist.decimals)

    def _source_events(
        self,
        events: _Events,
        source: _Source,
        arm: np.ndarray,
        status: np.ndarray,
        first: np.ndarray,
    ) -> None:
        import numpy as np

        rng, truth = self.rng, source.truth
        if isinstance(truth, ProportionTruth):
            converted = (
                self._decayed(truth, arm, first)
                if truth.decay
                else self._converted(source, arm, status)
            )
            units = np.flatnonzero(converted)
            extra = truth.events_per_converter - 1
            counts = 1 + (rng.poisson(extra, len(units)) if extra > 0 else 0)
            rows = np.repeat(units, counts)
        else:
            lam = (
                np.array([truth.per_unit_mean[a] for a in self.plan.arms])[arm]
                if isinstance(truth, MeanTruth)
                else np.full(len(arm), truth.per_unit_events)
            )
            rows = np.repeat(np.arange(len(arm)), rng.poisson(lam))
        t = first[rows] + rng.integers(0, source.span_s, len(rows))
        events.add(rows, source.code, t, self._values(source, arm[rows]))
        if isinstance(truth, ProportionTruth) and source.unless_code is not None:
            self._unless_events(events, source, arm, first, converted, rows, t)
        self._outside_events(events, source, arm, first)

    def _unless_events(
        self,
        events: _Events,
        source: _Source,
        arm: np.ndarray,
        first: np.ndarray,
        converted: np.ndarray,
        rows: np.ndarray,
        t: np.ndarray,
    ) -> None:
        """Spoiled non-converters (unless within D), and converters with an unless after D."""
        import numpy as np

        rng, plan, truth = self.rng, self.plan, source.truth
        assert isinstance(truth, ProportionTruth) and source.unless_code is not None
        share, within = truth.unless_share, source.unless_s
        # Spoiling q of the non-converters makes spoiled / (converters + spoiled) = share.
        rates = np.array([truth.rate[a] for a in plan.arms])
        q = np.where(rates < 1, rates * share / ((1 - share) * np.maximum(1 - rates, 1e-12)), 0)
        spoiled = np.flatnonzero(~converted & (rng.random(len(arm)) < q[arm]))
        # The spoiled event sits early enough that its `unless` lands inside the window too.
        e_t = first[spoiled] + rng.integers(0, source.span_s - within, len(spoiled))
        u_t = e_t + rng.integers(1, within, len(spoiled))
        events.add(spoiled, source.code, e_t, self._values(source, arm[spoiled]))
        events.add(spoiled, source.unless_code, u_t, None)
        if len(rows) == 0:
            return
        # Converters: an unless event later than `within` after their last in-window event.
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        last_t = np.maximum.reduceat(t, starts)
        pick = rng.random(len(starts)) < share
        late = last_t[pick] + within + rng.integers(60, 6 * 3600, int(pick.sum()))
        keep = late < plan.end_s
        events.add(rows[starts][pick][keep], source.unless_code, late[keep], None)

    def _outside_events(
        self, events: _Events, source: _Source, arm: np.ndarray, first: np.ndarray
    ) -> None:
        """Metric events before the first exposure or after the window: never counted."""
        import numpy as np

        rng, plan = self.rng, self.plan
        units = np.flatnonzero(rng.random(len(arm)) < plan.scenario.outside_window_share)
        after = rng.random(len(units)) < 0.5 if source.windowed else np.zeros(len(units), bool)
        before_t = first[units] - rng.integers(60, 3 * _DAY, len(units))
        after_t = first[units] + source.span_s + rng.integers(60, source.span_s + 60, len(units))
        t = np.where(after, after_t, before_t)
        keep = t < plan.end_s
        units, t = units[keep], t[keep]
        events.add(units, source.code, t, self._values(source, arm[units]))
        if source.unless_code is not None:
            # A ticket before the unit was ever exposed spoils nothing.
            pre = units[t < first[units]]
            events.add(pre, source.unless_code, first[pre] - rng.integers(60, _DAY, len(pre)), None)

    def _unrelated_events(self, events: _Events, first: np.ndarray) -> None:
        """Events no metric reads (page views, searches), around the unit's exposure."""
        import numpy as np

        rng, plan = self.rng, self.plan
        per_unit = plan.scenario.unrelated_events_per_unit
        if not plan.unrelated or per_unit == 0:
            return
        rows = np.repeat(np.arange(len(first)), rng.poisson(per_unit, len(first)))
        t = first[rows] + rng.integers(-2 * _DAY, plan.longest_s, len(rows))
        code = rng.integers(plan.unrelated.start, plan.unrelated.stop, len(rows))
        keep = t < plan.end_s
        events.add(rows[keep], code[keep], t[keep], None)


def _hash_arms(plan: _Plan) -> np.ndarray:
    """Arm index of every unit (1..N) by ab_pipeline.core.assignment of its unit id."""
    import numpy as np

    from ab_pipeline.core.assignment import assign_many

    config, width = plan.config, plan.id_width
    ids = (f"{plan.prefix}{n:0{width}d}" for n in range(1, plan.scenario.total_units + 1))
    arms = assign_many(config.key, config.version, ids, config.arms)
    index = {arm: i for i, arm in enumerate(plan.arms)}
    return np.array([index[a] for a in arms], dtype=np.int64)


def _probs(shares: dict[str, float]) -> np.ndarray:
    import numpy as np

    p = np.array(list(shares.values()), dtype=float)
    return p / p.sum()
