"""The hand-over bench's figures from synthetic logs and scrapes (no broker)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from online_models.evaluation import auc, auc_standard_error, paired_auc_difference
from streams.bench.fault_audit import TopicMessage
from streams.bench.handover import (
    Observed,
    _note_failover,
    _note_join,
    first_score_ms,
    join_figures,
    join_window,
    task_figures,
    user_partitions,
)
from streams.cli import build_parser
from streams.prediction_log import RECORD


def log_of(ts: np.ndarray, task: int, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    rows = np.empty(len(ts), dtype=RECORD)
    rows["ts"], rows["task"], rows["label"], rows["prediction"] = ts, task, labels, predictions
    return rows


def informative(n: int, seed: int, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions that tell them apart (AUC well above 0.5)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    return labels, (labels + noise * rng.standard_normal(n)).astype(np.float32)


def test_the_single_auc_standard_error_is_delongs_against_a_constant_model():
    labels, scores = informative(400, seed=1)
    _, paired = paired_auc_difference(scores, np.zeros(len(scores)), labels)
    assert auc_standard_error(scores, labels) == pytest.approx(paired, rel=1e-12)


def test_the_single_auc_standard_error_of_a_perfect_split_is_0_and_needs_two_of_each_class():
    assert auc_standard_error([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.0
    assert math.isnan(auc_standard_error([0.1, 0.2, 0.9], [0, 0, 1]))


def test_the_window_runs_from_the_first_sample_to_the_nth_event_of_the_joiners_partitions():
    clicks = log_of(np.array([50, 20, 40, 30]), 0, np.zeros(4), np.zeros(4))
    cart = log_of(np.array([10]), 1, np.zeros(1), np.zeros(1))
    joiner = np.concatenate([clicks, cart])
    produced = [(0, 5), (2, 12), (0, 15), (1, 16), (2, 30), (0, 41), (2, 60)]
    acked = [TopicMessage(p, n, b'{"ts": %d}' % ts) for n, (p, ts) in enumerate(produced)]
    assert join_window(joiner, acked, [0, 2], 3) == (10, 30)  # 12, 15, 30: not 5 nor 16
    assert join_window(joiner, acked, [0, 2], 99) == (10, 60)  # fewer: up to the last
    assert join_window(joiner, acked, [3], 3) is None  # nothing produced to its partitions
    assert join_window(joiner[:0], acked, [0], 3) is None  # nothing logged


def test_a_joiner_that_predicts_at_random_has_auc_near_half_and_a_ratio_well_below_1():
    labels, good = informative(20_000, seed=2)
    ts = np.arange(len(labels))
    others = log_of(ts, 0, labels, good)
    noise = np.random.default_rng(3).random(len(labels)).astype(np.float32)
    joiner = log_of(ts, 0, labels, noise)
    figures = task_figures(joiner, others, (0, len(labels) - 1), "click")
    assert figures["joiner_auc"] == pytest.approx(0.5, abs=0.02)
    assert figures["ratio"] < 0.7
    assert figures["difference"] < -10 * figures["difference_se"]
    assert figures["samples"] == {"joiner": 20_000, "others": 20_000}


def test_identical_logs_differ_by_0_with_the_se_of_two_independent_samples():
    labels, scores = informative(2_000, seed=4)
    rows = log_of(np.arange(2_000), 1, labels, scores)
    figures = task_figures(rows, rows, (0, 1_999), "cart")
    assert figures["difference"] == 0.0 and figures["ratio"] == 1.0
    assert figures["joiner_se"] == figures["others_se"] > 0
    assert figures["difference_se"] == pytest.approx(math.sqrt(2) * figures["joiner_se"], abs=1e-4)


def test_only_samples_in_the_window_count_and_a_task_without_both_classes_is_none():
    labels, scores = informative(1_000, seed=5)
    joiner = log_of(np.arange(1_000), 0, labels, scores)
    others = log_of(np.arange(1_000) + 500, 0, labels, scores)  # half of it after the window
    figures = join_figures(joiner, others, (0, 999))
    assert figures["click"]["samples"] == {"joiner": 1_000, "others": 500}
    assert figures["click"]["others_auc"] == pytest.approx(
        auc(scores[:500], labels[:500]), abs=1e-4
    )
    assert figures["purchase"]["joiner_auc"] is None and figures["purchase"]["ratio"] is None


def test_the_first_score_is_the_earliest_after_the_kill_for_a_user_of_a_dead_partition():
    events = [
        TopicMessage(0, 0, json.dumps({"user_id": "u1"}).encode()),
        TopicMessage(3, 0, json.dumps({"user_id": "u2"}).encode()),
    ]
    observed = Observed(started=0.0, killed=1.0, killed_wall_ms=1_000, dead_partitions=[3])

    def score(user: str, ts: int) -> TopicMessage:
        return TopicMessage(0, 0, json.dumps({"user_id": user, "ts": ts}).encode())

    scores = [score("u2", 900), score("u1", 1_100), score("u2", 1_700), score("u2", 1_500)]
    tombstone = TopicMessage(0, 9, None)
    assert first_score_ms([*scores, tombstone], user_partitions(events), observed) == 1_500
    assert first_score_ms(scores, user_partitions(events), observed) == 1_500
    assert first_score_ms(scores[:2], user_partitions(events), observed) is None


def test_takeover_and_catching_up_are_the_first_scrapes_that_show_them():
    observed = Observed(started=0.0, killed=10.0)
    lags = {f"recstream_consumer_lag{{partition={p}}}": 500.0 for p in range(4)}
    scrapes = [
        (11.0, {"recstream_assigned_partitions": 2.0}),
        (13.0, {"recstream_assigned_partitions": 4.0, **lags}),
        (14.0, {"recstream_assigned_partitions": 4.0, **lags}),
        (15.0, {"recstream_assigned_partitions": 4.0, **dict.fromkeys(lags, 100.0)}),
    ]
    for now, metrics in scrapes:
        _note_failover(metrics, 4, rate=1_000.0, now=now, observed=observed)
    assert (observed.took_over, observed.caught_up) == (13.0, 15.0)


def test_the_join_notes_versions_at_the_joiners_first_partitions_and_the_settled_split():
    observed = Observed(started=0.0)
    survivor = {"recstream_assigned_partitions": 4.0, "recstream_model_version": 900.0}
    _note_join(survivor, {"recstream_assigned_partitions": 0.0}, 4, 1.0, observed)
    assert observed.join_versions is None
    joiner = {"recstream_assigned_partitions": 2.0, "recstream_model_version": 880.0}
    _note_join(survivor, joiner, 4, 2.0, observed)
    assert observed.join_versions == (880.0, 900.0) and observed.owned is None
    _note_join({**survivor, "recstream_assigned_partitions": 2.0}, joiner, 4, 3.0, observed)
    assert observed.owned == [2, 2] and observed.join_assigned == 2.0
    assert observed.join_partitions == []  # its lag series are not exported yet
    lags = {"recstream_consumer_lag{partition=1}": 0.0, "recstream_consumer_lag{partition=3}": 0.0}
    _note_join(
        {**survivor, "recstream_assigned_partitions": 2.0}, {**joiner, **lags}, 4, 4.0, observed
    )
    assert observed.join_partitions == [1, 3]


def test_the_cli_parses_the_handover_flags(tmp_path: Path):
    args = build_parser().parse_args(
        [
            "bench",
            "handover",
            "--events",
            "9000",
            "--rate",
            "1500",
            "--kill-at",
            "2000",
            "--join-at",
            "4000",
            "--join-events",
            "500",
            "--seed",
            "3",
            "--timeout",
            "60",
            "--report",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "p.png"),
            "--workdir",
            str(tmp_path),
        ]
    )
    assert (args.events, args.rate, args.kill_at, args.join_at, args.join_events) == (
        9000,
        1500.0,
        2000,
        4000,
        500,
    )
    assert args.run.__name__ == "run_bench_handover"
    defaults = build_parser().parse_args(["bench", "handover"])
    assert (defaults.events, defaults.rate, defaults.kill_at, defaults.join_at) == (
        120_000,
        2_000.0,
        30_000,
        60_000,
    )
