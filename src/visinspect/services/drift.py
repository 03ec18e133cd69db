"""Drift: has the stream of images changed? The recent window against a reference window.

Classes: the Jensen-Shannon distance (base 2, from 0 for the same distribution to 1 for disjoint
ones) between the two windows' top-1 class distributions, and the classes whose share moved most.
Confidences: the two-sample Kolmogorov-Smirnov statistic between the two windows' confidences,
read from cumulative counts at 0.01 steps (the rollups' confidence buckets,
`db/rollups.confidence_buckets`; the statistic at those edges, so within 0.01 in confidence of the
exact one), with the p-value of the asymptotic
Kolmogorov distribution. Both are a few lines of NumPy: SciPy would add about 100 MB to a serving
image held to 450 MB, so `tests/services/test_drift.py` checks these figures against SciPy's
`jensenshannon` and `kstwobign` instead.

`drifted` is true when the class distance reaches DRIFT_CLASS_JS, or the confidence statistic
reaches DRIFT_CONFIDENCE_KS with a p-value below DRIFT_P_VALUE (an effect and its significance: at
a million predictions, a trivial shift is significant); null when either window holds fewer than
DRIFT_MIN_PREDICTIONS predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import structlog

from visinspect.config import window_length
from visinspect.db import repository
from visinspect.db.repository import WindowDistribution
from visinspect.db.session import Database
from visinspect.errors import InvalidRequest, InvalidTimeRange
from visinspect.filters import as_utc

log = structlog.get_logger("visinspect.drift")
MOVED_CLASSES = 10


def parse_duration(text: str) -> timedelta:
    """A window a client asked for (`90m`, `24h`, `7d`); a 422 when it is not one."""
    try:
        return window_length(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    class_js: float
    confidence_ks: float
    p_value: float
    min_predictions: int


@dataclass(frozen=True, slots=True)
class ClassShift:
    class_name: str
    recent_share: float
    reference_share: float

    @property
    def change(self) -> float:
        return self.recent_share - self.reference_share


@dataclass(frozen=True, slots=True)
class Drift:
    recent_start: datetime
    recent_end: datetime
    reference_start: datetime
    recent_count: int
    reference_count: int
    class_js_distance: float | None
    confidence_ks: float | None
    confidence_p_value: float | None
    recent_mean_confidence: float | None
    reference_mean_confidence: float | None
    moved: list[ClassShift]  # most moved first
    drifted: bool | None
    reason: str


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt of the Jensen-Shannon divergence, base 2, of two count (or probability) vectors."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the limit of sqrt(n) D_n), from the series
    that converges fast on each side of x = 1."""
    if x <= 0:
        return 1.0
    if x < 1:
        cdf = (
            math.sqrt(2 * math.pi)
            / x
            * sum(math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * x * x)) for k in range(1, 21))
        )
        return min(1.0, max(0.0, 1 - cdf))
    terms = math.fsum((-1.0) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 21))
    return min(1.0, max(0.0, 2 * terms))


def below_edges(buckets: list[int]) -> tuple[int, ...]:
    """Predictions with 100 c below 1, 2, ..., 99: cumulative counts of the confidence buckets."""
    return tuple(int(n) for n in np.cumsum(buckets)[:-1])


def ks_from_cumulative(
    below_a: tuple[int, ...], n_a: int, below_b: tuple[int, ...], n_b: int
) -> tuple[float, float]:
    """The two-sample KS statistic at the edges, and its asymptotic p-value."""
    cdf_a = np.asarray(below_a, dtype=float) / n_a
    cdf_b = np.asarray(below_b, dtype=float) / n_b
    statistic = float(np.max(np.abs(cdf_a - cdf_b))) if len(cdf_a) else 0.0
    effective = n_a * n_b / (n_a + n_b)
    return statistic, kolmogorov_sf(math.sqrt(effective) * statistic)


def _end_of_this_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


class DriftService:
    def __init__(
        self,
        database: Database,
        thresholds: DriftThresholds,
        on_drift: Callable[[Drift], None] | None = None,
    ) -> None:
        self.database = database
        self.thresholds = thresholds
        self.on_drift = on_drift  # the metrics
        self._last_verdict: bool | None = None
        self._watched = False

    async def compare(
        self, window: timedelta, reference: timedelta, until: datetime | None = None
    ) -> Drift:
        """[until - window, until) against the `reference` before it. Without `until` the
        windows end with the current UTC hour: the same rows as ending now (none is newer), and
        every window of whole hours is read from the rollups alone."""
        end = as_utc(until) or _end_of_this_hour()
        try:
            start, reference_start = end - window, end - window - reference
        except OverflowError:  # the reference would begin before year 1
            raise InvalidTimeRange(
                f"the reference window would begin before year 1 (until {end.isoformat()})"
            ) from None
        recent, earlier = await self.database.run(
            repository.window_distributions, reference_start, start, end
        )
        return self._judge(start, end, reference_start, recent, earlier)

    async def watch(self, window: timedelta, reference: timedelta) -> Drift:
        """One comparison for the gauges; logs `drift.changed` when the verdict changes."""
        drift = await self.compare(window, reference)
        if self.on_drift is not None:
            self.on_drift(drift)
        if not self._watched or drift.drifted != self._last_verdict:
            (log.warning if drift.drifted else log.info)(
                "drift.changed",
                drifted=drift.drifted,
                reason=drift.reason,
                class_js_distance=drift.class_js_distance,
                confidence_ks=drift.confidence_ks,
                recent=drift.recent_count,
                reference=drift.reference_count,
            )
        self._watched, self._last_verdict = True, drift.drifted
        return drift

    def _judge(
        self,
        start: datetime,
        end: datetime,
        reference_start: datetime,
        recent: WindowDistribution,
        earlier: WindowDistribution,
    ) -> Drift:
        limits = self.thresholds
        js = ks = p_value = None
        moved: list[ClassShift] = []
        drifted: bool | None = None
        if min(recent.count, earlier.count) < limits.min_predictions:
            reason = (
                f"not enough predictions: {recent.count} recent and {earlier.count} in the "
                f"reference, {limits.min_predictions} needed in each (DRIFT_MIN_PREDICTIONS)"
            )
        else:
            js, moved = _classes(recent, earlier)
            ks, p_value = ks_from_cumulative(
                below_edges(recent.buckets),
                recent.count,
                below_edges(earlier.buckets),
                earlier.count,
            )
            reasons = []
            if js >= limits.class_js:
                reasons.append(f"classes: Jensen-Shannon distance {js:.3f} >= {limits.class_js}")
            if ks >= limits.confidence_ks and p_value < limits.p_value:
                reasons.append(
                    f"confidences: KS statistic {ks:.3f} >= {limits.confidence_ks}, "
                    f"p = {p_value:.2g} < {limits.p_value}"
                )
            drifted = bool(reasons)
            reason = "; ".join(reasons) or "within the thresholds"
        return Drift(
            recent_start=start,
            recent_end=end,
            reference_start=reference_start,
            recent_count=recent.count,
            reference_count=earlier.count,
            class_js_distance=js,
            confidence_ks=ks,
            confidence_p_value=p_value,
            recent_mean_confidence=_mean(recent),
            reference_mean_confidence=_mean(earlier),
            moved=moved,
            drifted=drifted,
            reason=reason,
        )


def _classes(
    recent: WindowDistribution, earlier: WindowDistribution
) -> tuple[float, list[ClassShift]]:
    """The distance between the class distributions, and the classes that moved most."""
    names = sorted(set(recent.by_class) | set(earlier.by_class))
    p = np.array([recent.by_class.get(n, 0) for n in names], dtype=float)
    q = np.array([earlier.by_class.get(n, 0) for n in names], dtype=float)
    shifts = [
        ClassShift(n, a / recent.count, b / earlier.count)
        for n, a, b in zip(names, p, q, strict=True)
    ]
    shifts.sort(key=lambda s: (-abs(s.change), s.class_name))
    return jensen_shannon_distance(p, q), shifts[:MOVED_CLASSES]


def _mean(window: WindowDistribution) -> float | None:
    return window.confidence_sum / window.count if window.count else None
