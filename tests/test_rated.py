"""The rated candidate source: the catalog scored in turn for a user the model knows nothing
about, its best kept, and what the worker's pool and checkpoints make of it."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.base import CandidateBlock, Learner
from online_models.catalog import Catalog
from producers.contract import CatalogItem, Event
from producers.simulator import Drift, Shop, ShopConfig
from streams.candidates import CandidatePool
from streams.ranking import Ranker
from streams.rated import ANONYMOUS, RatedItems
from tests.test_pipeline import NOW, catalog, messages, pipeline


class ByPrice(Learner):
    """Rates an item by its price; remembers every block it was asked about."""

    name, model_version = "by_price", 1

    def __init__(self) -> None:
        self.asked: list[CandidateBlock] = []

    def predict_block_with_values(self, block: CandidateBlock):
        self.asked.append(block)
        p = np.array(block.prices)[block.pair_item] / 1_000
        return np.stack([p, p / 2, p / 4], axis=1), None


def priced(count: int) -> Catalog:
    shop = Catalog()
    for n in range(count):
        shop.describe(CatalogItem(f"i{n}", NOW, category="home.lamp", price=float(n)))
    return shop


def test_the_whole_catalog_is_scored_once_per_cycle_of_funnel_events_spread_over_batches():
    shop, learner = priced(100), ByPrice()
    rated = RatedItems(size=3, cycle_events=10, min_scan=1)
    rated.advance(5, learner, Ranker(), shop, NOW)  # half a cycle: half the catalog
    assert [b.user_ids for b in learner.asked] == [[ANONYMOUS]]
    assert learner.asked[0].item_ids == [f"i{n}" for n in range(50)]
    assert rated.best == ["i49", "i48", "i47"]
    rated.advance(5, learner, Ranker(), shop, NOW)
    assert learner.asked[1].item_ids == [f"i{n}" for n in range(50, 100)]
    assert rated.best == ["i99", "i98", "i97"]
    rated.advance(1, learner, Ranker(), shop, NOW)  # the next cycle starts from the top
    assert learner.asked[2].item_ids == [f"i{n}" for n in range(10)]


def test_a_batch_scores_at_most_max_scan_items_and_owes_at_most_that_many():
    shop, learner = priced(100), ByPrice()
    rated = RatedItems(size=3, cycle_events=1, min_scan=1, max_scan=8)
    assert rated.advance(50, learner, Ranker(), shop, NOW)  # 5,000 items due: 8 scored
    assert rated.advance(0, learner, Ranker(), shop, NOW)  # 8 more owed at most
    assert not rated.advance(0, learner, Ranker(), shop, NOW)
    assert [len(b.item_ids) for b in learner.asked] == [8, 8]


def test_a_slice_waits_until_min_scan_items_are_due_or_the_whole_catalog():
    shop, learner = priced(100), ByPrice()
    rated = RatedItems(size=3, cycle_events=100, min_scan=40)
    for _ in range(39):
        rated.advance(1, learner, Ranker(), shop, NOW)  # one item due each time
    assert learner.asked == []
    rated.advance(1, learner, Ranker(), shop, NOW)
    assert len(learner.asked[0].item_ids) == 40
    small = RatedItems(size=3, cycle_events=100, min_scan=40)
    small.advance(100, learner, Ranker(), priced(10), NOW)  # the whole catalog is fewer
    assert len(learner.asked[1].item_ids) == 10


def test_an_item_no_longer_offered_leaves_the_best_and_a_rescored_one_keeps_its_new_score():
    shop, learner = priced(10), ByPrice()
    rated = RatedItems(size=2, cycle_events=1)
    rated.advance(1, learner, Ranker(), shop, NOW)
    assert rated.best == ["i9", "i8"]
    shop.describe(CatalogItem("i9", NOW, category="home.lamp", price=9.0, available=False))
    shop.describe(CatalogItem("i8", NOW, category="home.lamp", price=0.5))  # now the cheapest
    shop.remove("i7")
    rated.advance(1, learner, Ranker(), shop, NOW)
    assert rated.best == ["i6", "i5"]
    assert "i9" not in learner.asked[1].item_ids  # withdrawn items are not scored


def test_the_scan_state_survives_a_round_trip():
    shop, learner = priced(20), ByPrice()
    rated = RatedItems(size=2, cycle_events=4, min_scan=1)
    rated.advance(1, learner, Ranker(), shop, NOW)
    again = RatedItems(size=2, cycle_events=4, min_scan=1)
    again.load_state_dict(rated.state_dict())
    assert again.best == rated.best == ["i4", "i3"]
    again.advance(1, learner, Ranker(), shop, NOW)
    assert learner.asked[-1].item_ids == [f"i{n}" for n in range(5, 10)]


def test_the_pool_offers_the_rated_items_to_every_user_and_never_a_withdrawn_one():
    pool = CandidatePool()
    for n in range(3):
        pool.observe_catalog(CatalogItem(f"i{n}", NOW, category="home.lamp"))
    pool.observe([Event("e1", NOW, "click", "u1", "i0")])
    pool.rated = ["i2", "i1"]
    assert {item for item, _ in pool.candidates("u2")} >= {"i1", "i2"}
    pool.observe_catalog(CatalogItem("i2", NOW, category="home.lamp", available=False))
    assert "i2" not in {item for item, _ in pool.candidates("u2")}


def test_the_worker_rates_its_catalog_as_batches_come_and_checkpoints_what_it_found():
    pipe = pipeline()
    catalog(pipe)
    views = [Event(f"e{n}", NOW + n, "click", "u1", f"i{n % 30}") for n in range(500)]
    pipe.process_events(messages(views[:50]), now_ms=NOW)  # 3 of 30 items due: they wait
    assert pipe.pool.rated == []
    pipe.process_events(messages(views[50:], start=50), now_ms=NOW)
    assert sorted(pipe.pool.rated) == sorted(pipe.catalog.item_ids())  # all 30 scored
    assert set(pipe.pool.rated) <= {item for item, _ in pipe.pool.candidates("u9")}
    restored = pipeline()
    restored.load_state_dict(pipe.state_dict(), dict(pipe.offsets))
    assert restored.pool.rated == pipe.pool.rated
    older = {k: v for k, v in pipe.state_dict().items() if k != "rated"}
    fresh = pipeline()
    fresh.load_state_dict(older, dict(pipe.offsets))  # a checkpoint from before the source
    assert fresh.pool.rated == []


@pytest.mark.parametrize("kind", ["taste_shift", "category_surge"])
def test_a_shop_snapshot_keeps_the_truth_of_its_time_through_a_drift(kind):
    shop = Shop(ShopConfig(events=400, users=50, drifts=(Drift(200, kind),)))
    records = shop.records()
    for _ in range(shop.config.initial_items + 100):
        next(records)
    users, items = [f"u{n}" for n in range(50)], [f"i{n}" for n in range(50)]
    before, snapshot = shop.truth_many(users, items), shop.snapshot()
    later = shop.snapshot(snapshot)  # no drift since: the same state, the arrays lent
    for _ in records:
        pass
    assert shop.drift_points == [200]
    assert not np.allclose(shop.truth_many(users, items), before)
    np.testing.assert_array_equal(snapshot.truth_many(users, items), before)
    np.testing.assert_array_equal(later.truth_many(users, items), before)
