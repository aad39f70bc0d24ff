"""Drift: a model that goes wrong is flagged fast, a steady or improving one is left alone."""

from __future__ import annotations

import json

import numpy as np

from online_models.drift import (
    ConceptDriftMonitor,
    FeatureDriftMonitor,
    category_bins,
    normalised_entropy,
)
from producers.contract import Event, ItemContent

CHUNK = 250


def run(monitor, rng, labels_total, make, tasks=("click",)):
    """Feed chunks of labels; ``make(position) -> (truth, predictions_of(truth, labels))``."""
    for position in range(0, labels_total, CHUNK):
        truth, predict = make(position)
        labels = (rng.random(CHUNK) < truth).astype(float)
        for task in tasks:
            monitor.update(task, predict(truth, labels), labels, position)
    return monitor.detections


def steady(position):
    return np.random.default_rng(position).uniform(0.02, 0.4, CHUNK), lambda q, y: q


def test_a_model_that_loses_its_grip_is_flagged_within_a_thousand_labels():
    def make(position):
        truth = np.random.default_rng(position).uniform(0.02, 0.4, CHUNK)
        if position < 60_000:
            return truth, lambda q, y: q
        return truth, lambda q, y: np.random.default_rng(position + 1).permutation(q)

    found = run(ConceptDriftMonitor(), np.random.default_rng(1), 80_000, make)
    assert len(found) == 1
    assert found[0]["task"] == "click" and 60_000 <= found[0]["event"] < 61_000


def test_a_steady_model_raises_nothing():
    assert run(ConceptDriftMonitor(), np.random.default_rng(2), 150_000, steady) == []


def test_a_model_that_keeps_improving_raises_nothing():
    def make(position):
        truth = np.random.default_rng(position).uniform(0.02, 0.4, CHUNK)
        sharpness = min(1.0, position / 100_000)  # predictions move from the mean to the truth
        return truth, lambda q, y: sharpness * q + (1 - sharpness) * 0.21

    assert run(ConceptDriftMonitor(), np.random.default_rng(3), 150_000, make) == []


def test_a_rising_click_rate_alone_is_not_drift():
    def make(position):
        scale = 1.0 + position / 100_000  # the shop's click rate doubles, the model keeps up
        truth = scale * np.random.default_rng(position).uniform(0.01, 0.2, CHUNK)
        return truth, lambda q, y: q

    assert run(ConceptDriftMonitor(), np.random.default_rng(4), 100_000, make) == []


def test_one_change_on_every_task_is_reported_once():
    def make(position):
        truth = np.random.default_rng(position).uniform(0.02, 0.4, CHUNK)
        if position < 60_000:
            return truth, lambda q, y: q
        return truth, lambda q, y: 1.0 - q

    found = run(
        ConceptDriftMonitor(),
        np.random.default_rng(5),
        70_000,
        make,
        tasks=("click", "cart", "purchase"),
    )
    assert len(found) == 1 and found[0]["event"] >= 60_000


def test_a_restored_monitor_raises_what_the_original_would_have():
    def make(position):
        truth = np.random.default_rng(position).uniform(0.02, 0.4, CHUNK)
        if position < 60_000:
            return truth, lambda q, y: q
        return truth, lambda q, y: np.random.default_rng(position + 1).permutation(q)

    whole = run(ConceptDriftMonitor(), np.random.default_rng(6), 80_000, make)
    first = ConceptDriftMonitor()
    rng = np.random.default_rng(6)
    for position in range(0, 40_000, CHUNK):
        truth, predict = make(position)
        labels = (rng.random(CHUNK) < truth).astype(float)
        first.update("click", predict(truth, labels), labels, position)
    second = ConceptDriftMonitor()
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for position in range(40_000, 80_000, CHUNK):
        truth, predict = make(position)
        labels = (rng.random(CHUNK) < truth).astype(float)
        second.update("click", predict(truth, labels), labels, position)
    assert second.detections == whole != []


def test_normalised_entropy_is_one_for_predicting_the_base_rate():
    rate = 0.07
    base_rate_loss = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    assert abs(normalised_entropy(base_rate_loss, rate) - 1.0) < 1e-12


def events(n, categories, prices, kinds=("click",)):
    rng = np.random.default_rng(n)
    return [
        Event(
            f"e{i}",
            i,
            kinds[i % len(kinds)],
            "u",
            f"i{i}",
            item=ItemContent(rng.choice(categories), f"b{i % 3}", float(rng.choice(prices))),
        )
        for i in range(n)
    ]


def test_psi_is_small_for_the_same_mix_and_large_when_the_catalogue_shifts():
    monitor = FeatureDriftMonitor(window_events=1_000)
    monitor.observe(events(1_000, ["books", "toys"], [5.0, 50.0]))  # the reference window
    monitor.observe(events(1_000, ["books", "toys"], [5.0, 50.0]))
    assert max(monitor.latest.values()) < 0.02
    monitor.observe(events(1_000, ["garden", "shoes"], [500.0], kinds=("click", "cart")))
    psi = monitor.latest
    assert psi["category"] > 1 and psi["price_bucket"] > 1 and psi["event_type"] > 1
    assert psi["brand"] < 0.02
    monitor.rebase()  # after a drift: the next window is the new normal
    monitor.observe(events(2_000, ["garden", "shoes"], [500.0], kinds=("click", "cart")))
    assert max(monitor.latest.values()) < 0.02
    assert len(monitor.history) == 3


def test_feature_monitor_state_round_trips():
    monitor = FeatureDriftMonitor(window_events=300)
    monitor.observe(events(700, ["books", "toys"], [5.0]))
    twin = FeatureDriftMonitor(window_events=300)
    twin.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    more = events(500, ["toys"], [9.0])
    monitor.observe(more)
    twin.observe(more)
    assert twin.history == monitor.history and len(twin.history) == 3


DEPARTMENTS = ("beauty", "books", "electronics", "fashion", "grocery", "home", "sports", "toys")
RATES = np.array([0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.11])
TURNED = RATES[[5, 2, 7, 0, 6, 1, 3, 4]]  # the same rates, liked elsewhere: the pooled rate stays


def shop(labels_total, rates_at, model_rates_at, seed):
    """Chunks of (position, predictions, labels, categories) over items of 8 departments.

    Labels follow ``rates_at(position)`` (click rate per department) times
    an item's own appeal, which varies a lot within a department and which
    the model knows; the model predicts as if ``model_rates_at(position)``
    were the department rates.
    """
    rng = np.random.default_rng(seed)
    for position in range(0, labels_total, CHUNK):
        department = rng.integers(0, len(DEPARTMENTS), CHUNK)
        appeal = np.exp(rng.normal(-0.72, 1.2, CHUNK))  # mean 1
        truth = np.minimum(rates_at(position)[department] * appeal, 1.0)
        predictions = np.minimum(model_rates_at(position)[department] * appeal, 1.0)
        labels = (rng.random(CHUNK) < truth).astype(float)
        subs = rng.integers(0, 4, CHUNK)
        categories = [f"{DEPARTMENTS[d]}.sub{s}" for d, s in zip(department, subs, strict=True)]
        yield position, predictions, labels, categories


def turning(position):
    return RATES if position < 100_000 else TURNED


def unaware(position):
    return RATES  # a model that has not noticed the turn yet


def test_tastes_moving_between_departments_are_flagged_though_the_pooled_rate_stays():
    monitor, loss_only = ConceptDriftMonitor(), ConceptDriftMonitor()
    for position, predictions, labels, categories in shop(110_000, turning, unaware, seed=1):
        monitor.update("click", predictions, labels, position, categories)
        loss_only.update("click", predictions, labels, position)
    found = monitor.detections
    assert [(d["task"], d["detector"]) for d in found] == [("click", "top_category_calibration")]
    assert 100_000 <= found[0]["event"] < 105_000  # within 5,000 labels
    # the pooled loss moves little: the loss detectors alone find it later, if at all
    assert all(d["event"] > found[0]["event"] + 2_000 for d in loss_only.detections)


def test_a_calibrated_model_raises_nothing_in_any_department():
    monitor = ConceptDriftMonitor()
    for position, predictions, labels, categories in shop(200_000, unaware, unaware, seed=2):
        monitor.update("click", predictions, labels, position, categories)
    assert monitor.detections == []


def test_every_department_rising_together_is_not_a_group_drift():
    def jumping(position):
        return RATES if position < 100_000 else 1.5 * RATES  # more clicks everywhere

    monitor = ConceptDriftMonitor()
    for position, predictions, labels, categories in shop(150_000, jumping, unaware, seed=3):
        monitor.update("click", predictions, labels, position, categories)
    assert [d for d in monitor.detections if d["detector"].endswith("_calibration")] == []


def test_a_restored_monitor_charts_the_groups_as_the_original_would_have():
    whole, first, second = ConceptDriftMonitor(), ConceptDriftMonitor(), ConceptDriftMonitor()
    for position, predictions, labels, categories in shop(110_000, turning, unaware, seed=4):
        whole.update("click", predictions, labels, position, categories)
        if position == 100_750:  # after the turn, inside a block, before the alarm
            second.load_state_dict(json.loads(json.dumps(first.state_dict())))
        (first if position < 100_750 else second).update(
            "click", predictions, labels, position, categories
        )
    assert second.detections == whole.detections != []
    assert json.dumps(second.state_dict()) == json.dumps(whole.state_dict())


def test_category_bins_hash_the_top_level_or_the_whole_path():
    paths = ["home.kitchen", "home.garden", "toys.games", None]
    top = category_bins(paths, 32, "top_category")
    assert top[0] == top[1] != top[2] and top[3] == -1
    whole = category_bins(paths, 128, "category")
    assert len(set(whole[:3].tolist())) == 3 and whole[3] == -1


def test_the_psi_history_of_a_running_monitor_stays_bounded():
    monitor = FeatureDriftMonitor(window_events=10, history_windows=3)
    kinds = ["click", "cart", "purchase", "impression"]
    monitor.observe([Event(f"e{n}", 0, kinds[n % 4], "u", "i") for n in range(200)])
    assert len(monitor.history) == 3
    restored = FeatureDriftMonitor(window_events=10, history_windows=3)
    restored.load_state_dict(monitor.state_dict())
    restored.observe([Event(f"f{n}", 0, "click", "u", "i") for n in range(50)])
    assert len(restored.history) == 3 and restored.history[-1]["event_type"] > 0
