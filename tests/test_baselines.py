"""The baselines speak the Learner protocol, stay funnel-consistent and learn what they claim."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from online_models.base import CandidateBlock, Learner, Sample, funnel_consistent
from online_models.baselines import (
    Popularity,
    PopularityConfig,
    RiverFunnelLR,
    RiverLRConfig,
    VWConfig,
    VWFunnel,
)
from online_models.evaluation import auc


def taste_stream(n: int, seed: int, item_effect: bool = False) -> list[Sample]:
    """Group 'a' users click books, group 'b' toys; with ``item_effect`` even items are better.

    Clicked books are often carted.
    """
    rng = random.Random(seed)
    out = []
    for t in range(n):
        user = f"{rng.choice('ab')}{rng.randrange(50)}"
        category = rng.choice(["books", "toys"])
        number = rng.randrange(40)
        likes = (user[0] == "a") == (category == "books")
        p = (0.6 if likes else 0.1) * (1.5 if item_effect and number % 2 else 0.5)
        click = float(rng.random() < p)
        cart = float(click > 0 and rng.random() < (0.7 if category == "books" else 0.2))
        out.append(
            Sample(
                user,
                f"{category}-{number}",
                t,
                category=category,
                brand="x",
                price=10.0,
                device="mobile",
                click=click,
                cart=cart,
                purchase=0.0,
            )
        )
    return out


def prequential_click_auc(model: Learner, samples: list[Sample]) -> float:
    scores = []
    for start in range(0, len(samples), 100):
        batch = samples[start : start + 100]
        scores.append(model.predict(batch)[:, 0])
        model.learn(batch)
    half = len(samples) // 2
    labels = np.array([s.click for s in samples])
    return auc(np.concatenate(scores)[half:], labels[half:])


def reloaded(model, fresh):
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def test_every_baseline_is_a_learner_with_funnel_consistent_predictions():
    samples = taste_stream(600, seed=1)
    for model in (RiverFunnelLR(), Popularity(), VWFunnel(VWConfig(bits=16))):
        assert isinstance(model, Learner)
        version = model.model_version
        model.learn(samples)
        assert model.model_version == version + 1, model.name
        p = model.predict(samples)
        assert p.shape == (600, 3) and funnel_consistent(p), model.name
        assert np.all((p > 0) & (p < 1)), model.name
        assert np.all(p[:, 2] < p[:, 0]), model.name  # entire-space, not conditional, purchases


def test_river_lr_learns_item_effects_but_not_user_item_interactions():
    assert prequential_click_auc(RiverFunnelLR(), taste_stream(4000, 2, item_effect=True)) > 0.6
    assert abs(prequential_click_auc(RiverFunnelLR(), taste_stream(4000, 2)) - 0.5) < 0.05


def test_popularity_cannot_personalise_but_ranks_items_by_their_rates():
    assert abs(prequential_click_auc(Popularity(), taste_stream(4000, 2)) - 0.5) < 0.05
    assert prequential_click_auc(Popularity(), taste_stream(4000, 2, item_effect=True)) > 0.6
    model = Popularity(PopularityConfig(prior_strength=1.0))
    hot = [Sample("u", "hot", 0, category="toys", click=1.0)] * 20
    cold = [Sample("u", "cold", 0, category="toys", click=0.0, cart=0.0, purchase=0.0)] * 20
    model.learn(hot + cold)
    p = model.predict([hot[0], cold[0], Sample("u", "new", 1, category="toys")])[:, 0]
    assert p[0] > 0.9 and p[1] < 0.1 and abs(p[2] - 0.5) < 0.05  # new: the category's rate


def test_popularity_forgets_with_its_half_life():
    model = Popularity(PopularityConfig(half_life_samples=100, prior_strength=1.0))
    model.learn([Sample("u", "old", 0, category="c", click=1.0)] * 50)
    before = model.predict([Sample("u", "old", 1, category="c")])[0, 0]
    model.learn([Sample("u", "other", 2, category="d", click=0.0)] * 1000)
    after = model.predict([Sample("u", "old", 3, category="c")])[0, 0]
    assert before > 0.95 and after < 0.9  # ten half-lives later, the prior weighs in again


def test_vw_learns_user_category_interactions_that_river_lr_cannot():
    model = VWFunnel(VWConfig(bits=18))
    probe = taste_stream(2000, 9)  # users and categories of the same taste, unseen samples
    labels = np.array([s.click for s in probe])
    before = auc(model.predict(probe)[:, 0], labels)
    assert prequential_click_auc(model, taste_stream(8000, 2)) > 0.56  # river_lr: 0.5 +- 0.05
    after = auc(model.predict(probe)[:, 0], labels)
    assert abs(before - 0.5) < 0.01 and after > 0.62, (before, after)  # the best is 0.77
    flat = VWFunnel(VWConfig(bits=18, interactions=()))  # without -q: river_lr's kind of model
    assert abs(prequential_click_auc(flat, taste_stream(8000, 2)) - 0.5) < 0.05


def test_vw_learns_no_unknown_label_and_honours_weights():
    model = VWFunnel(VWConfig(bits=16))
    probe = [Sample("u1", "i1", 0, category="c", brand="b", price=5.0)]
    start = model.predict(probe)[0]
    unknown = Sample("u1", "i1", 0, category="c", brand="b", price=5.0)
    model.learn([unknown] * 20)
    np.testing.assert_array_equal(model.predict(probe)[0], start)  # nothing known, nothing learned
    clicked = Sample("u1", "i1", 0, category="c", brand="b", price=5.0, click=1.0, cart=1.0)
    model.learn([clicked] * 20)  # purchase pending: p(purchase | cart) stays where it was
    p = model.predict(probe)[0]
    assert p[0] > start[0] + 0.2 and p[1] / p[0] > start[1] / start[0] + 0.2
    assert p[2] / p[1] == start[2] / start[1]
    light, heavy = VWFunnel(VWConfig(bits=16)), VWFunnel(VWConfig(bits=16))
    click = Sample("u1", "i1", 0, category="c", click=1.0)
    light.learn([click] * 3)
    heavy.learn([Sample("u1", "i1", 0, category="c", click=1.0, weight=4.0)] * 3)
    assert heavy.predict([click])[0, 0] > light.predict([click])[0, 0] + 0.01


def test_vw_scores_a_candidate_block_as_its_samples():
    model = VWFunnel(VWConfig(bits=16))
    block = CandidateBlock(
        ["a1", "b2 x"],
        [5, 6],
        ["books-1", "toys-2", "odd|item"],
        ["books", "toys", None],
        ["x", None, "y:z"],
        [10.0, None, 3.0],
        pair_user=np.array([0, 0, 1, 1, 1]),
        pair_item=np.array([0, 1, 0, 1, 2]),
    )
    for n, s in enumerate(block.samples()):  # no device, as a block's pairs
        s.click, s.cart, s.purchase = float(n % 2), float(n % 2), 0.0
        model.learn([s] * (n + 1))
    np.testing.assert_array_equal(model.predict_block(block), model.predict(block.samples()))


def test_a_pending_cart_is_not_taken_for_a_missing_cart():
    for model in (RiverFunnelLR(), Popularity(), VWFunnel(VWConfig(bits=16))):
        probe = Sample("u1", "i1", 0, category="c")
        start = model.predict([probe])[0]
        clicks = [Sample("u1", "i1", 0, category="c", click=1.0)] * 30  # carts still pending
        unclicked = [Sample("u1", "i1", 0, category="c", click=0.0, cart=0.0, purchase=0.0)] * 5
        model.learn(clicks + unclicked)
        p = model.predict([probe])[0]
        assert abs(p[1] / p[0] - start[1] / start[0]) < 1e-9, type(model).__name__
        model.learn([Sample("u1", "i1", 0, category="c", cart=1.0)] * 30)  # carts of those clicks
        p2 = model.predict([probe])[0]
        assert p2[1] / p2[0] > p[1] / p[0] + 0.1, type(model).__name__


def test_state_survives_a_weights_only_round_trip():
    samples = taste_stream(500, seed=3)
    for model, fresh in (
        (
            RiverFunnelLR(RiverLRConfig(buckets=1 << 12)),
            RiverFunnelLR(RiverLRConfig(buckets=1 << 12)),
        ),
        (Popularity(), Popularity()),
        (VWFunnel(VWConfig(bits=16)), VWFunnel(VWConfig(bits=16))),
    ):
        model.learn(samples)
        twin = reloaded(model, fresh)
        np.testing.assert_array_equal(twin.predict(samples), model.predict(samples))
        model.learn(samples[:50])
        twin.learn(samples[:50])
        np.testing.assert_array_equal(twin.predict(samples), model.predict(samples))


def test_popularity_remembers_a_bounded_number_of_items():
    model = Popularity(PopularityConfig(max_items=10))
    model.learn([Sample("u", f"i{n}", n, category="c", click=1.0) for n in range(100)])
    assert len(model.state_dict()["items"]) == 10
