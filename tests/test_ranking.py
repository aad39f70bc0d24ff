"""Ranking: candidate blocks scored as their samples would be, and each user's top-K kept."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.base import CandidateBlock, Learner, Sample
from online_models.catalog import Catalog
from online_models.config import MultiTaskConfig
from online_models.learner import id_only, mtl, single_task
from producers.contract import CatalogItem, Event, ItemContent
from streams.candidates import CandidateConfig, CandidatePool, Popularity
from streams.ranking import Ranker, RankingConfig, candidate_block

SMALL = MultiTaskConfig().with_capacity(1024)
CONTENTS = [ItemContent("home.lamp", "acme", 20.0), ItemContent("garden.hose", None, None)]


def trained(factory):
    """A learner that has learned a few clicks, so users have histories and items counts."""
    learner = factory(SMALL)
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            f"u{rng.integers(5)}",
            f"i{n % 12}",
            ts=1_000 + n,
            category=CONTENTS[n % 2].category,
            brand=CONTENTS[n % 2].brand,
            price=CONTENTS[n % 2].price,
            click=float(rng.random() < 0.4),
        )
        for n in range(300)
    ]
    for start in range(0, len(samples), 50):
        learner.learn(samples[start : start + 50])
    return learner


def block_of(users: list[str], items_per_user: int) -> CandidateBlock:
    candidates = {
        user: [(f"i{(3 * u + k) % 15}", CONTENTS[k % 2]) for k in range(items_per_user)]
        for u, user in enumerate(users)
    }
    return candidate_block(users, candidates, {user: 2_000 + n for n, user in enumerate(users)})


@pytest.mark.parametrize("factory", [mtl, single_task, id_only])
def test_a_block_scores_as_its_samples_do(factory):
    learner = trained(factory)
    block = block_of(["u0", "u1", "u3", "never-seen"], items_per_user=9)
    assert len(set(block.item_ids)) < len(block)  # items shared between users
    together = learner.predict_block(block)
    one_by_one = learner.predict(block.samples())
    np.testing.assert_allclose(together, one_by_one, rtol=1e-6, atol=1e-9)


def test_a_learner_without_block_scoring_is_asked_for_the_samples():
    seen = []

    class Plain(Learner):
        def predict(self, samples, remembered=None):
            seen.extend((s.user_id, s.item_id, s.ts, s.category) for s in samples)
            return np.full((len(samples), 3), 0.1)

    block = block_of(["a", "b"], items_per_user=2)
    assert Plain().predict_block(block).shape == (4, 3)
    assert seen == [
        ("a", "i0", 2_000, "home.lamp"),
        ("a", "i1", 2_000, "garden.hose"),
        ("b", "i3", 2_001, "home.lamp"),
        ("b", "i4", 2_001, "garden.hose"),
    ]


def reference_top_k(joint, cold, top_k, cold_slots):
    """Per user, as the contract says: the best cold items first take their places."""
    order = np.argsort(-joint, kind="stable")
    kept_cold = order[cold[order]][:cold_slots]
    rest = order[~np.isin(order, kept_cold)][: top_k - len(kept_cold)]
    chosen = np.concatenate([kept_cold, rest])
    return chosen[np.argsort(-joint[chosen], kind="stable")]


def test_every_user_gets_the_top_k_with_cold_places_and_ties_in_candidate_order():
    rng = np.random.default_rng(3)
    users = [f"u{n}" for n in range(6)]
    candidates = {
        user: [(f"i{k}", CONTENTS[0]) for k in rng.permutation(40)[: rng.integers(1, 30)]]
        for user in users
    }
    cold_items = {f"i{k}" for k in range(0, 40, 3)}
    scores = {f"i{k}": round(float(rng.random()), 1) for k in range(40)}  # many ties

    class Fixed(Learner):
        model_version = 4

        def predict(self, samples, remembered=None):
            return np.array([[scores[s.item_id], 0.0, 0.0] for s in samples])

        def is_cold(self, item_id):
            return item_id in cold_items

    config = RankingConfig(top_k=7, cold_slots=2, weights=(1.0, 0.0, 0.0))
    records = Ranker(config).rank(Fixed(), candidates, dict.fromkeys(users, 9), 10)
    assert [r["user_id"] for r in records] == users
    for record in records:
        offered = [item for item, _ in candidates[record["user_id"]]]
        joint = np.array([scores[item] for item in offered])
        cold = np.array([item in cold_items for item in offered])
        expected = [offered[i] for i in reference_top_k(joint, cold, 7, 2)]
        assert [entry["item_id"] for entry in record["items"]] == expected
        assert [entry["cold"] for entry in record["items"]] == [i in cold_items for i in expected]
        assert record["model_version"] == 4 and record["event_ts"] == 9


def test_the_value_weight_ranks_by_expected_order_value_beside_the_funnel():
    cheap, dear = ItemContent("home.lamp", None, 10.0), ItemContent("home.lamp", None, 100.0)
    candidates = {"u1": [("cheap", cheap), ("dear", dear)]}

    class Fixed(Learner):
        model_version = 1

        def predict(self, samples, remembered=None):  # cheap: likelier bought, less earned
            return np.array(
                [[0.5, 0.2, 0.1] if s.item_id == "cheap" else [0.4, 0.1, 0.03] for s in samples]
            )

    def ranked(**config):
        ranker = Ranker(RankingConfig(top_k=2, cold_slots=0, **config))
        record = ranker.rank(Fixed(), candidates, {"u1": 1}, 2)[0]
        return [(entry["item_id"], entry["score"]) for entry in record["items"]]

    assert [item for item, _ in ranked()] == ["cheap", "dear"]
    funnel_and_value = ranked(weights=(1.0, 0.0, 0.0), value_weight=1.0)
    assert [item for item, _ in funnel_and_value] == ["dear", "cheap"]
    assert funnel_and_value[0][1] == pytest.approx((0.4 + 0.03 * 100.0) / 2.0)
    assert ranked(weights=(0.0, 0.0, 0.0), value_weight=1.0) == ranked(objective="revenue")
    with pytest.raises(ValueError, match="not all 0"):
        RankingConfig(weights=(0.0, 0.0, 0.0))


def test_users_without_candidates_get_no_record():
    class Fixed(Learner):
        model_version = 0

        def predict(self, samples, remembered=None):
            return np.full((len(samples), 3), 0.1)

    ranker = Ranker(RankingConfig(top_k=2, cold_slots=0))
    records = ranker.rank(Fixed(), {"a": [], "b": [("i1", CONTENTS[0])]}, {"a": 1, "b": 1}, 2)
    assert [r["user_id"] for r in records] == ["b"]
    assert ranker.rank(Fixed(), {"a": []}, {"a": 1}, 2) == []


def test_popularity_keeps_the_best_overall_and_per_category_with_ties_in_arrival_order():
    popularity = Popularity()
    for n in range(3000):  # past the first arrays, and drops leave gaps to close
        popularity.add(f"i{n}", float(n % 10), f"c{n % 4}" if n % 5 else None)
    for n in range(0, 3000, 2):
        popularity.drop(f"i{n}")
    popularity.rescale(1.0, floor=2.5)  # 0, 1 and 2 go
    top, by_category = popularity.best(overall=3, per_category=2, limit=10_000)
    assert top == ["i9", "i19", "i29"]  # all 9.0: the first to come first
    assert by_category == {"c1": ["i9", "i29"], "c3": ["i19", "i39"]}
    scores = popularity.scores()
    assert list(scores)[:3] == ["i3", "i5", "i7"] and min(scores.values()) == 3.0


def test_candidate_pool_state_round_trips_to_the_same_candidates():
    config = CandidateConfig(popular=3, per_category=2, refresh_every=5)
    pool = CandidatePool(config, Catalog(max_items=40))
    for n in range(60):  # more items than the pool keeps: the oldest are forgotten
        pool.observe_catalog(CatalogItem(f"i{n}", 0, category=f"c{n % 3}"))
    kinds = ["click", "cart", "purchase"]
    events = [Event(f"e{n}", 0, kinds[n % 3], f"u{n % 4}", f"i{(7 * n) % 60}") for n in range(90)]
    pool.observe(events)
    assert len(pool.catalog) == 40
    restored = CandidatePool(pool.config, Catalog(max_items=40))
    restored.catalog.load_state_dict(pool.catalog.state_dict())  # its owner saves the catalog
    restored.load_state_dict(pool.state_dict())
    older = CandidatePool(pool.config, Catalog(max_items=40))  # a checkpoint from before
    older.load_state_dict({**pool.state_dict(), "content": pool.catalog.state_dict()})
    for user in ("u0", "u1", "u2", "u3", "nobody"):
        assert restored.candidates(user) == pool.candidates(user) == older.candidates(user)
    assert all(pool.content(item) is not None for item, _ in pool.candidates("u0"))


def test_a_pool_block_lists_each_users_candidates_in_the_sources_order_without_repeats():
    config = CandidateConfig(popular=3, per_category=2, recent_items=4, new_items=2)
    pool = CandidatePool(config)
    for n in range(30):
        pool.observe_catalog(CatalogItem(f"i{n}", 0, category=f"c{n % 3}"))
    kinds = ["click", "cart", "purchase"]
    pool.observe(
        [Event(f"e{n}", 0, kinds[n % 3], f"u{n % 4}", f"i{(7 * n) % 25}") for n in range(60)]
    )
    pool.observe_catalog(CatalogItem("i40", 0))  # newest, no category
    users = {"u0": 10, "u1": 11, "nobody": 12, "u3": 13}
    block = pool.block(users)
    assert block.user_ids == list(users) and block.times == list(users.values())
    pairs = list(zip(block.pair_user.tolist(), block.pair_item.tolist(), strict=True))
    top, by_category = pool._popularity.best(config.popular, config.per_category, len(pool.catalog))
    for u, user in enumerate(block.user_ids):
        recent = list(pool._user_items.get(user, ()))
        categories = list(dict.fromkeys(pool.content(i).category for i in reversed(recent)))
        expected = dict.fromkeys(recent)  # the sources, merged as the contract says
        for category in categories[: config.recent_categories]:
            expected.update(dict.fromkeys(by_category[category]))
        expected.update(dict.fromkeys([*top, *pool._newest]))
        offered = [block.item_ids[i] for owner, i in pairs if owner == u]
        assert offered == list(expected)
        assert offered == [item for item, _ in pool.candidates(user)]  # one user alone: the same
    contents = [pool.content(item) for item in block.item_ids]
    assert block.categories == [c.category for c in contents]
