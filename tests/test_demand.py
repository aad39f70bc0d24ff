"""Item demand: the delayed labels of demand points, the deviance and the baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from online_models.config import MultiTaskConfig
from online_models.demand import (
    DEVIANCE_FLOOR,
    DemandConfig,
    DemandForecaster,
    TimeDecayed,
    _category_means,
    deviances,
    poisson_deviance,
)
from online_models.learner import mtl
from producers.contract import Event, ItemContent

T0 = 1_700_000_000_000
S = 1_000


def forecaster(horizon_s: float = 100.0, **config) -> DemandForecaster:
    learner = mtl(MultiTaskConfig().with_capacity(256))
    return DemandForecaster(learner, DemandConfig(horizon_s=horizon_s, **config))


def event(n: int, ts: int, kind: str, item: str) -> Event:
    return Event(f"e{n}", ts, kind, f"u{n % 3}", item, ItemContent("home.lamp", "acme", 20.0))


def test_deviance_is_zero_for_the_truth_and_finite_for_the_zero_forecast():
    y = np.array([0.0, 1.0, 3.0])
    assert poisson_deviance(y, y + (y == 0) * DEVIANCE_FLOOR) == pytest.approx(0.0, abs=1e-5)
    zero = deviances(y, np.zeros(3))
    assert np.isfinite(zero).all()
    assert zero[1] == pytest.approx(2 * (math.log(1 / DEVIANCE_FLOOR) - 1 + DEVIANCE_FLOOR))
    assert zero[0] == pytest.approx(2 * DEVIANCE_FLOOR)
    # the y = 0 term is 2 mu; otherwise 2 (y log(y / mu) - (y - mu))
    assert deviances(np.array([0.0, 2.0]), np.array([0.5, 1.0])).tolist() == pytest.approx(
        [1.0, 2 * (2 * math.log(2) - 1)]
    )


def test_time_decayed_counts_halve_every_half_life_of_event_time():
    counts = TimeDecayed(rows=4, columns=2, half_life_ms=10 * S)
    counts.add(np.array([1, 1, 2]), np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 4.0]]), T0)
    counts.add(np.array([2]), np.array([[0.0, 4.0]]), T0 + 10 * S)
    got = counts.get(np.array([1, 2, 3]), T0 + 10 * S)
    np.testing.assert_allclose(got, [[1.0, 0.5], [0.0, 6.0], [0.0, 0.0]])
    counts.add(np.array([3]), np.array([[1.0, 0.0]]), T0 + 10_000 * S)  # rebased, still exact
    np.testing.assert_allclose(counts.get(np.array([3]), T0 + 10_010 * S), [[0.5, 0.0]])


def test_category_mean_is_the_mean_of_the_items_of_the_same_category():
    categories = np.array(["a", "b", "a", "a"], dtype=object)
    means = _category_means(categories, np.array([0.0, 2.0, 3.0, 6.0]))
    assert means.tolist() == [3.0, 2.0, 3.0, 3.0]


def test_a_point_resolves_one_horizon_later_with_what_sold_in_it():
    demand = forecaster(horizon_s=100.0)  # points every 25 s
    demand.observe_catalog("i1", "home.lamp", "acme", 20.0, T0)
    demand.observe_catalog("i2", "toys", None, None, T0)
    # the first point is at the next multiple of 25 s after T0
    first = T0 - T0 % (25 * S) + 25 * S
    sold = [
        event(0, first - S, "purchase", "i1"),  # before the point: not its label
        event(1, first, "purchase", "i1"),
        event(2, first + 50 * S, "cart", "i2"),
        event(3, first + 99 * S, "purchase", "i1"),
        event(4, first + 100 * S, "purchase", "i1"),  # at the end of the horizon: not in it
    ]
    out = demand.observe(sold[:1])
    assert len(out.resolved) == 0
    out = demand.observe(sold[1:])
    points = out.resolved
    assert len(points) == 2  # the point at `first`, both items
    assert points.actual.tolist() == [[2.0, 0.0], [0.0, 1.0]]  # i1: 2 purchases; i2: a cart
    assert np.all(points.forecast > 0)
    assert demand.rolling_deviance() == pytest.approx(
        poisson_deviance(points.actual[:, 0], points.forecast[:, 0])
    )


def test_a_new_item_is_forecast_from_its_content_at_the_next_point():
    demand = forecaster(horizon_s=100.0)
    demand.observe_catalog("old", "home.lamp", "acme", 20.0, T0)
    first = T0 - T0 % (25 * S) + 25 * S
    demand.observe([event(0, first - 2 * S, "click", "old")])
    demand.observe_catalog("new", "toys.lego", "blox", 30.0, first - S)
    out = demand.observe([event(1, first, "impression", "old")])
    forecasts = {f.item_id: f for f in out.forecasts}
    assert set(forecasts) == {"old", "new"}
    new = forecasts["new"]
    assert new.horizon_s == 100.0 and new.ts == first and new.purchases > 0 and new.carts > 0
    young = demand.points[-1]["young"]
    assert young.tolist() == [True, True]  # both less than a horizon old


def test_waiting_points_are_bounded_and_a_gap_in_event_time_makes_one_point():
    demand = forecaster(horizon_s=100.0, points_per_horizon=4)
    demand.observe_catalog("i1", "home.lamp", "acme", 20.0, T0)
    for k in range(40):  # every 10 s for 400 s
        demand.observe([event(k, T0 + k * 10 * S, "click", "i1")])
        assert len(demand.points) <= 5
    made = len(demand.points)
    demand.observe([event(99, T0 + 10_000 * S, "click", "i1")])  # hours later
    assert len(demand.points) == 1  # the old ones resolved, one new point
    assert made >= 4


def test_unchanged_forecasts_are_not_published_again():
    demand = forecaster(horizon_s=100.0)
    demand.observe_catalog("i1", "home.lamp", "acme", 20.0, T0)
    first = T0 - T0 % (25 * S) + 25 * S
    queued = []
    for k in range(3):
        queued.append(
            len(demand.observe([event(k, first + k * 25 * S, "impression", "i1")]).forecasts)
        )
        if k == 0:
            assert [f.item_id for f in demand.take()] == ["i1"] and demand.take() == []
    assert queued == [1, 0, 0]  # not again once taken


def test_queued_forecasts_are_taken_a_bounded_number_at_a_time_oldest_first():
    demand = forecaster(horizon_s=100.0, publish_per_round=2)
    for name in ("a", "b", "c"):
        demand.observe_catalog(name, "home.lamp", "acme", 20.0, T0)
    first = T0 - T0 % (25 * S) + 25 * S
    assert len(demand.observe([event(0, first, "impression", "a")]).forecasts) == 3
    rounds = [demand.take(), demand.take(), demand.take()]
    assert [len(r) for r in rounds] == [2, 1, 0]
    assert {f.item_id for r in rounds for f in r} == {"a", "b", "c"}


def test_learning_from_resolved_points_moves_forecasts_towards_what_sold():
    torch.manual_seed(0)
    demand = forecaster(horizon_s=100.0)
    for name in ("hot", "cold"):
        demand.observe_catalog(name, "home.lamp", "acme", 20.0, T0)
    start = T0 - T0 % (25 * S) + 25 * S
    for n, second in enumerate(range(0, 3_000, 5)):  # "hot" sells every 5 s, "cold" never
        demand.observe([event(n, start + second * S, "purchase", "hot")])
    hot, cold = demand.points[-1]["forecast"][:, 0]
    assert hot / cold > 20
    assert hot == pytest.approx(20.0, rel=0.3)  # 100 s / 5 s


def test_learning_demand_moves_its_head_and_leaves_the_funnels_scores_as_they_were():
    from online_models.base import Sample

    demand = forecaster(horizon_s=100.0)
    learner = demand.learner
    learner.learn(  # the funnel has learned something first
        [
            Sample(f"u{n % 5}", f"i{n % 7}", T0, "home.lamp", "acme", 20.0, click=float(n % 2))
            for n in range(200)
        ]
    )
    probe = [Sample("u1", "i3", T0 + 1, "home.lamp", "acme", 20.0)]
    before = learner.predict(probe)
    head = [p.detach().clone() for p in learner.net.demand.parameters()]
    start = T0 - T0 % (25 * S) + 25 * S
    for n, second in enumerate(range(0, 600, 5)):  # i4 sells, i3 is only clicked
        demand.observe(
            [event(n, start + second * S, "purchase" if n % 2 else "click", f"i{3 + n % 2}")]
        )
    assert len(demand.window) > 0  # points were resolved and learned
    moved = [
        not torch.equal(a, b) for a, b in zip(head, learner.net.demand.parameters(), strict=True)
    ]
    assert any(moved)
    assert np.array_equal(learner.predict(probe), before)


def test_state_round_trip_resolves_the_same():
    demand = forecaster(horizon_s=100.0)
    demand.observe_catalog("i1", "home.lamp", "acme", 20.0, T0)
    events = [event(k, T0 + k * 7 * S, "purchase" if k % 3 else "click", "i1") for k in range(30)]
    demand.observe(events[:20])
    state = demand.state_dict()
    restored = DemandForecaster(demand.learner, demand.config)
    restored.load_state_dict(state)
    a = demand.observe(events[20:]).resolved
    demand.learner.load_state_dict(demand.learner.state_dict())
    b = restored.observe(events[20:]).resolved
    assert a.actual.tolist() == b.actual.tolist()
    assert a.decayed_rate.tolist() == pytest.approx(b.decayed_rate.tolist())


def test_the_pipeline_returns_demand_records_and_keeps_demand_across_a_checkpoint():
    from producers.contract import CatalogItem, encode_catalog_item, encode_event
    from streams.pipeline import Pipeline, RawMessage

    def pipeline() -> Pipeline:
        learner = mtl(MultiTaskConfig().with_capacity(256))
        return Pipeline(learner, demand=DemandConfig(horizon_s=100.0))

    first = pipeline()
    item = CatalogItem("i1", T0, "home.lamp", "acme", 20.0)
    first.process_catalog([RawMessage(0, 0, b"i1", encode_catalog_item(item))], "items", T0)
    events = [event(k, T0 + k * 10 * S, "purchase", "i1") for k in range(30)]
    messages = [RawMessage(0, k, b"u", encode_event(e)) for k, e in enumerate(events)]
    records = []
    for k in range(15):
        first.process_events(messages[k : k + 1], now_ms=T0)
        records += first.take_demand()
    assert records and all(r["item_id"] == "i1" and r["horizon_s"] == 100.0 for r in records)
    assert math.isfinite(first.demand.rolling_deviance())  # a point was resolved
    second = pipeline()
    second.load_state_dict(first.state_dict(), first.offsets)
    rest_first, rest_second = [], []
    for message in messages[15:]:
        first.process_events([message], now_ms=T0)
        rest_first.append(first.take_demand())
        second.process_events([message], now_ms=T0)
        rest_second.append(second.take_demand())
    assert rest_first == rest_second and any(rest_first)
