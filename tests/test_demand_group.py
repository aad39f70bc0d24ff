"""Item demand with several workers: counts exchanged in updates, one leader forecasting."""

from __future__ import annotations

import random
import zlib

import numpy as np
import orjson
import pytest

from online_models.config import MultiTaskConfig
from online_models.demand import COUNTED, SHARE_BUCKETS, DemandConfig, DemandForecaster
from online_models.learner import mtl
from producers.contract import Event, ItemContent, encode_event
from streams.group import GroupMember
from streams.metrics import Metrics
from streams.pipeline import Pipeline, RawMessage
from streams.sync import Assembler, SyncState, Update

T0 = 1_700_000_000_000
S = 1_000
ITEMS = [f"i{k}" for k in range(8)]


def forecaster(horizon_s: float = 3_600.0) -> DemandForecaster:
    demand = DemandForecaster(
        mtl(MultiTaskConfig().with_capacity(256)), DemandConfig(horizon_s=horizon_s)
    )
    for item in ITEMS:
        demand.observe_catalog(item, "home.lamp", "acme", 20.0, T0)
    return demand


def stream(n: int, every_s: float, seed: int = 0) -> list[Event]:
    """``n`` events of 8 items and 6 users, one every ``every_s`` seconds of event time."""
    rng = random.Random(seed)
    content = ItemContent("home.lamp", "acme", 20.0)
    return [
        Event(
            f"e{k}",
            T0 + int(k * every_s * S),
            rng.choice([*COUNTED, "view"]),
            f"u{rng.randrange(6)}",
            rng.choice(ITEMS),
            content,
        )
        for k in range(n)
    ]


def by_item(demand: DemandForecaster, at_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Totals and decayed counts of :data:`ITEMS`, in that order."""
    rows = np.array([demand.items.row(item) for item in ITEMS])
    return demand.totals[rows], demand.counts.get(rows, at_ms)


def test_two_workers_exchanging_counts_count_what_one_worker_counts_alone():
    events = stream(3_000, every_s=3.0)  # two and a half hours
    whole, a, b = forecaster(), forecaster(), forecaster()
    a.sharing = b.sharing = True
    b.lead(False)
    for start in range(0, len(events), 50):
        batch = events[start : start + 50]
        whole.observe(batch)
        a.observe([e for e in batch if e.user_id < "u3"])
        b.observe([e for e in batch if e.user_id >= "u3"])
        a_counts, b_counts = a.take_counts(), b.take_counts()
        a.add_counts(b_counts)
        b.add_counts(orjson.loads(orjson.dumps(a_counts, option=orjson.OPT_NON_STR_KEYS)))
    end = events[-1].ts
    totals, decayed = by_item(whole, end)
    assert totals.sum() > 500
    for worker in (a, b):
        got_totals, got_decayed = by_item(worker, end)
        np.testing.assert_array_equal(got_totals, totals)  # every purchase and cart, once
        np.testing.assert_allclose(got_decayed, decayed, rtol=0.01)  # minute buckets, 1 h
        assert worker.shop.get(np.zeros(1, np.int64), end) == pytest.approx(
            whole.shop.get(np.zeros(1, np.int64), end), rel=0.01
        )
    assert a.points and not b.points  # only the leader makes points


def test_counts_kept_for_the_group_are_bounded_and_none_is_lost():
    demand = forecaster()
    demand.sharing = True
    events = stream(600, every_s=30.0)  # five hours: 300 minute buckets
    demand.observe(events)
    shared = demand.take_counts()
    assert len(set(shared["bucket"])) == SHARE_BUCKETS
    counted = sum(e.type in COUNTED for e in events)
    assert sum(shared["n"]) == counted
    assert demand.take_counts() == {}
    alone = forecaster()  # not in a group: keeps nothing
    alone.observe(events)
    assert alone.take_counts() == {}


def test_counts_kept_for_the_group_name_their_items_after_the_rows_are_reused():
    demand = DemandForecaster(mtl(MultiTaskConfig().with_capacity(256)), DemandConfig(capacity=4))
    demand.sharing = True
    content = ItemContent("home.lamp", "acme", 20.0)
    carts = [Event(f"c{k}", T0 + k * S, "cart", "u1", f"i{k}", content) for k in range(12)]
    for cart in carts:  # 12 items through 4 rows: every row is released twice
        demand.observe([cart])
    shared = demand.take_counts()
    assert sorted(zip(shared["item"], shared["n"], strict=True)) == sorted(
        (f"i{k}", 1) for k in range(12)
    )


def test_a_worker_that_does_not_lead_counts_but_makes_no_points_and_queues_nothing():
    demand = forecaster(horizon_s=100.0)  # points every 25 s
    demand.lead(False)
    events = stream(200, every_s=2.0)  # four horizons
    out = demand.observe(events)
    assert len(out.resolved) == 0 and out.forecasts == [] and not demand.points
    assert demand.take() == []
    assert demand.totals.sum() == sum(e.type in ("purchase", "cart") for e in events)

    demand.lead(True)  # from the next point time on
    clock = demand.clock_ms
    out = demand.observe([_later(events[-1], 10 * S)])
    assert [p["at_ms"] for p in demand.points] == [clock - clock % (25 * S) + 25 * S]
    assert out.forecasts and demand.take()

    demand.observe([_later(events[-1], 40 * S)])
    demand.lead(False)  # its waiting points and queue go
    assert not demand.points and not len(demand.queue) and np.isnan(demand.published).all()


def _later(event: Event, by_ms: int) -> Event:
    return Event("late", event.ts + by_ms, "purchase", event.user_id, ITEMS[0], event.item)


def test_an_update_carries_demand_counts_and_one_without_them_still_decodes():
    counts = {
        "bucket": [T0 + 30 * S, T0 + 90 * S],
        "item": ["i1", "i2"],
        "kind": [0, 2],
        "n": [3, 2],
    }
    update = Update("w", 4, 9, b"model", {0: {"offset": 3}}, demand=counts)
    assembler = Assembler()
    results = [assembler.add(chunk) for chunk in update.to_chunks(max_bytes=40)]
    assert results[-1] == update and results[-1].demand == counts

    meta = zlib.compress(orjson.dumps({"partitions": {}, "users": {}}))  # an older sender's
    body = len(meta).to_bytes(8, "big") + meta + b"model"
    old = Update.from_body({"worker": "w", "seq": 1, "ts": 9}, body)
    assert old.demand == {} and old.counters == {} and old.model == b"model"


def _member(partitions: list[int]) -> GroupMember:
    learner = mtl(MultiTaskConfig(user_rows=1024, item_rows=1024))
    member = GroupMember(Pipeline(learner, demand=DemandConfig()), Metrics(), None, {})
    member.assigned(partitions)
    return member


def _carted(member: GroupMember) -> float:
    demand = member.pipeline.demand
    return float(demand.totals[demand.items.row("i1"), 1])


def test_a_member_adds_a_peers_demand_counts_once_and_never_its_own():
    a, b = _member([0]), _member([1])
    assert a.pipeline.demand.leading and not b.pipeline.demand.leading
    carts = [Event(f"c{k}", T0 + k * S, "cart", "u1", "i1") for k in range(5)]
    a.pipeline.process_events(
        [RawMessage(0, k, b"u1", encode_event(e)) for k, e in enumerate(carts)], now_ms=T0
    )
    assert _carted(a) == 5.0
    pending = a.take_update()
    assert pending.update.demand  # its own counts, taken
    sync = [RawMessage(0, k, None, c) for k, c in enumerate(pending.chunks())]
    assert b.sync_batch(sync) == 1 and _carted(b) == 5.0
    assert a.sync_batch(sync) == 0 and _carted(a) == 5.0  # its own, back: held already
    replayed = _member([1])  # restored from a checkpoint taken after that update
    replayed.state = SyncState.from_state({**b.state.state_dict(), "position": 0})
    replayed.pipeline.demand.load_state_dict(b.pipeline.demand.state_dict())
    assert replayed.sync_batch(sync) == 0 and _carted(replayed) == 5.0

    a.assigned([1])  # a rebalance moves partition 0
    b.assigned([0])
    assert b.pipeline.demand.leading and not a.pipeline.demand.leading
