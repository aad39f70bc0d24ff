"""Item demand: each item's purchases and carts over the next horizon of event time.

A forecast is a Poisson mean per item and target (purchases, carts): the
number of ``purchase`` (``cart``) events of the item in ``[t, t + horizon)``
of event time, counted as events, not as quantities (the order-value head
has the quantities). It is learned online from what actually sold.

Demand samples (the delayed label)
    At regular points of event time (:attr:`DemandConfig.points_per_horizon`
    a horizon), the forecaster takes the items with known content (all of
    them up to :attr:`DemandConfig.max_items`; beyond that, every item less
    than a horizon old and a random sample of the others), forecasts their
    demand and keeps the point: the items, their count features and their
    running purchase and cart totals. One horizon later the label is what
    the totals grew by; the point is resolved then, learned and dropped.
    At most ``points_per_horizon + 1`` points wait at once (the oldest is
    dropped beyond that), so memory is bounded by ``max_items`` times that.
    It is the label stage's delayed-label idea, on items instead of pairs.
Counts per item (:class:`TimeDecayed`)
    Impressions, clicks, carts and purchases, decayed in *event time* with a
    half-life of one horizon. The encoder's decayed label counts decay per
    learned sample and count trials, not events: a rate per hour needs the
    clock. A young item's counts are divided by the decayed time it has
    existed, ``tau * (1 - exp(-age / tau))`` (``tau = half-life / ln 2``),
    not by ``tau``: ten minutes of an item's life give a rate, not a tenth
    of one.
The model (:class:`DemandHead`, on the shared net): a total and shares
    ``log mean_i = log total + log_softmax_i(MLP([v_i, x_i]) + W x_i)``
    over the point's items. ``v`` is the net's item vector (content tower
    plus the gated ID offset,
    :meth:`~online_models.net.MultiTaskNet.item_representation`, which
    the funnel's labels train: the head reads it and does not train it),
    ``x`` the log count rates, the log age and "younger than a
    horizon" (:data:`DEMAND_FEATURES`); ``W`` starts on the click rate and
    the MLP's last layer at zero, so an untrained head shares the total out
    by clicks. The total is not learned by gradient: it is the shop's
    current sales rate (decayed over half a horizon) times the horizon
    times the items' share of it (their decayed counts). So the horizon and
    the shop's volume are offsets and the head only learns who sells. A
    head that learned the scale too needed hundreds of steps to find it;
    one common bias learned by Adam moved by a step per point and overshot;
    a ratio of what sold to what was expected at the last resolved points
    lags a horizon behind, and carried the first hour's ramp (a shop
    filling up with conversions) into the second. The price of a plain
    decayed rate: a shop whose sales grow or shrink within the horizon is
    forecast late (the bench's ``total_ratio``). Loss: Poisson
    negative log-likelihood (``torch.nn.PoissonNLLLoss(log_input=True)``),
    mean over the point's items, in steps of its own on the learner's
    optimiser (the head in a parameter group with its own rate
    :data:`DEMAND_LR`): :attr:`DemandConfig.passes` on each resolved point.
    A point's first pass used to step the shared item side too; on the
    simulator (seed 7) that cost the funnel 0.0026 click AUC (paired DeLong
    SE 0.0004) and demand nothing (deviance 0.0764 with it, 0.0775 without;
    new items 0.087 and 0.084).
A new item
    gets a forecast at the next point after its catalog record: its content
    gives ``v``, its age and (no) counts the rest.
Several workers (:mod:`streams.group`)
    Every worker counts every event: its own, and its peers' counts from
    their updates on ``sync`` (:meth:`DemandForecaster.take_counts` and
    :meth:`~DemandForecaster.add_counts`: per item and counted kind, in one
    minute buckets of event time, negligible against a half-life of one
    horizon). Only the *leader*, the owner of ``events`` partition 0 (the
    one that publishes model snapshots), makes points, learns and queues
    forecasts (:meth:`~DemandForecaster.lead`); the others only count, so a
    new leader after a rebalance starts from complete counts, at the next
    point time. A peer's counts arrive a sync interval late: the few
    seconds of its events around a point's start and end count towards the
    neighbouring horizon.

Poisson deviance (:func:`poisson_deviance`): the mean over forecasts of
``2 * (y log(y / mu) - (y - mu))``, the ``y = 0`` term ``2 mu``. Every
forecast is floored at :data:`DEVIANCE_FLOOR` first, so the all-zero
forecast (and a decayed rate of 0) has a finite deviance: an item that sells
once against it costs ``2 * (log(1e6) - 1) = 25.6``.

Example
-------
>>> import numpy as np
>>> round(poisson_deviance(np.array([0.0, 2.0]), np.array([0.5, 2.0])), 3)  # (2 * 0.5 + 0) / 2
0.5
>>> decayed = TimeDecayed(rows=3, columns=1, half_life_ms=1_000)
>>> decayed.add(np.array([1]), np.array([[4.0]]), at_ms=0)
>>> decayed.get(np.array([1]), at_ms=2_000).tolist()  # two half-lives
[[1.0]]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from online_models.forecast_queue import ForecastQueue
from online_models.layout import LOG_PRICE_SCALE
from online_models.tables import IdTable

if TYPE_CHECKING:
    from online_models.learner import MultiTaskLearner
    from producers.contract import Event

DEMAND_LR = 0.01
"""Adam's rate for the demand head (the shared layers keep the learner's)."""
DEVIANCE_FLOOR = 1e-6
"""Every forecast is at least this when its deviance is taken (the zero forecast's value)."""
TARGETS = ("purchases", "carts")
"""What is forecast, in column order."""
COUNTED = ("impression", "click", "cart", "purchase")
"""Event types counted per item (decayed), in column order."""
DEMAND_FEATURES = (*(f"log_{kind}_rate" for kind in COUNTED), "log_age", "young")
"""The count features ``x`` of an item, in column order."""
HOUR_MS = 3_600_000
FEATURE_SCALE = 0.25
"""The count features are ``log1p(rate per hour) * FEATURE_SCALE``."""
_RATE_WINDOW_H = 0.05
"""Added to a young item's decayed lifetime (hours) before dividing its counts by it."""
SHARE_BUCKET_MS = 60_000
"""Counts shared with the group are summed over buckets of this much event time."""
SHARE_BUCKETS = 120
"""Buckets held between two takes at most: beyond that the oldest is merged into the next."""
SHARE_PENDING = 200_000
"""Own counted events kept one by one at most; beyond that they are summed per bucket."""

SharedCounts = dict[str, list[Any]]
"""Columns ``bucket`` (ms), ``item``, ``kind`` (index into :data:`COUNTED`), ``n``."""


def deviances(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Per-forecast Poisson deviance, ``mu`` floored at :data:`DEVIANCE_FLOOR`.

    >>> deviances(np.array([0.0, 1.0]), np.array([0.0, 1.0])).round(6).tolist()
    [2e-06, 0.0]
    """
    mu = np.maximum(np.asarray(mu, dtype=np.float64), DEVIANCE_FLOOR)
    y = np.asarray(y, dtype=np.float64)
    ratio = np.where(y > 0, y / mu, 1.0)
    return 2.0 * (y * np.log(ratio) - (y - mu))


def poisson_deviance(y: np.ndarray, mu: np.ndarray) -> float:
    """Mean Poisson deviance of forecasts ``mu`` against counts ``y`` (NaN if none)."""
    return float(deviances(y, mu).mean()) if len(y) else math.nan


class TimeDecayed:
    """Per-row sums that halve every ``half_life_ms`` of event time.

    Lazy: values are kept as of a reference time, an increment at ``t``
    scaled up by ``2 ** ((t - ref) / half_life)`` and a read scaled down,
    so a step costs nothing per row; the reference moves up when the scale
    grows large.
    """

    def __init__(self, rows: int, columns: int, half_life_ms: float) -> None:
        self.values = np.zeros((rows, columns))
        self.rate = math.log(2.0) / half_life_ms  # per ms
        self.ref_ms = 0

    def _decay(self, at_ms: int) -> float:
        """What a value kept as of the reference time is worth at ``at_ms`` (at most 1e300 either
        way: no overflow across a gap of days)."""
        return math.exp(-max(min(self.rate * (at_ms - self.ref_ms), 690.0), -690.0))

    def add(self, rows: np.ndarray, increments: np.ndarray, at_ms: int | np.ndarray) -> None:
        """Add ``increments[i]`` to ``rows[i]`` at event time ``at_ms`` (one, or one per row)."""
        if self.ref_ms == 0 or self.rate * (np.max(at_ms) - self.ref_ms) > 30.0:
            self.values *= self._decay(int(np.max(at_ms))) if self.ref_ms else 0.0
            self.ref_ms = int(np.max(at_ms))
        scale = np.exp(self.rate * (np.asarray(at_ms, dtype=np.float64) - self.ref_ms))
        scaled = increments * (scale[:, None] if np.ndim(scale) else scale)
        np.add.at(self.values, rows, scaled)

    def get(self, rows: np.ndarray, at_ms: int) -> np.ndarray:
        """``(len(rows), columns)`` sums as of ``at_ms``."""
        return self.values[rows] * self._decay(at_ms)

    def clear(self, rows: np.ndarray) -> None:
        """Forget released rows."""
        self.values[rows] = 0.0


class DemandHead(nn.Module):
    """Log mean demand of a point's items: their expected total times each item's learned share.

    ``log mean_i = log_totals + log_softmax_i(MLP([v, x]) + W x)``, the
    softmax over the point's items (see the module docstring).

    >>> head = DemandHead(width=4)
    >>> x = torch.zeros(2, len(DEMAND_FEATURES))
    >>> head(torch.zeros(2, 4), x, torch.log(torch.tensor([3.0, 1.0]))).exp().tolist()
    [[1.5, 0.5], [1.5, 0.5]]
    """

    def __init__(self, width: int, hidden: int = 32) -> None:
        super().__init__()
        features, targets = len(DEMAND_FEATURES), len(TARGETS)
        self.hidden = nn.Sequential(nn.Linear(width + features, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, targets, bias=False)
        self.skip = nn.Linear(features, targets, bias=False)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():  # shares start as 1 + clicks per hour
            self.skip.weight.zero_()
            self.skip.weight[:, DEMAND_FEATURES.index("log_click_rate")] = 1.0 / FEATURE_SCALE

    def forward(
        self, item: torch.Tensor, features: torch.Tensor, log_totals: torch.Tensor
    ) -> torch.Tensor:
        """``(n, targets)`` log means of ``n`` items whose totals are ``exp(log_totals)``."""
        x = torch.cat([item, features], dim=1)
        scores = self.out(self.hidden(x)) + self.skip(features)
        return log_totals + torch.log_softmax(scores, dim=0)


@dataclass(frozen=True)
class DemandConfig:
    """How far ahead, how often, and how much (see the module docstring).

    A point queues the forecasts that changed by more than
    ``publish_change`` relative, or ``publish_floor`` absolute, since last
    published (largest change first; an item queued again keeps its place
    with its newest forecast); :meth:`DemandForecaster.take` hands out at
    most ``publish_per_round`` of them, oldest first (the worker: every
    second). Sent with the batch that made the point, a point's thousands
    of records held the event loop: the demo's p99 event-to-score latency
    went from 242 ms to 644 ms, 201 ms with 100 records a point;
    ``window_points`` is how many resolved points the rolling deviance covers;
    ``capacity`` the items tracked at once (least recently seen dropped
    first; default: the learner's item rows).
    """

    horizon_s: float = 3_600.0
    points_per_horizon: int = 4
    max_items: int = 8_192
    capacity: int | None = None
    publish_per_round: int = 200
    publish_change: float = 0.05
    publish_floor: float = 0.005
    passes: int = 8
    window_points: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.horizon_s) and self.horizon_s > 0):
            raise ValueError(
                f"the demand horizon must be a positive number of seconds, not {self.horizon_s}"
            )

    @property
    def horizon_ms(self) -> int:
        return int(self.horizon_s * 1000)

    @property
    def interval_ms(self) -> int:
        return max(1, self.horizon_ms // self.points_per_horizon)


@dataclass
class Resolved:
    """The forecasts of points resolved in one call, one row per item and point.

    ``actual`` and ``forecast`` are ``(n, targets)``; ``decayed_rate`` and
    ``category_mean`` the baselines' purchase forecasts made at the same
    time; ``young`` marks items less than a horizon old when forecast;
    ``position`` the stream position (events seen) of the point.
    """

    actual: np.ndarray = field(default_factory=lambda: np.zeros((0, len(TARGETS))))
    forecast: np.ndarray = field(default_factory=lambda: np.zeros((0, len(TARGETS))))
    decayed_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    category_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    young: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    position: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.actual)

    @classmethod
    def concat(cls, parts: Sequence[Resolved]) -> Resolved:
        """One :class:`Resolved` of many, in order."""
        if not parts:
            return cls()
        names = ("actual", "forecast", "decayed_rate", "category_mean", "young", "position")
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})


@dataclass
class Forecast:
    """One item's published forecast (the ``demand`` topic's record, docs/contracts.md)."""

    item_id: str
    horizon_s: float
    purchases: float
    carts: float
    model_version: int
    ts: int

    def to_record(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "horizon_s": self.horizon_s,
            "purchases": self.purchases,
            "carts": self.carts,
            "model_version": self.model_version,
            "ts": self.ts,
        }


@dataclass
class ForecastBatch:
    """Forecasts of one point, as columns: ``values`` is ``(n, targets)`` for ``item_ids``."""

    item_ids: np.ndarray
    values: np.ndarray
    horizon_s: float
    model_version: int
    ts: int

    def forecasts(self) -> list[Forecast]:
        count = len(self.item_ids)
        return _records(
            self.item_ids,
            self.values,
            self.horizon_s,
            np.full(count, self.model_version),
            np.full(count, self.ts),
        )


@dataclass
class DemandRound:
    """What one :meth:`DemandForecaster.observe` produced."""

    resolved: Resolved = field(default_factory=Resolved)
    queued: list[ForecastBatch] = field(default_factory=list)  # changed (:meth:`take`)

    @property
    def forecasts(self) -> list[Forecast]:
        """The forecasts that changed and were queued, as records."""
        return [forecast for batch in self.queued for forecast in batch.forecasts()]


class DemandForecaster:
    """Counts per item, demand points waiting for their labels, and the head's learning.

    Parameters
    ----------
    learner
        The multi-task learner whose net (item side and demand head),
        encoder (item and content rows) and optimiser demand uses.
    config
        See :class:`DemandConfig`.
    """

    def __init__(self, learner: MultiTaskLearner, config: DemandConfig | None = None) -> None:
        self.learner = learner
        self.config = config = config or DemandConfig()
        capacity = config.capacity or learner.config.capacities.item
        self.items = IdTable("demand", capacity)
        self.counts = TimeDecayed(capacity, len(COUNTED), config.horizon_ms)
        self.totals = np.zeros((capacity, len(TARGETS)))  # purchases and carts since the row began
        self.born_ms = np.zeros(capacity, np.int64)
        self.generation = np.zeros(capacity, np.int64)  # bumped when a row is released
        self.item_id = np.empty(capacity, dtype=object)
        self.category = np.empty(capacity, dtype=object)
        self.brand = np.empty(capacity, dtype=object)
        self.price = np.full(capacity, np.nan)
        self.known = np.zeros(capacity, bool)  # content known
        self.published = np.full((capacity, len(TARGETS)), np.nan)
        self.points: deque[dict[str, Any]] = deque()
        self.clock_ms = 0
        self.next_point_ms = 0
        self.position = 0
        self.window: deque[tuple[float, int]] = deque(maxlen=config.window_points)
        self.queue = ForecastQueue(capacity, len(TARGETS))  # changed, not taken yet
        self.shop = TimeDecayed(1, len(TARGETS), config.horizon_ms / 2)
        self.shop_born_ms = 0
        self.rng = np.random.default_rng(config.seed)
        self.leading = True  # makes points, learns, queues forecasts (:meth:`lead`)
        self.sharing = False  # keeps its own counts for :meth:`take_counts` (a group member)
        self._pending: list[np.ndarray] = []  # own counted events: bucket, row, kind
        self._pending_count = 0
        self._settled: list[tuple[np.ndarray, ...]] = []  # summed: bucket, item, kind, n

    # ---------------------------------------------------------------- several workers

    def lead(self, leading: bool) -> None:
        """Make points, learn and queue forecasts from the next point time on (``True``), or
        only count (``False``: the waiting points, the queue, the deviance window and what
        was published are dropped; another worker publishes meanwhile)."""
        if leading == self.leading:
            return
        self.leading = leading
        if not leading:
            self.points.clear()
            self.queue.clear()
            self.window.clear()
            self.published[:] = np.nan
        elif self.clock_ms:
            interval = self.config.interval_ms
            self.next_point_ms = self.clock_ms - self.clock_ms % interval + interval

    def take_counts(self) -> SharedCounts:
        """What this worker counted of its own events since the last take (while
        :attr:`sharing`), for its peers' :meth:`add_counts`: columns ``bucket`` (the middle
        of a bucket of event time, ms), ``item``, ``kind`` (index into :data:`COUNTED`) and
        ``n``; empty when nothing was counted."""
        self._settle_shared()
        if not self._settled:
            return {}
        columns = [np.concatenate(parts) for parts in zip(*self._settled, strict=True)]
        self._settled = []
        buckets, items, kinds, numbers = columns
        return {
            "bucket": (buckets * SHARE_BUCKET_MS + SHARE_BUCKET_MS // 2).tolist(),
            "item": items.tolist(),
            "kind": kinds.tolist(),
            "n": numbers.tolist(),
        }

    def add_counts(self, counts: SharedCounts) -> None:
        """Count a peer's events, as its :meth:`take_counts` gave them; items not tracked yet
        are inserted."""
        if not counts or not counts["n"]:
            return
        times = np.array(counts["bucket"], np.int64)
        order = np.argsort(times, kind="stable")  # an item is born at its earliest bucket
        times = times[order]
        rows = self._rows([counts["item"][i] for i in order.tolist()], times)
        repeats = np.array(counts["n"], np.int64)[order]
        kinds = np.array(counts["kind"], np.int64)[order]
        self._count(np.repeat(rows, repeats), np.repeat(kinds, repeats), np.repeat(times, repeats))

    def _share(self, rows: np.ndarray, kinds: np.ndarray, times: np.ndarray) -> None:
        """Keep counted events (their bucket, row and kind) for :meth:`take_counts`."""
        counted = kinds >= 0
        if not self.sharing or not counted.any():
            return
        self._pending.append(
            np.stack([times[counted] // SHARE_BUCKET_MS, rows[counted], kinds[counted]])
        )
        self._pending_count += int(counted.sum())
        if self._pending_count > SHARE_PENDING:
            self._settle_shared()

    def _settle_shared(self) -> None:
        """Sum the kept events per bucket, row and kind and name their items (before a row is
        released, so every count keeps its item); at most :data:`SHARE_BUCKETS` buckets, the
        older ones merged into the oldest kept (their counts move up in time, none is lost)."""
        if not self._pending:
            return
        buckets, rows, kinds = np.concatenate(self._pending, axis=1)
        self._pending, self._pending_count = [], 0
        first, width = int(buckets.min()), len(COUNTED)
        keys = ((buckets - first) * len(self.item_id) + rows) * width + kinds
        cells, numbers = np.unique(keys, return_counts=True)
        cells, kinds = np.divmod(cells, width)
        buckets, rows = np.divmod(cells, len(self.item_id))
        self._settled.append((buckets + first, self.item_id[rows], kinds, numbers))
        held = np.unique(np.concatenate([b for b, *_ in self._settled]))
        if len(held) > SHARE_BUCKETS:
            oldest_kept = held[-SHARE_BUCKETS]
            self._settled = [(np.maximum(b, oldest_kept), *rest) for b, *rest in self._settled]

    # ---------------------------------------------------------------- input

    def observe_catalog(
        self,
        item_id: str,
        category: str | None,
        brand: str | None,
        price: float | None,
        ts_ms: int | None = None,
    ) -> None:
        """An item's content (a catalog record): it is forecast from the next point on."""
        self.observe_catalog_batch([item_id], [category], [brand], [price], [ts_ms])

    def observe_catalog_batch(
        self,
        item_ids: Sequence[str],
        categories: Sequence[str | None],
        brands: Sequence[str | None],
        prices: Sequence[float | None],
        ts_ms: Sequence[int | None],
    ) -> None:
        """:meth:`observe_catalog` for a batch of records, in order, at once (item by item,
        its numpy calls cost 130 µs a record: 0.65 s for a 5,000-item catalog)."""
        if not item_ids:
            return
        times = np.array([self.clock_ms if t is None else max(int(t), 0) for t in ts_ms])
        self._describe(self._rows(item_ids, times), categories, brands, prices)

    def observe(self, events: Sequence[Event]) -> DemandRound:
        """Count ``events``; make and resolve the points their event time passes.

        Points are resolved (and learned) and made in event-time order
        between the events, so a point's label holds exactly the events of
        its horizon (up to the order of events within a batch).
        """
        out = DemandRound()
        if not events:
            return out
        times = np.fromiter((e.ts for e in events), np.int64, len(events))
        order = np.argsort(times, kind="stable")
        times = times[order]
        ordered = [events[i] for i in order.tolist()]
        rows = self._rows([e.item_id for e in ordered], times)
        described = [i for i, e in enumerate(ordered) if e.item is not None]
        if described:
            take = np.array(described)
            self._describe(
                rows[take],
                [ordered[i].item.category for i in described],
                [ordered[i].item.brand for i in described],
                [ordered[i].item.price for i in described],
                only_unknown=True,
            )
        kinds = np.fromiter(
            (COUNTED.index(e.type) if e.type in COUNTED else -1 for e in ordered), np.int64
        )
        self._share(rows, kinds, times)
        resolved: list[Resolved] = []
        done = 0
        while True:
            due = self._next_due()
            stop = len(times) if due is None else int(np.searchsorted(times, due, side="left"))
            if due is None or stop >= len(times):
                self._count(rows[done:], kinds[done:], times[done:])
                self.clock_ms = max(self.clock_ms, int(times[-1]))
                break
            self._count(rows[done:stop], kinds[done:stop], times[done:stop])
            done = stop
            self.clock_ms = max(self.clock_ms, int(due))
            if self.points and self.points[0]["due_ms"] <= due:
                resolved.append(self._resolve(self.points.popleft()))
                continue
            interval = self.config.interval_ms
            latest = int(times[stop]) - int(times[stop]) % interval
            if latest > due:  # a gap in event time: one point, at its end
                self.next_point_ms = latest
                continue
            out.queued.append(self._make_point(int(due), self.position + done))
        self.position += len(events)
        out.resolved = Resolved.concat(resolved)
        return out

    def _next_due(self) -> int | None:
        """The event time of the next resolution or point, or None if none is set (or this
        worker does not lead)."""
        if not self.leading or (self.clock_ms == 0 and self.next_point_ms == 0):
            return None
        candidates = [self.next_point_ms]
        if self.points:
            candidates.append(self.points[0]["due_ms"])
        return min(candidates)

    def _rows(self, item_ids: Sequence[str], times: np.ndarray | int) -> np.ndarray:
        """Rows of items (inserted), released rows cleared, new rows born at their time."""
        at = int(np.max(times))
        if self.clock_ms == 0:  # the first event time seen starts the point schedule
            self.clock_ms = at
            self.next_point_ms = at - at % self.config.interval_ms + self.config.interval_ms
        rows = self.items.rows(item_ids, at)
        released = self.items.take_released()
        if len(released):
            self._clear(released)
        fresh = np.flatnonzero(self.born_ms[rows] == 0)
        if len(fresh):  # times ascend: an item's first occurrence is its earliest
            new_rows, first = np.unique(rows[fresh], return_index=True)
            times = np.broadcast_to(np.asarray(times, dtype=np.int64), rows.shape)
            self.born_ms[new_rows] = np.maximum(times[fresh][first], 1)
            self.item_id[new_rows] = [item_ids[i] for i in fresh[first].tolist()]
        return rows

    def _clear(self, rows: np.ndarray) -> None:
        self._settle_shared()  # the kept counts of these rows name their items first
        self.counts.clear(rows)
        self.totals[rows] = 0.0
        self.born_ms[rows] = 0
        self.generation[rows] += 1
        self.item_id[rows] = None
        self.category[rows] = None
        self.brand[rows] = None
        self.price[rows] = np.nan
        self.known[rows] = False
        self.published[rows] = np.nan
        self.queue.drop(rows)

    def _describe(
        self,
        rows: np.ndarray,
        categories: Sequence[str | None],
        brands: Sequence[str | None],
        prices: Sequence[float | None],
        only_unknown: bool = False,
    ) -> None:
        keep = ~self.known[rows] if only_unknown else np.ones(len(rows), bool)
        if not keep.any():
            return
        for i in np.flatnonzero(keep).tolist():
            row = rows[i]
            self.category[row], self.brand[row] = categories[i], brands[i]
            self.price[row] = np.nan if prices[i] is None else prices[i]
            self.known[row] = True

    def _count(self, rows: np.ndarray, kinds: np.ndarray, times: np.ndarray) -> None:
        counted = kinds >= 0
        if not counted.any():
            return
        rows, kinds, times = rows[counted], kinds[counted], times[counted]
        self.counts.add(rows, np.eye(len(COUNTED))[kinds], times)
        self.shop_born_ms = self.shop_born_ms or int(times[0])
        sales = np.stack([kinds == COUNTED.index(k) for k in ("purchase", "cart")], axis=1)
        if sales.any():
            self.shop.add(np.zeros(len(rows), np.int64), sales.astype(np.float64), times)
        for column, kind in enumerate(("purchase", "cart")):
            target = kinds == COUNTED.index(kind)
            np.add.at(self.totals[:, column], rows[target], 1.0)

    # ---------------------------------------------------------------- points

    def _features(self, rows: np.ndarray, at_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, rates)``: the count features and the purchase, cart, ... rates per hour."""
        horizon_ms = self.config.horizon_ms
        tau_h = 1.0 / (self.counts.rate * HOUR_MS)
        age_h = np.maximum(at_ms - self.born_ms[rows], 0) / HOUR_MS
        lifetime_h = tau_h * -np.expm1(-age_h / tau_h)
        rates = self.counts.get(rows, at_ms) / (lifetime_h + _RATE_WINDOW_H)[:, None]
        young = (age_h * HOUR_MS < horizon_ms).astype(np.float64)
        x = np.column_stack([np.log1p(rates) * FEATURE_SCALE, np.log1p(age_h) / 2.0, young])
        return x.astype(np.float32), rates

    def _select(self) -> np.ndarray:
        """Rows to forecast: every known item, or the young ones and a sample of the others."""
        rows = np.flatnonzero(self.known)
        if len(rows) <= self.config.max_items:
            return rows
        young = self.clock_ms - self.born_ms[rows] < self.config.horizon_ms
        first = rows[young][: self.config.max_items]
        rest = rows[~young]
        take = self.config.max_items - len(first)
        sample = self.rng.choice(len(rest), size=take, replace=False) if take > 0 else []
        return np.sort(np.concatenate([first, rest[sample]]))

    def _make_point(self, at_ms: int, position: int) -> ForecastBatch:
        """Forecast the selected items at ``at_ms``, keep the point, hand out changed forecasts."""
        interval = self.config.interval_ms
        self.next_point_ms = max(self.next_point_ms + interval, at_ms - at_ms % interval + interval)
        rows = self._select()
        if len(rows) == 0:
            return self._changed(rows, np.zeros((0, len(TARGETS))), at_ms)
        x, rates = self._features(rows, at_ms)
        horizon_h = self.config.horizon_ms / HOUR_MS
        log_totals = self._log_totals(rows, rates, at_ms)
        items = self._item_side(rows)
        with torch.inference_mode():
            log_mean = self._log_mean(self._vectors(items), x, log_totals)
        forecast = np.exp(log_mean.numpy().astype(np.float64))
        decayed = rates[:, COUNTED.index("purchase")] * horizon_h
        point = {
            "at_ms": at_ms,
            "due_ms": at_ms + self.config.horizon_ms,
            "position": position,
            "rows": rows,
            "generation": self.generation[rows].copy(),
            "totals": self.totals[rows].copy(),
            "x": x,
            "log_totals": log_totals,
            "interactions": items["interactions"].numpy(),
            "forecast": forecast,
            "decayed_rate": decayed,
            "category_mean": _category_means(self.category[rows], decayed),
            "young": x[:, DEMAND_FEATURES.index("young")] > 0,
        }
        self.points.append(point)
        while len(self.points) > self.config.points_per_horizon + 1:
            self.points.popleft()
        return self._changed(rows, forecast, at_ms)

    def _log_totals(self, rows: np.ndarray, rates: np.ndarray, at_ms: int) -> np.ndarray:
        """``(targets,)`` log of the purchases and carts ``rows`` are expected to make in the
        next horizon: the shop's current rate (decayed over half a horizon) times the
        horizon times the rows' share of it (their decayed counts over every item's); at
        least 1e-3 per row."""
        columns = [COUNTED.index("purchase"), COUNTED.index("cart")]
        tau_h = 1.0 / (self.shop.rate * HOUR_MS)
        age_h = max(at_ms - self.shop_born_ms, 0) / HOUR_MS
        shop_rate = self.shop.get(np.zeros(1, np.int64), at_ms)[0] / (
            tau_h * -math.expm1(-age_h / tau_h) + 1e-9
        )
        known = np.flatnonzero(self.known)
        everyone = self.counts.get(known, at_ms)[:, columns].sum(axis=0)
        ours = self.counts.get(rows, at_ms)[:, columns].sum(axis=0)
        share = np.where(everyone > 0, ours / np.maximum(everyone, 1e-12), 1.0)
        totals = shop_rate * share * self.config.horizon_ms / HOUR_MS
        return np.log(np.maximum(totals, 1e-3 * len(rows))).astype(np.float32)

    def _item_side(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The item rows, content rows, log prices and gate counts of ``rows`` as the learner
        has them now (nothing is inserted: an item it has not learned is content alone)."""
        encoder = self.learner.encoder
        ids = list(self.item_id[rows])
        table = encoder.tables["item"]
        item_rows = table.rows(ids, table.now_ms, insert=False)
        prices = [None if math.isnan(p) else float(p) for p in self.price[rows].tolist()]
        content, log_prices, _ = encoder.content.rows(
            list(self.category[rows]), list(self.brand[rows]), prices, item_rows, 0, insert=False
        )
        return {
            "items": torch.from_numpy(item_rows),
            "content": torch.from_numpy(content),
            "log_price": torch.from_numpy(
                (np.nan_to_num(log_prices) / LOG_PRICE_SCALE).astype(np.float32)[:, None]
            ),
            "interactions": torch.from_numpy(table.interactions[item_rows].astype(np.float32)),
        }

    def _vectors(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        """The item vectors of :meth:`_item_side`'s rows, as the funnel learned them (the
        head reads them; it does not train them)."""
        with torch.no_grad():
            return self.learner.net.item_representation(**items)

    def _log_mean(
        self, vectors: torch.Tensor, x: np.ndarray, log_totals: np.ndarray
    ) -> torch.Tensor:
        """Log means of the items whose vectors are ``vectors``."""
        return self.learner.net.demand(vectors, torch.from_numpy(x), torch.from_numpy(log_totals))

    def _changed(self, rows: np.ndarray, forecast: np.ndarray, at_ms: int) -> ForecastBatch:
        """Forecasts that moved enough since last published (largest moves first), queued."""
        config = self.config
        last = self.published[rows]
        change = np.abs(forecast - last)
        moved = np.isnan(last) | (
            change > np.maximum(config.publish_change * np.nan_to_num(last), config.publish_floor)
        )
        moved = moved.any(axis=1)
        score = np.where(np.isnan(change), np.inf, change).max(axis=1)
        chosen = np.flatnonzero(moved)
        chosen = chosen[np.argsort(-score[chosen], kind="stable")]
        version = self.learner.model_version
        self.queue.put(rows[chosen], forecast[chosen], version, at_ms)
        return ForecastBatch(
            self.item_id[rows[chosen]], forecast[chosen], config.horizon_s, version, at_ms
        )

    def take(self, limit: int | None = None) -> list[Forecast]:
        """Up to ``limit`` (``publish_per_round``) queued forecasts to publish, oldest first;
        they count as published from now on (the queue is not checkpointed: after a restart
        the next point queues again whatever the restored state has not published)."""
        limit = self.config.publish_per_round if limit is None else limit
        rows, values, versions, at_ms = self.queue.take(limit)
        self.published[rows] = values
        return _records(self.item_id[rows], values, self.config.horizon_s, versions, at_ms)

    def _resolve(self, point: dict[str, Any]) -> Resolved:
        """The point's labels (what sold in its horizon), learned; its forecasts and baselines."""
        rows = point["rows"]
        valid = self.generation[rows] == point["generation"]
        actual = (self.totals[rows] - point["totals"])[valid]
        keep = {name: point[name][valid] for name in ("x", "forecast")}
        items = self._item_side(rows[valid])  # rows now: an item learned since has its own
        items["interactions"] = torch.from_numpy(point["interactions"][valid])  # gate: as then
        if valid.any():
            self._learn(self._vectors(items), keep["x"], point["log_totals"], actual)
            deviance = deviances(actual[:, 0], keep["forecast"][:, 0])
            self.window.append((float(deviance.sum()), len(deviance)))
        return Resolved(
            actual=actual,
            forecast=keep["forecast"],
            decayed_rate=point["decayed_rate"][valid],
            category_mean=point["category_mean"][valid],
            young=point["young"][valid],
            position=np.full(int(valid.sum()), point["position"], np.int64),
        )

    def _learn(
        self, vectors: torch.Tensor, x: np.ndarray, log_totals: np.ndarray, actual: np.ndarray
    ) -> None:
        """``passes`` Poisson steps of the head on the point's items, as one batch (the shares
        are a softmax over the point)."""
        learner = self.learner
        loss_fn = nn.PoissonNLLLoss(log_input=True, full=False, reduction="mean")
        targets = torch.from_numpy(actual.astype(np.float32))
        for _ in range(self.config.passes):
            loss = loss_fn(self._log_mean(vectors, x, log_totals), targets)
            learner.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            learner.optimiser.step()

    # ---------------------------------------------------------------- metrics and state

    def rolling_deviance(self) -> float:
        """Mean purchase deviance over the last ``window_points`` resolved points (NaN before)."""
        total = sum(s for s, _ in self.window)
        count = sum(n for _, n in self.window)
        return total / count if count else math.nan

    _PER_ROW = ("totals", "born_ms", "price", "known", "published")
    """Arrays with a row per item: a checkpoint keeps the rows in use only."""

    def state_dict(self) -> dict[str, Any]:
        """Counts, rows and waiting points as tensors, numbers, strings, lists and dicts (the
        per-item arrays of the rows in use only; ``generation`` whole, as int32)."""
        used = self.items.rows_in_use()
        return {
            "table": self.items.state_dict(),
            "rows": torch.from_numpy(used),
            "counts": torch.from_numpy(self.counts.values[used]),
            "counts_ref_ms": self.counts.ref_ms,
            "shop": torch.from_numpy(self.shop.values.copy()),
            "shop_ref_ms": self.shop.ref_ms,
            "shop_born_ms": self.shop_born_ms,
            **{name: torch.from_numpy(getattr(self, name)[used]) for name in self._PER_ROW},
            "generation": torch.from_numpy(self.generation.astype(np.int32)),
            "item_ids": list(self.item_id[used]),
            "categories": list(self.category[used]),
            "brands": list(self.brand[used]),
            "points": [_tensors(point) for point in self.points],
            "clock_ms": self.clock_ms,
            "next_point_ms": self.next_point_ms,
            "position": self.position,
            "window": [list(w) for w in self.window],
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.items.load_state_dict(state["table"])
        used = state["rows"].numpy()
        self.counts.values[:] = 0.0
        self.counts.values[used] = state["counts"].numpy()
        self.counts.ref_ms = int(state["counts_ref_ms"])
        self.shop.values = state["shop"].numpy().copy()
        self.shop.ref_ms = int(state["shop_ref_ms"])
        self.shop_born_ms = int(state["shop_born_ms"])
        for name in self._PER_ROW:
            array = getattr(self, name)
            array[:] = np.nan if name in ("price", "published") else 0
            array[used] = state[name].numpy()
        self.generation = state["generation"].numpy().astype(np.int64)
        for name, key in (("item_id", "item_ids"), ("category", "categories"), ("brand", "brands")):
            array = getattr(self, name)
            array[:] = None
            array[used] = np.array([*state[key], None], dtype=object)[:-1]
        self.points = deque(
            {k: v.numpy().copy() if isinstance(v, torch.Tensor) else v for k, v in saved.items()}
            for saved in state["points"]
        )
        self.clock_ms = int(state["clock_ms"])
        self.next_point_ms = int(state["next_point_ms"])
        self.position = int(state["position"])
        self.window = deque(
            ((float(s), int(n)) for s, n in state["window"]), maxlen=self.config.window_points
        )
        self.rng.bit_generator.state = state["rng"]


def _records(
    item_ids: np.ndarray,
    values: np.ndarray,
    horizon_s: float,
    versions: np.ndarray,
    at_ms: np.ndarray,
) -> list[Forecast]:
    """One :class:`Forecast` per item, from columns (``values``: purchases, carts)."""
    return [
        Forecast(item, horizon_s, purchases, carts, version, ts)
        for item, (purchases, carts), version, ts in zip(
            item_ids.tolist(), values.tolist(), versions.tolist(), at_ms.tolist(), strict=True
        )
    ]


def _tensors(values: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays as tensors (plain values for ``torch.load(weights_only=True)``)."""
    return {
        k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
        for k, v in values.items()
    }


def _category_means(categories: np.ndarray, forecasts: np.ndarray) -> np.ndarray:
    """Each item's category's mean of ``forecasts`` (the items without a category: all items').

    >>> categories = np.array(["a", "a", "b", None], dtype=object)
    >>> _category_means(categories, np.array([1.0, 3.0, 5.0, 7.0])).tolist()
    [2.0, 2.0, 5.0, 4.0]
    """
    names = np.array(["" if c is None else str(c) for c in categories])
    _, inverse = np.unique(names, return_inverse=True)
    sums = np.bincount(inverse, weights=forecasts)
    counts = np.bincount(inverse)
    means = sums[inverse] / counts[inverse]
    return np.where(names == "", forecasts.mean() if len(forecasts) else 0.0, means)
