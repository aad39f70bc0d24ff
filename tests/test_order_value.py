"""Order value: purchases become order samples, the value head learns them, lists use them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from online_models.base import Learner, Sample
from online_models.config import MultiTaskConfig
from online_models.learner import MultiTaskLearner
from online_models.order_value import ValueStats, order_samples
from producers.contract import Event, ItemContent
from streams.bench.value import ValueEvaluation
from streams.ranking import Ranker, RankingConfig

SMALL = MultiTaskConfig().with_capacity(1024)
LAMP, HOSE = ItemContent("home.lamp", "acme", 20.0), ItemContent("garden.hose", None, 20.0)


def purchase(n: int, user: str, item: str, content: ItemContent | None, quantity: int = 1):
    return Event(f"e{n}", 1_000 + n, "purchase", user, item, content, quantity=quantity)


def test_each_priced_purchase_is_an_order_of_value_price_times_quantity():
    events = [
        purchase(1, "u1", "i1", LAMP, quantity=3),
        purchase(2, "u1", "i2", None),  # content from the catalog
        purchase(3, "u2", "i3", None),  # no price known anywhere: no order
        Event("e4", 1_004, "click", "u1", "i1", LAMP),
    ]
    known = {"i2": ItemContent("home.lamp", None, 0.0)}  # a price of 0 is a price
    orders = order_samples(events, known.get)
    assert [(s.item_id, s.value) for s in orders] == [("i1", math.log1p(60.0)), ("i2", 0.0)]
    assert all(s.labels() == (None, None, None) for s in orders)


def test_a_users_quantity_leans_on_its_department_until_it_has_orders_of_its_own():
    stats = ValueStats(users=8, tops=8)
    stats.add(np.array([1] * 20), np.array([2] * 20), np.full(20, math.log(3.0)))  # 3 units
    stats.add(np.array([2] * 30), np.array([4] * 30), np.zeros(30))  # dept 4: single units
    stats.add(np.array([3] * 6), np.array([2] * 6), np.full(6, math.log(9.0)))  # user 3: more
    log_q, features = stats.features(np.array([5, 3, 5]), np.array([2, 2, 4]))
    fresh, heavy, elsewhere = log_q
    assert heavy > fresh > elsewhere >= 0
    assert fresh == pytest.approx(math.log(3.0), abs=0.01)
    assert features[0, 0] > 0 and features[2, 0] == pytest.approx(0.0)  # dept 4: the shop's
    assert features[1, 2] == pytest.approx(math.log1p(6.0), rel=0.01)


def test_a_department_is_expected_at_its_typical_quantity_not_its_mean():
    stats = ValueStats(users=64, tops=8)
    singles, bulk = np.zeros(60), np.full(40, math.log(20.0))  # mean log q 1.2: 3.3 units
    stats.add(np.arange(100) % 50 + 1, np.full(100, 2), np.r_[singles, bulk])
    log_q, _ = stats.features(np.array([60]), np.array([2]))
    assert log_q[0] == pytest.approx(0.0, abs=0.05)  # most orders are of one unit


def test_a_user_carries_its_volume_not_its_earlier_departments_bulk_to_the_next():
    stats = ValueStats(users=8, tops=8)
    bulk, pairs, single = math.log(8.0), math.log(2.0), 0.0
    for _ in range(100):  # dept 2 sells 8 units an order, dept 4 two, dept 5 one
        stats.add(np.array([0, 0, 0]), np.array([2, 4, 5]), np.array([bulk, pairs, single]))
    stats.add(np.array([1] * 4), np.array([2] * 4), np.full(4, bulk))  # as all in dept 2
    stats.add(np.array([3] * 4), np.array([2] * 4), np.full(4, math.log(22.0)))  # 3 x the extra
    log_q, features = stats.features(np.array([1, 3, 6, 3]), np.array([4, 4, 4, 5]))
    typical, heavy, fresh, heavy_single = log_q
    assert typical == pytest.approx(fresh, abs=0.1) and fresh == pytest.approx(pairs, abs=0.05)
    assert heavy > fresh + 0.3 and features[1, 1] > 0.5  # about 1 + 2.2 extra units
    assert heavy_single == pytest.approx(0.0, abs=0.05)  # one unit is one unit


def test_the_learner_learns_what_orders_of_a_department_and_a_user_are_worth():
    learner = MultiTaskLearner(SMALL)
    rng = np.random.default_rng(0)
    orders = []
    for n in range(400):
        user = f"u{n % 40}"
        lamp = n % 2 == 0
        quantity = 6 if lamp else 1
        if user == "u8":  # a lamp buyer who buys three times the extra units
            quantity = 1 + 3 * (quantity - 1)
        content = LAMP if lamp else HOSE
        orders += order_samples(
            [purchase(n, user, f"i{rng.integers(50)}", content, quantity)], dict().get
        )
    for start in range(0, len(orders), 50):
        learner.learn(orders[start : start + 50])
    assert learner.model_version > 0
    ask = [
        Sample("u99", "i1", 9_999, *_content(LAMP)),
        Sample("u99", "i2", 9_999, *_content(HOSE)),
        Sample("u8", "i3", 9_999, *_content(LAMP)),
        Sample("u99", "i4", 9_999, "home.lamp", None, 1.0),  # a cheap lamp
    ]
    lamp, hose, heavy, cheap_lamp = learner.predict_values(ask)
    assert lamp > hose + 1.0  # a lamp order is about 6 units of 20, a hose order one
    assert heavy > lamp + 0.5  # u8 buys 16 lamps an order
    assert abs(hose - math.log1p(20.0)) < 0.5
    assert abs(cheap_lamp - math.log1p(6.0)) < 0.25  # 6 units of 1, not 6 of 20 scaled down


def _content(content: ItemContent):
    return content.category, content.brand, content.price


class Fixed(Learner):
    """Predictions and order values by item."""

    model_version = 3

    def __init__(self, funnel, values):
        self.funnel, self.values = funnel, values

    def predict(self, samples, remembered=None):
        return np.array([self.funnel[s.item_id] for s in samples])

    def predict_block_with_values(self, block):
        probabilities = self.predict_block(block)
        return probabilities, np.array([self.values[block.item_ids[i]] for i in block.pair_item])


def test_records_carry_expected_values_and_revenue_ranks_by_them_not_by_price():
    learner = Fixed(
        {"cheap": [0.5, 0.2, 0.1], "dear": [0.5, 0.2, 0.1]}, {"cheap": 200.0, "dear": 30.0}
    )
    candidates = {
        "u1": [("cheap", ItemContent("a", None, 10.0)), ("dear", ItemContent("a", None, 30.0))]
    }
    ranker = Ranker(RankingConfig(objective="revenue", top_k=2, cold_slots=0))
    record = ranker.rank(learner, candidates, {"u1": 1}, 2)[0]
    items = record["items"]
    assert [e["item_id"] for e in items] == ["cheap", "dear"]  # 20 units of 10 beat one of 30
    assert [e["expected_value"] for e in items] == [200.0, 30.0]
    assert items[0]["score"] == pytest.approx(0.1 * 200.0)


def test_the_value_section_judges_each_order_before_it_is_learned():
    class Constant:
        def predict_values(self, samples):
            return np.full(len(samples), 2.0)

    value = ValueEvaluation(from_event=10)
    early = Sample("u1", "i1", 1, category="a", price=5.0, value=1.0)
    later = [
        Sample("u2", "i1", 2, category="a", price=5.0, value=3.0),
        Sample("u3", "i9", 3, category="a", price=5.0, value=4.0),
    ]
    value.before_step(Constant(), SimpleNamespace(position=5, learn=[early]))
    value.before_step(Constant(), SimpleNamespace(position=12, learn=later))
    report = value.report()
    assert report["orders"] == 2  # the first half's order only teaches the means
    assert report["mtl_mae_log1p"] == pytest.approx((1.0 + 2.0) / 2)
    # i1's earlier order (1.0); i9 has none: its category's mean, of the order before (1.0)
    assert report["item_mean_mae_log1p"] == pytest.approx((2.0 + 3.0) / 2)


def test_statistics_of_an_older_checkpoint_start_again():
    older = {  # residuals over prices: a count and a sum per row
        name: {"values": torch.ones(rows, 2), "scale": 1.0}
        for name, rows in (("users", 8), ("tops", 8), ("shop", 1))
    }
    stats = ValueStats(users=8, tops=8)
    stats.load_state_dict(older)
    log_q, features = stats.features(np.array([1]), np.array([2]))
    assert log_q[0] == 0.0 and features[0, 2] == 0.0  # no orders known
    stats.add(np.array([1]), np.array([2]), np.array([math.log(4.0)]))
    restored = ValueStats(users=8, tops=8)
    restored.load_state_dict(stats.state_dict())
    assert restored.features(np.array([1]), np.array([2]))[0][0] > 0
