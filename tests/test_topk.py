"""Top-K lists judged by the events that came next (streams.bench.topk)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from online_models.catalog import Catalog
from online_models.learner import mtl
from producers.contract import CatalogItem, Event
from streams.bench.quality import QualityOptions, build_stream, run, run_model
from streams.bench.topk import (
    LISTS,
    SIMPLE_LISTS,
    History,
    TopKEvaluation,
    bootstrap_se,
    hit_and_ndcg,
    print_summary,
    with_items,
)
from streams.ranking import candidate_block

TASKS = ("click", "cart", "purchase")


def test_a_list_with_the_next_item_at_rank_r_has_ndcg_one_over_log2_r_plus_2():
    items = [f"i{n}" for n in range(12)]
    for rank in range(10):
        hit, ndcg = hit_and_ndcg(items, f"i{rank}")
        assert hit == 1.0 and ndcg == pytest.approx(1 / math.log2(rank + 2))
    assert hit_and_ndcg(items, "i10") == (0.0, 0.0)  # beyond K = 10
    assert hit_and_ndcg(items, "elsewhere") == (0.0, 0.0)
    assert hit_and_ndcg([], "i0") == (0.0, 0.0)


def test_bootstrap_se_is_positive_and_shrinks_with_more_events():
    rng = np.random.default_rng(3)
    errors = []
    for n in (400, 4_000, 40_000):
        values = (rng.random(n) < 0.3).astype(float)
        users = rng.integers(0, n // 4, n)  # about four events per user
        errors.append(float(bootstrap_se(values, users)[0]))
    assert all(e > 0 for e in errors)
    assert errors[0] > 2 * errors[1] > 4 * errors[2]
    # about the binomial error of a mean of 4,000 events of rate 0.3
    assert errors[1] == pytest.approx(math.sqrt(0.3 * 0.7 / 4_000), rel=0.3)
    assert np.isnan(bootstrap_se(np.ones(5), np.zeros(5))).all()  # one user: unknown


def test_simple_lists_decay_with_event_time_and_follow_the_user():
    history = History(half_life_ms=60_000)
    for item, category in (("a", "x"), ("b", "y"), ("c", "y"), ("d", "x")):
        history.observe_catalog(CatalogItem(item, 0, category=category))
    old = [Event(f"o{n}", 0, "click", f"v{n}", "a") for n in range(8)]  # 8 clicks, long ago
    new = [
        Event("n1", 600_000, "purchase", "v1", "b"),  # 10 half-lives later: weight 5
        Event("n2", 600_000, "click", "u", "d"),
        Event("n3", 600_000, "click", "v2", "c"),
    ]
    history.observe(old + new)
    assert history.popular_now(2) == ["b", "d"]  # a's 8 clicks decayed to 8/1024
    # u's own item first, then its category's (x) best, then what is popular
    assert history.recently_interacted("u", 4) == ["d", "a", "b", "c"]
    assert history.category_popular("u", 2) == ["d", "a"]
    assert history.category_popular("v2", 3) == ["b", "d", "c"]  # y and x, by popularity
    assert history.recently_interacted("stranger", 3) == history.popular_now(3)


@pytest.fixture(scope="module")
def sim_topk() -> dict:
    return run(QualityOptions(events=20_000, models=("mtl",), progress=False))["topk"]


@pytest.mark.slow
def test_the_report_has_every_list_task_metric_and_its_standard_error(sim_topk):
    for name in LISTS:
        for task in TASKS:
            entry = sim_topk[name][task]
            for metric in ("hit_rate_at_10", "ndcg_at_10", "expected_at_10"):
                assert metric in entry and f"{metric}_se" in entry, (name, task, metric)
            assert entry["events"] == sim_topk["events"][task]
    assert sim_topk["events"]["click"] > 500 and sim_topk["from_event"] == 10_000
    for name in LISTS:
        click = sim_topk[name]["click"]
        assert 0 <= click["ndcg_at_10"] <= click["hit_rate_at_10"] <= 1
        assert click["hit_rate_at_10_se"] > 0 and click["expected_at_10_se"] > 0
    assert set(sim_topk["comparisons"]) == {f"mtl-{name}" for name in LISTS if name != "mtl"}
    lines: list[str] = []
    print_summary(sim_topk, lines.append)
    assert len(lines) == 4 + len(LISTS) and lines[2].split()[0] == "mtl"
    assert lines[-2].startswith("  mtl's candidates: click item among them")
    assert lines[-1].startswith("  mtl's lists, predicted over true counts: click ")


def test_the_served_lists_predictions_are_set_against_the_truth_of_the_same_items(sim_topk):
    calibration = sim_topk["calibration"]
    assert calibration["lists"] == sum(sim_topk["events"].values())  # every judged list
    expected = [calibration[task]["expected_at_10"] for task in TASKS]
    assert expected[0] > expected[1] > expected[2] > 0  # entire-space: a funnel narrows
    assert calibration["click"]["expected_at_10"] >= sim_topk["mtl"]["click"]["expected_at_10"] / 2
    for task in TASKS:
        entry = calibration[task]
        assert entry["predicted_at_10"] > 0 and entry["ratio_se"] > 0
        assert entry["ratio"] == pytest.approx(entry["predicted_at_10"] / entry["expected_at_10"])


def test_the_oracle_list_is_the_ceiling_of_expected_clicks_and_purchases(sim_topk):
    oracle = sim_topk["oracle"]
    for task in ("click", "purchase"):
        for name in ("mtl", *SIMPLE_LISTS):
            other = sim_topk[name][task]
            assert oracle[task]["expected_at_10"] >= other["expected_at_10"], (name, task)
        best = sim_topk["candidates"][task]["best_expected_at_10"]
        assert sim_topk["mtl"][task]["expected_at_10"] <= best <= oracle[task]["expected_at_10"]
        one_list = sim_topk["candidates"][task]["objective_expected_at_10"]  # every task's
        assert 0 < one_list <= best + 1e-9  # the same items may be summed in another order
        assert 0 < sim_topk["candidates"][task]["recall"] <= 1
    popular = sim_topk["popular_now"]["click"]
    margin = oracle["click"]["expected_at_10"] - popular["expected_at_10"]
    assert margin > 4 * max(oracle["click"]["expected_at_10_se"], popular["expected_at_10_se"])


@pytest.mark.slow
def test_a_real_log_is_judged_by_hits_without_an_oracle():
    options = QualityOptions(
        source="tests/data/rees46-2019-oct-head.csv", events=None, models=("mtl",), progress=False
    )
    report = run(options)
    topk = report["topk"]
    assert "oracle" not in topk and topk["half_life_s"] == 1_800
    assert topk["from_event"] == report["events"] // 2 == 17_434 // 2
    for name in ("mtl", *SIMPLE_LISTS):
        for task in TASKS:
            entry = topk[name][task]
            assert "expected_at_10" not in entry and entry["events"] == topk["events"][task]
            assert 0 <= entry["hit_rate_at_10"] <= 1
    assert topk["events"]["click"] > 4_000 and topk["events"]["purchase"] > 50
    assert topk["recently_interacted"]["click"]["hit_rate_at_10"] > 0.2  # views repeat
    for task in TASKS:  # the list's items are candidates: a hit is among them
        candidates = topk["candidates"][task]
        assert candidates["recall"] >= topk["mtl"][task]["hit_rate_at_10"]
        assert "best_expected_at_10" not in candidates
    assert "calibration" not in topk  # no truth to set the predictions against


@pytest.mark.slow
def test_evaluation_events_are_sampled_to_about_the_cap_over_the_whole_second_half():
    stream = build_stream(QualityOptions(events=6_000, impressions=False, progress=False))
    full = stream.topk.report()["events"]
    evaluation = TopKEvaluation(from_event=3_000, half_life_s=3_600, max_events=200)
    for step in stream.steps:
        evaluation.close_step(step.position, step.events)
    sampled = evaluation.report()["events"]
    assert full["click"] > 1_000 and 100 < sampled["click"] < 300
    assert sampled["purchase"] <= full["purchase"]


def test_the_mtl_hook_serves_before_learning_and_changes_nothing_the_model_does():
    stream = build_stream(QualityOptions(events=4_000, progress=False))
    seen: list[int] = []
    plain = run_model(mtl(), stream)
    hooked = run_model(mtl(), stream, before_step=lambda m, s: seen.append(m.model_version))
    assert np.array_equal(plain.scores, hooked.scores, equal_nan=True)
    assert len(seen) == len(stream.steps) and seen[0] == 0  # before the first step is learned
    assert seen == sorted(seen) and seen[-1] > 0
    served = run_model(mtl(), stream, before_step=stream.topk.serve)
    assert np.array_equal(plain.scores, served.scores, equal_nan=True)
    assert len(stream.topk.mtl) == sum(stream.topk.report()["events"].values()) > 0


def test_the_rated_items_join_each_user_s_candidates_that_lack_them():
    lamp = CatalogItem("r1", 0, category="home.lamp", price=5.0)
    catalog = Catalog()
    for item_id in ("r1", "i1"):
        catalog.describe(CatalogItem(item_id, 0, category="home.lamp", price=5.0))
    offers = {"u1": [("i1", lamp.content)], "u2": [("i2", lamp.content), ("i1", lamp.content)]}
    block = candidate_block(["u1", "u2"], offers, {"u1": 1, "u2": 2})
    spans = [(1, 3), (0, 1), (1, 3)]  # evaluation events of u2, u1, u2
    extended, new_spans, gained = with_items(block, spans, ["r1", "i1"], catalog)
    pairs = [
        (extended.user_ids[u], extended.item_ids[i])
        for u, i in zip(extended.pair_user.tolist(), extended.pair_item.tolist(), strict=True)
    ]
    assert pairs == [("u1", "i1"), ("u1", "r1"), ("u2", "i2"), ("u2", "i1"), ("u2", "r1")]
    assert new_spans == [(2, 5), (0, 2), (2, 5)] and gained == [["r1"], ["r1"], ["r1"]]
    assert extended.prices[extended.item_ids.index("r1")] == 5.0
    assert with_items(block, spans, [], catalog) == (block, spans, [[], [], []])
