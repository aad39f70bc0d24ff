"""The quality bench: one stream, every model scored before it learns, a complete report."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from online_models.baselines import Popularity
from online_models.drift import DETECTORS
from online_models.labels import LabelConfig
from producers.recording import recorded
from producers.simulator import Shop, ShopConfig
from streams.bench.quality import (
    BATCH_SPAN_S,
    MODEL_NAMES,
    QualityOptions,
    build_stream,
    label_config,
    options_from_args,
    recording_has_impressions,
    run,
    run_model,
    stream_impressions,
)
from streams.cli import build_parser
from streams.settings import Settings

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def sim_report(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    options = QualityOptions(
        events=8_000, report=out / "report.json", plot=out / "auc.png", progress=False
    )
    return run(options), out


def test_the_report_has_every_model_task_and_group(sim_report):
    report, out = sim_report
    assert json.loads((out / "report.json").read_text()) == report  # strict JSON: NaN as null
    assert report["source"] == "sim" and report["events"] == 8_000
    assert set(report["models"]) == set(MODEL_NAMES)
    for name, metrics in report["models"].items():
        assert set(metrics["tasks"]) == {"click", "cart", "purchase"}, name
        for task in ("click", "cart", "purchase"):
            assert set(metrics["tasks"][task]) >= {"auc", "logloss"}
            assert "auc" in metrics["cold_items"][task] and "auc" in metrics["warm_items"][task]
        assert metrics["learn_events_per_s"] > 0
    assert set(report["oracle"]["tasks"]) == {"click", "cart", "purchase"}


def test_the_report_judges_the_top_k_lists_of_mtl_the_oracle_and_the_simple_lists(sim_report):
    report, _ = sim_report
    topk = report["topk"]
    assert topk["k"] == 10 and topk["from_event"] == 4_000
    for name in ("mtl", "oracle", "popular_now", "recently_interacted", "category_popular"):
        for task in ("click", "cart", "purchase"):
            entry = topk[name][task]
            assert entry["events"] == topk["events"][task]
            for metric in ("hit_rate_at_10", "ndcg_at_10", "expected_at_10"):
                assert f"{metric}_se" in entry and metric in entry, (name, task, metric)
    assert topk["events"]["click"] > 200


def test_every_model_learns_the_same_label_stream_provisional_negatives_included(sim_report):
    report, _ = sim_report
    learned = {name: metrics["labels_learned"] for name, metrics in report["models"].items()}
    assert len({tuple(counts.values()) for counts in learned.values()}) == 1, learned
    assert set(learned["mtl"]) == {"click", "cart", "purchase"} and learned["mtl"]["click"] > 0
    reasons = {k: v for k, v in report["samples"].items() if k.startswith("learned_")}
    assert set(reasons) == {"learned_resolved", "learned_corrected", "learned_provisional"}
    assert 0 < sum(reasons.values()) <= sum(learned["mtl"].values())  # a sample: 1-3 labels


def test_mtl_is_compared_with_every_model_on_the_same_samples(sim_report):
    report, _ = sim_report
    comparisons = report["comparisons"]
    assert set(comparisons) == {f"mtl-{name}" for name in MODEL_NAMES if name != "mtl"}
    click = comparisons["mtl-popularity"]["click"]
    mtl, popularity = report["models"]["mtl"], report["models"]["popularity"]
    expected = mtl["tasks"]["click"]["auc"] - popularity["tasks"]["click"]["auc"]
    assert abs(click["auc_difference"] - expected) < 1e-9 and click["standard_error"] > 0


def test_models_learn_something_and_the_oracle_knows_best(sim_report):
    report, _ = sim_report
    oracle = report["oracle"]["tasks"]["click"]["auc"]
    assert oracle > 0.7
    for name in ("mtl", "river_lr", "popularity"):
        assert 0.5 < report["models"][name]["tasks"]["click"]["auc"] < oracle, name
    samples = report["models"]["mtl"]["tasks"]["click"]["samples"]
    assert samples == report["oracle"]["tasks"]["click"]["samples"] > 3_000


def test_drift_is_injected_where_asked_and_detections_name_task_and_detector(sim_report):
    report, out = sim_report
    drift = report["drift"]
    assert drift["injected_at"] == [4_800]
    for detection in drift["detections"]:
        assert set(detection) == {"event", "task", "detector"}
        assert detection["task"] in ("click", "cart", "purchase")
        assert detection["detector"] in DETECTORS
    assert set(drift["calibration"]) == {"click", "cart", "purchase"}
    assert set(report["live"]) == {"click", "cart", "purchase"}
    assert report["live"]["click"]["labels"] >= drift["calibration"]["click"]["labels"] > 0
    assert (out / "auc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class OrderChecker(Popularity):
    """A real learner that also checks no sample is learned before it was scored."""

    def __init__(self) -> None:
        super().__init__()
        self.scored: set[int] = set()
        self.learned = 0

    def predict(self, samples, remembered=None):
        self.scored.update(s.key for s in samples)
        return super().predict(samples)

    def learn(self, samples):
        # order samples (the value head's) carry no label to score; every other was scored
        assert all(s.key in self.scored for s in samples if s.value is None)
        self.learned += len(samples)
        super().learn(samples)


def test_every_sample_is_scored_before_any_of_its_labels_is_learned():
    for impressions in (True, False):
        stream = build_stream(QualityOptions(events=3_000, impressions=impressions, progress=False))
        checker = OrderChecker()
        result = run_model(checker, stream)
        assert checker.learned == result.learned > 0
        assert len(checker.scored) == len(stream.log)


def test_a_real_log_runs_without_an_oracle_or_injected_drift_and_closes_its_windows():
    options = QualityOptions(
        source=str(DATA / "taobao-userbehavior-sample.csv"),
        events=None,
        models=("river_lr", "popularity"),
        progress=False,
    )
    report = run(options)
    assert "oracle" not in report and report["drift"]["injected_at"] == []
    assert report["events"] == 4_193 and not report["impressions"]
    assert report["samples"]["negatives"] > 0
    tasks = report["models"]["popularity"]["tasks"]
    assert tasks["click"]["samples"] > 1_000
    # windows the log cuts short are closed at its end: every sample has every label
    assert tasks["cart"]["samples"] == tasks["purchase"]["samples"] == tasks["click"]["samples"]
    assert tasks["cart"]["positives"] > 0
    topk = report["topk"]  # no mtl among the models: the simple lists only, judged by hits
    assert set(topk) & {"mtl", "oracle", "popular_now"} == {"popular_now"}
    assert "expected_at_10" not in topk["popular_now"]["click"]
    assert topk["events"]["click"] > 100 and topk["half_life_s"] == 86_400


def test_command_line_flags_become_options():
    parser = build_parser()
    args = parser.parse_args(
        [
            "bench",
            "quality",
            "--source",
            "sim",
            "--no-impressions",
            "--no-drift",
            "--report",
            "r.json",
            "--models",
            "mtl,popularity",
        ]
    )
    options = options_from_args(args)
    assert options.events == 200_000 and not options.impressions and not options.drift
    assert options.models == ("mtl", "popularity") and options.report == Path("r.json")
    assert (
        options.models
        != MODEL_NAMES
        == options_from_args(parser.parse_args(["bench", "quality"])).models
    )
    with pytest.raises(ValueError, match="unknown models"):
        options_from_args(parser.parse_args(["bench", "quality", "--models", "mtl,nope"]))


def test_the_batch_span_is_the_default_unless_given_and_must_be_above_zero(capsys):
    def span(*flags):
        return options_from_args(build_parser().parse_args(["bench", "quality", *flags]))

    assert span().batch_span_s == BATCH_SPAN_S
    assert span("--batch-span", "0.5").batch_span_s == 0.5
    assert span("--batch-span", "inf").batch_span_s == math.inf  # by size only
    for bad in ("0", "-1", "nan", "soon"):  # 0 was the default; it would be one event a batch
        with pytest.raises(SystemExit):
            span("--batch-span", bad)
        assert "seconds above 0" in capsys.readouterr().err


# ---------------------------------------------------------------- recordings and windows


def record(path: Path, events: int, impressions: bool = True) -> Path:
    shop = Shop(ShopConfig(events=events, delay_scale=1 / 60, impressions=impressions))
    list(recorded(shop.records(), path))
    return path


def test_a_recording_replays_with_the_windows_given_and_reports_live_figures(tmp_path):
    recording = record(tmp_path / "rec.jsonl", 6_000)
    windows = ["--click-window", "10", "--click-wait", "2", "--conversion-window", "120"]
    args = build_parser().parse_args(
        ["bench", "quality", "--source", str(recording), "--models", "mtl", *windows]
    )
    report = run(dataclasses.replace(options_from_args(args), progress=False))
    assert report["events"] == 6_000 and report["impressions"] is True  # detected
    assert report["windows"] == {
        "click_window_s": 10.0,
        "conversion_window_s": 120.0,
        "provisional_waits_s": [2.0, 60.0, 60.0],
    }
    live = report["live"]
    assert set(live) == {"click", "cart", "purchase"}
    for task in live.values():
        assert set(task) == {"auc", "logloss", "labels", "positives"}
        assert 0 <= task["positives"] <= task["labels"] <= 20_000
    assert 0.5 < live["click"]["auc"] < 1 and live["click"]["labels"] > 1_000
    calibration = report["drift"]["calibration"]["click"]
    assert calibration["labels"] == min(live["click"]["labels"], 5_000)
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_the_window_flags_make_the_label_stage_of_a_worker_with_those_flags():
    flags = {"click_window_s": 30.0, "click_wait_s": 5.0, "conversion_window_s": 600.0}
    for source, fmt in (("rec.jsonl", "recstream"), ("sim", None)):
        options = QualityOptions(source=source, **flags)
        assert label_config(options, fmt, True) == Settings(**flags).label_config()
    assert label_config(QualityOptions(**flags), None, False) == (
        Settings(impressions=False, **flags).label_config()
    )
    # a flag not given keeps the source's window: the simulator's 60 s click window
    config = label_config(QualityOptions(conversion_window_s=600.0), None, True)
    assert config == Settings(click_window_s=60, conversion_window_s=600).label_config()
    # a recording without flags: the worker's defaults
    recording = QualityOptions(source="rec.jsonl")
    assert label_config(recording, "recstream", True) == Settings().label_config()
    # no flags: the simulator and the logs keep their own windows
    assert label_config(QualityOptions(), None, True) == LabelConfig(
        click_window_ms=60_000, conversion_window_ms=3_600_000, seed=7
    )
    taobao = label_config(QualityOptions(source="log.csv"), "taobao")
    assert not taobao.impressions and taobao.conversion_window_ms == 24 * 3_600_000
    with pytest.raises(ValueError, match="--click-wait must be a positive"):
        label_config(QualityOptions(click_wait_s=-1.0), None)


def test_the_window_flags_are_read_from_the_command_line():
    parser = build_parser()
    options = options_from_args(
        parser.parse_args(["bench", "quality", "--click-window", "30", "--conversion-window", "9"])
    )
    assert (options.click_window_s, options.click_wait_s, options.conversion_window_s) == (
        30.0,
        None,
        9.0,
    )
    options = options_from_args(parser.parse_args(["bench", "quality"]))
    assert options.click_window_s is options.click_wait_s is options.conversion_window_s is None


def test_impressions_of_a_recording_are_detected_unless_it_is_said_to_have_none(tmp_path):
    with_impressions = record(tmp_path / "with.jsonl", 200)
    without = record(tmp_path / "without.jsonl", 200, impressions=False)
    assert recording_has_impressions(with_impressions)
    assert not recording_has_impressions(without)
    for path, flagged, expected in (
        (with_impressions, True, True),
        (with_impressions, False, False),
        (without, True, False),
    ):
        options = QualityOptions(source=str(path), impressions=flagged)
        assert stream_impressions(options, "recstream") is expected
