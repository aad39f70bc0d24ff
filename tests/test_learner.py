"""The multi-task learner: funnel-consistent scores, learning, masks, cold start, state."""

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from online_models.base import TASKS, Learner, Sample, funnel_consistent
from online_models.config import MultiTaskConfig
from online_models.labels import TrackedSample
from online_models.learner import (
    MultiTaskLearner,
    id_only,
    mtl,
    single_task,
)
from online_models.net import LOSS_SAMPLES
from online_models.synthetic import ToyShop
from streams.bench.learner import benchmark

SMALL = MultiTaskConfig().with_capacity(4096)


def auc(labels, scores) -> float:
    """Rank-sum AUC (ties count half)."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    positives, negatives = labels.sum(), (~labels).sum()
    return (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def prequential(learner, samples, batch=512) -> np.ndarray:
    """Score each micro-batch, then learn it; return the scores."""
    scores = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        scores.append(learner.predict(chunk))
        learner.learn(chunk)
    return np.concatenate(scores)


def labels_of(samples) -> np.ndarray:
    return np.array([s.labels() for s in samples], dtype=float)


def test_auc_helper_is_a_rank_statistic():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1], [0.5, 0.5]) == 0.5


def test_the_learners_speak_the_protocol_under_their_names():
    for learner, name in ((mtl(SMALL), "mtl"), (single_task(SMALL), "single_task")):
        assert isinstance(learner, Learner) and learner.name == name
    assert id_only(SMALL).name == "id_only" and not id_only(SMALL).config.use_content


@pytest.mark.parametrize("architecture", ["shared_bottom", "mmoe", "ple"])
def test_every_architecture_learns_the_toy_shop(architecture):
    samples, truth = ToyShop(seed=1, users=300, items=400).stream(16_000)
    learner = MultiTaskLearner(replace(SMALL, architecture=architecture))
    scores = prequential(learner, samples)
    assert funnel_consistent(scores) and np.all((scores > 0) & (scores < 1))
    labels, tail = labels_of(samples), slice(8_000, None)
    click_auc = auc(labels[tail, 0], scores[tail, 0])
    oracle_auc = auc(labels[tail, 0], truth[tail, 0])
    assert click_auc > 0.5 + 0.5 * (oracle_auc - 0.5), (click_auc, oracle_auc)
    assert auc(labels[tail, 2], scores[tail, 2]) > 0.6


def test_scores_are_funnel_consistent_and_inside_zero_one_even_when_extreme():
    learner = MultiTaskLearner(SMALL)
    heads = learner.net.heads
    with torch.no_grad():
        heads.bias[0] = 40.0  # p_click saturates
        heads.bias[1] = -40.0  # p_cart vanishes
    samples, _ = ToyShop(seed=2).stream(64)
    scores = learner.predict(samples)
    assert funnel_consistent(scores, tolerance=0.0)
    assert np.all((scores > 0) & (scores < 1))
    assert learner.predict([]).shape == (0, len(TASKS))


def test_unknown_labels_are_not_learned():
    learner = MultiTaskLearner(SMALL)
    samples, _ = ToyShop(seed=3).stream(256)
    unlabelled = [replace(s, click=None, cart=None, purchase=None) for s in samples]
    before = learner.predict(samples)
    learner.learn(unlabelled)
    assert learner.model_version == 0 and np.array_equal(learner.predict(samples), before)

    heads = learner.net.heads
    conversion_heads = [heads.weight[1:].clone(), heads.bias[1:].clone()]
    click_bias = heads.bias[0].item()
    learner.learn([replace(s, cart=None, purchase=None) for s in samples])  # clicks only
    assert learner.model_version == 1
    after = [heads.weight[1:], heads.bias[1:]]
    assert all(torch.equal(a, b) for a, b in zip(conversion_heads, after, strict=True))
    assert heads.bias[0].item() != click_bias


def test_a_large_batch_is_learned_in_steps_of_at_most_max_batch_size():
    learner = MultiTaskLearner(replace(SMALL, max_batch_size=100))
    samples, _ = ToyShop(seed=4).stream(250)
    learner.learn(samples)
    assert learner.model_version == 3


def test_an_unseen_item_is_scored_from_its_content():
    samples, _ = ToyShop(seed=5, users=200, items=300).stream(12_000)
    content = MultiTaskLearner(SMALL)
    ids = id_only(SMALL)
    for learner in (content, ids):
        prequential(learner, samples)
    user = samples[-1].user_id
    cheap_toy = Sample(user, "never-seen-1", ts=samples[-1].ts + 1, category="c1.s1", price=5.0)
    pricey_other = replace(cheap_toy, item_id="never-seen-2", category="c6.s3", price=900.0)
    scores = content.predict([cheap_toy, pricey_other])
    assert not np.allclose(scores[0], scores[1], rtol=1e-3)
    assert content.is_cold("never-seen-1") and content.item_interactions("never-seen-1") == 0
    id_scores = ids.predict([cheap_toy, pricey_other])
    # Without content they look the same (up to float noise between rows of one batch).
    assert np.allclose(id_scores[0], id_scores[1], rtol=1e-6, atol=1e-9)


def test_cold_start_bookkeeping_counts_clicks_carts_and_purchases():
    learner = MultiTaskLearner(replace(SMALL, cold_threshold=3))
    hot = [Sample("u1", "hot", ts=t, category="a.b", click=1.0) for t in range(3)]
    rare = [Sample("u2", "rare", ts=t, category="a.c", click=0.0) for t in range(5)]
    converted = Sample("u2", "rare", ts=9, category="a.c", click=1.0, cart=1.0, purchase=0.0)
    learner.learn([*hot, *rare, converted])
    assert learner.item_interactions("hot") == 3 and not learner.is_cold("hot")
    assert learner.item_interactions("rare") == 2 and learner.is_cold("rare")
    assert learner.is_cold("hot", threshold=4) and learner.is_cold("never-seen")
    assert learner.cold_item_count() == 1
    stats = learner.table_stats()
    assert stats["item"] == 2 and stats["user"] == 2 and stats["token"] == 3


def test_tables_stay_at_their_cap_on_a_stream_of_new_ids():
    learner = MultiTaskLearner(SMALL.with_capacity(300))
    for step in range(20):
        learner.learn(
            [
                Sample(f"u{step}-{k}", f"i{step}-{k}", ts=step, category="a.b", click=0.0)
                for k in range(100)
            ]
        )
    stats = learner.table_stats()
    assert stats["item"] <= 299 and stats["user"] <= 299
    assert np.all(np.isfinite(learner.predict([Sample("u", "i", ts=30, category="a.b")])))


def evicting_stream(seed: int) -> list[TrackedSample]:
    """A keyed stream with delayed labels and more ids than a tiny table holds."""
    samples, _ = ToyShop(seed=seed, users=400, items=600).stream(3_000)
    return [
        TrackedSample(**{f: getattr(s, f) for f in s.__slots__}, key=k)
        for k, s in enumerate(samples)
    ]


@pytest.mark.parametrize("factory", [mtl, single_task, id_only])
def test_a_restored_learner_scores_and_keeps_learning_exactly_alike(factory, tmp_path):
    config = replace(SMALL.with_capacity(256), id_ttl_ms=50_000, expiry_every=2)
    stream = evicting_stream(seed=6)
    original = factory(config)
    for start in range(0, 1_500, 300):  # score, then learn click first, conversions later
        chunk = stream[start : start + 300]
        original.remember(chunk)
        original.learn([replace(s, cart=None, purchase=None) for s in chunk])
        original.learn([replace(s, click=None) for s in chunk])
    path = tmp_path / "learner.pt"
    torch.save(original.state_dict(), path)
    restored = factory(MultiTaskConfig().with_capacity(64))  # rebuilt from the saved config
    restored.load_state_dict(torch.load(path, weights_only=True))
    probe = stream[1_500:1_800]
    assert np.array_equal(restored.predict(probe), original.predict(probe))
    for start in range(1_500, 3_000, 300):
        chunk = stream[start : start + 300]
        for learner in (original, restored):
            learner.remember(chunk)
            learner.learn(chunk)
    assert np.array_equal(restored.predict(probe), original.predict(probe))
    assert restored.model_version == original.model_version


def test_a_restored_optimiser_state_is_kept_until_the_optimiser_is_made(tmp_path):
    stream = evicting_stream(seed=6)[:600]
    original = mtl(SMALL.with_capacity(256))
    original.learn(stream)
    restored = mtl(SMALL.with_capacity(256))
    restored.load_state_dict(original.state_dict())
    assert restored._optimiser is None  # made on first use (its first import is slow)
    saved, expected = (x.state_dict()["optimizer"]["state"] for x in (restored, original))
    assert saved.keys() == expected.keys() and len(saved) > 0
    assert all(torch.equal(saved[k]["exp_avg_sq"], expected[k]["exp_avg_sq"]) for k in saved)


def test_single_task_nets_each_learn_only_their_own_task():
    learner = single_task(SMALL)
    samples, _ = ToyShop(seed=7).stream(512)
    learner.learn([replace(s, cart=None, purchase=None) for s in samples])
    click_net, cart_net, _ = learner.learners
    assert click_net.model_version == cart_net.model_version >= 1
    untouched = MultiTaskLearner(cart_net.config)
    heads = zip(cart_net.net.heads.parameters(), untouched.net.heads.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in heads)  # the cart net saw no cart label
    assert funnel_consistent(learner.predict(samples), tolerance=0.0)


def test_benchmark_times_its_own_run():
    learner = MultiTaskLearner(SMALL)
    outer = time.perf_counter()
    report = benchmark(learner, samples=2_048, batch_size=512)
    outer = time.perf_counter() - outer
    assert report["samples"] == 2_048 and 0 < report["seconds"] <= outer
    assert report["samples_per_second"] == report["samples"] / report["seconds"]


def test_uncertainty_weighting_learns_and_its_weights_move_and_round_trip(tmp_path):
    """Kendall et al. 2018: ``sum_t w_t (exp(-s_t) L_t + s_t)`` with learned log-variances ``s_t``.

    Each ``s_t`` moves towards ``log L_t``; every task loss here is below 1, so
    every ``s_t`` falls below 0 and its task's weight ``exp(-s_t)`` rises above 1.
    """
    config = replace(SMALL, task_weighting="uncertainty")
    samples, truth = ToyShop(seed=1, users=300, items=400).stream(12_000)
    truth = truth[:8_000]
    learner = MultiTaskLearner(config)
    assert torch.equal(learner.net.task_log_variance.detach(), torch.zeros(len(TASKS)))
    scores = prequential(learner, samples[:8_000])
    s = learner.net.task_log_variance.detach().clone()
    assert torch.all(s < 0) and len(set(s.tolist())) == len(TASKS), s
    labels, tail = labels_of(samples[:8_000]), slice(4_000, None)
    click_auc = auc(labels[tail, 0], scores[tail, 0])
    oracle_auc = auc(labels[tail, 0], truth[tail, 0])
    assert click_auc > 0.5 + 0.5 * (oracle_auc - 0.5), (click_auc, oracle_auc)

    path = tmp_path / "learner.pt"
    torch.save(learner.state_dict(), path)
    restored = MultiTaskLearner(SMALL)  # fixed weighting: rebuilt from the saved config
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.config.task_weighting == "uncertainty"
    assert torch.equal(restored.net.task_log_variance, learner.net.task_log_variance)
    later = samples[8_000:]
    assert np.array_equal(prequential(restored, later), prequential(learner, later))
    assert torch.equal(restored.net.task_log_variance, learner.net.task_log_variance)
    assert not torch.equal(learner.net.task_log_variance.detach(), s)  # still learning


def test_fixed_weighting_never_moves_the_log_variances():
    learner = MultiTaskLearner(replace(SMALL, task_weights=(1.0, 0.5, 2.0)))
    prequential(learner, ToyShop(seed=2).stream(2_048)[0])
    assert learner.model_version == 4
    assert torch.equal(learner.net.task_log_variance.detach(), torch.zeros(len(TASKS)))


def test_configs_of_older_checkpoints_load_and_removed_options_are_refused():
    saved = SMALL.to_dict()
    assert MultiTaskConfig.from_dict(saved) == SMALL
    older = {**saved, "rate_features": True, "conditional_loss_weight": 0.0}  # their only values
    assert MultiTaskConfig.from_dict(older) == SMALL
    moved = {**saved, "provisional_negative_ms": [1_000, 30_000, 30_000]}  # the label stage's now
    assert MultiTaskConfig.from_dict(moved) == SMALL
    for name, value in (("rate_features", False), ("conditional_loss_weight", 0.5)):
        with pytest.raises(ValueError, match=f"{name}={value!r}, an option since removed"):
            MultiTaskConfig.from_dict({**saved, name: value})
    with pytest.raises(ValueError, match="unknown MultiTaskConfig options"):
        MultiTaskConfig.from_dict({**saved, "no_such_option": 1})


def equal_states(a, b) -> bool:
    """Two state dicts hold the same values (tensors and arrays compared exactly)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal_states(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(equal_states(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    return a == b or (a != a and b != b)  # NaN equals NaN here


def learner_factories():
    from online_models.baselines import Popularity, RiverFunnelLR

    return {
        "mtl": lambda: mtl(SMALL),
        "single_task": lambda: single_task(SMALL),
        "id_only": lambda: id_only(SMALL),
        "river_lr": RiverFunnelLR,
        "popularity": Popularity,
    }


@pytest.mark.parametrize("name", ["mtl", "single_task", "id_only", "river_lr", "popularity"])
def test_predict_changes_nothing(name):
    learner = learner_factories()[name]()
    stream = evicting_stream(seed=4)
    learner.remember(stream[:500])
    learner.learn(stream[:500])
    probe = stream[500:800]
    before = learner.state_dict()
    first = learner.predict(probe)
    assert np.array_equal(learner.predict(probe), first)
    assert equal_states(learner.state_dict(), before)


@pytest.mark.parametrize("factory", [mtl, single_task])
def test_a_learner_that_never_predicted_learns_as_one_that_did(factory):
    stream = evicting_stream(seed=5)
    scoring, silent = factory(SMALL), factory(SMALL)
    for start in range(0, 1_200, 300):
        shown = [
            replace(s, click=None, cart=None, purchase=None) for s in stream[start : start + 300]
        ]
        silent.remember(shown)  # the scoring-time snapshots, taken alike by both
        scoring.predict(shown, scoring.remember(shown))
        scoring.predict(shown)
        for learner in (scoring, silent):
            learner.learn(stream[start : start + 300])
    assert equal_states(scoring.state_dict(), silent.state_dict())


def test_a_step_on_few_samples_moves_the_dense_weights_by_its_share_of_a_full_step():
    """Adam's first step moves every weight with a gradient by about its learning rate,
    however small the batch: a step on 8 samples takes 8/1024 of it."""
    config = MultiTaskConfig().with_capacity(4096)
    moved = {}
    for size in (8, 2048):
        learner = MultiTaskLearner(config)
        before = [p.detach().clone() for p in learner.optimiser.param_groups[0]["params"]]
        samples = [
            Sample(
                f"u{n % 50}",
                f"i{n % 300}",
                ts=n,
                category="a.b",
                price=5.0 + n % 7,
                click=float(n % 3 == 0),
                cart=0.0,
                purchase=0.0,
            )
            for n in range(size)
        ]
        learner.learn(samples)
        after = learner.optimiser.param_groups[0]["params"]
        steps = [(a.detach() - b).abs().max() for a, b in zip(after, before, strict=True)]
        moved[size] = float(max(steps))
    assert moved[2048] > 0.5 * config.dense_lr
    assert 0 < moved[8] < 1.1 * config.dense_lr * 8 / LOSS_SAMPLES
