"""Prequential evaluation: exact AUC, labels counted once their windows close, cold vs warm."""

from __future__ import annotations

import itertools
import math

import numpy as np

from online_models.evaluation import (
    InteractionCounter,
    SampleLog,
    auc,
    label_rows,
    log_loss,
    prequential_metrics,
    rolling_auc,
)
from online_models.labels import TrackedSample
from producers.contract import Event


def pairwise_auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 6, 40) / 5.0  # many ties
        labels = rng.random(40) < 0.3
        assert math.isclose(auc(scores, labels), pairwise_auc(scores, labels))
    assert math.isnan(auc([0.1, 0.2], [1, 1]))


def test_log_loss_is_the_mean_cross_entropy_and_survives_certainty():
    assert math.isclose(log_loss([0.5, 0.5], [0, 1]), math.log(2))
    assert log_loss([0.0, 1.0], [1, 0]) < 20  # clipped, not infinite


def test_only_interactions_warm_an_item():
    counter = InteractionCounter(cold_below=2)
    for n, kind in enumerate(["impression", "impression", "click"]):
        counter.observe(Event(f"e{n}", 0, kind, "u", "i"))
    assert counter.is_cold("i")
    counter.observe(Event("e9", 0, "cart", "u", "i"))
    assert not counter.is_cold("i") and counter.count("i") == 2


def sample(key: int, ts: int = 0, **labels) -> TrackedSample:
    return TrackedSample("u", f"i{key}", ts, key=key, **labels)


def test_metrics_count_labelled_samples_of_the_recent_part_of_the_stream():
    log = SampleLog()
    log.created([sample(0), sample(1)], position=0, cold=[False, False])  # first half
    log.created([sample(2), sample(3)], position=10, cold=[True, False])
    log.created([sample(4), sample(5)], position=20, cold=[False, False])
    log.labelled([sample(k, click=float(k % 2)) for k in range(6)], position=21)
    log.labelled([sample(k, cart=float(k % 2)) for k in (1, 3)], position=22)
    log.labelled([sample(k, cart=0.0) for k in (0, 2)], position=22)  # 4 and 5: still open
    scores = np.array(
        [[0.9, 0.9, 0], [0.1, 0.1, 0], [0.2, 0.2, 0], [0.8, 0.8, 0], [0.1, 0, 0], [0.9, 0, 0]]
    )
    report = prequential_metrics(scores, log, from_position=10)
    click = report["tasks"]["click"]
    assert click == {"auc": 1.0, "logloss": click["logloss"], "samples": 4, "positives": 2}
    assert math.isclose(click["logloss"], log_loss([0.2, 0.8, 0.1, 0.9], [0, 1, 0, 1]))
    assert report["tasks"]["cart"]["samples"] == 2
    assert report["cold_items"]["click"]["samples"] == 1
    assert math.isnan(report["cold_items"]["click"]["auc"])  # one class only
    assert report["warm_items"]["click"]["samples"] == 3


def test_label_rows_lists_each_known_label():
    keys, tasks, values = label_rows([sample(3, click=1.0), sample(4, cart=0.0, purchase=0.0)])
    assert keys.tolist() == [3, 4, 4] and tasks.tolist() == [0, 1, 2]
    assert values.tolist() == [1.0, 0.0, 0.0]


def test_rolling_auc_follows_a_model_that_gets_better():
    rng = np.random.default_rng(1)
    n = 4000
    log = SampleLog()
    labels = (rng.random(n) < 0.3).astype(float)
    for k in range(n):
        log.created([sample(k)], position=k, cold=[False])
    log.labelled([sample(k, click=labels[k]) for k in range(n)], position=n)
    scores = np.zeros((n, 3))
    scores[:, 0] = np.where(np.arange(n) < n // 2, rng.random(n), labels + 0.1 * rng.random(n))
    positions, values = rolling_auc(scores, log, task=0, window=500, points=20)
    assert len(positions) == 20 and positions[-1] == n - 1
    assert abs(values[0] - 0.5) < 0.1 and values[-1] == 1.0
