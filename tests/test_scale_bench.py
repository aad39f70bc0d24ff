"""Several workers: each logs its labelled predictions; the scale bench pools and measures them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from online_models.labels import TrackedSample
from online_models.live_quality import LiveQuality
from streams.bench.kafka import stat_cpu_s
from streams.bench.scale import (
    _Sample,
    buckets,
    done,
    histogram_quantile,
    measure,
    pooled_auc,
    second_half,
    sync_figures,
)
from streams.demo import parse_metrics
from streams.prediction_log import RECORD, PredictionLog, of_task, read
from streams.settings import Settings

ROOT = Path(__file__).parent.parent


def shown(keys: range, ts: int) -> list[TrackedSample]:
    return [TrackedSample("u", f"i{k}", ts + k, key=k) for k in keys]


def test_every_label_a_prediction_meets_is_logged_once_with_its_task_and_event_time(tmp_path):
    quality = LiveQuality(min_class_labels=1)
    log = PredictionLog.attach(quality, tmp_path / "predictions.bin")
    quality.scored(shown(range(3), ts=1_000), np.array([[0.9, 0.5, 0.2]] * 3), model_version=1)
    quality.labelled(  # key 0 clicked; key 1 not clicked (cart and purchase 0 with it)
        [
            TrackedSample("u", "i0", 1_000, key=0, click=1.0),
            TrackedSample("u", "i1", 1_001, key=1, click=0.0, cart=0.0, purchase=0.0),
        ],
        position=1,
    )
    quality.labelled([TrackedSample("u", "i0", 1_000, key=0, cart=1.0)], position=2)
    quality.labelled([TrackedSample("u", "i9", 1_009, key=9, click=1.0)], position=3)  # unknown
    assert log is not None
    log.close()
    rows = read(tmp_path / "predictions.bin")
    logged = [(int(r["ts"]), int(r["task"]), float(r["label"])) for r in rows]
    assert logged == [
        (1000, 0, 1.0),
        (1001, 0, 0.0),
        (1001, 1, 0.0),
        (1001, 2, 0.0),
        (1000, 1, 1.0),
    ]
    assert of_task(rows, "click")["prediction"].tolist() == pytest.approx([0.9, 0.9])
    assert of_task(rows, "cart")["prediction"].tolist() == pytest.approx([0.5, 0.5])


def test_an_untrained_models_predictions_are_not_logged_and_no_path_means_no_log(tmp_path):
    quality = LiveQuality()
    assert PredictionLog.attach(quality, None) is None and quality.sink is None
    log = PredictionLog.attach(quality, tmp_path / "p.bin")
    quality.scored(shown(range(2), ts=0), np.full((2, 3), 0.5), model_version=0)
    quality.labelled([TrackedSample("u", "i0", 0, key=0, click=1.0)], position=1)
    assert log is not None
    log.close()
    assert len(read(tmp_path / "p.bin")) == 0


def test_a_restarted_worker_appends_and_a_torn_last_record_is_left_out(tmp_path):
    path = tmp_path / "p.bin"
    for ts in (5, 6):
        log = PredictionLog(path)
        log(np.array([ts]), np.array([[0.4, 0.2, 0.1]]), np.array([[1.0, np.nan, np.nan]]))
        log.close()
    with open(path, "ab") as torn:
        torn.write(b"\x01\x02\x03")
    assert read(path)["ts"].tolist() == [5, 6]
    (tmp_path / "other").write_bytes(b"not a log")
    with pytest.raises(ValueError, match="not a recstream predictions log"):
        read(tmp_path / "other")


def test_the_log_path_comes_from_the_flag_or_the_environment():
    from streams.cli import build_parser

    env = Settings.from_env({"RECSTREAM_PREDICTIONS_LOG": "logs/p.bin"})
    assert env.predictions_log == Path("logs/p.bin")
    args = build_parser().parse_args(["worker", "--predictions-log", "q.bin"])
    assert env.with_args(args).predictions_log == Path("q.bin")
    assert Settings.from_env({}).predictions_log is None


def test_auc_is_pooled_over_workers_on_the_second_half_of_the_stream_only():
    # worker a ranks its first-half samples backwards; the second half is ranked right by both
    a = np.array([(1, 0, 1.0, 0.1), (2, 0, 0.0, 0.9), (10, 0, 1.0, 0.8)], dtype=RECORD)
    b = np.array([(11, 0, 0.0, 0.3), (12, 1, 1.0, 0.6), (12, 1, 0.0, 0.2)], dtype=RECORD)
    assert second_half(a, 10)["ts"].tolist() == [10]
    pooled = pooled_auc([a, b], split_ts=10)
    assert pooled["click"] == {"auc": 1.0, "labels": 2, "positives": 1}
    assert pooled["cart"]["auc"] == 1.0
    assert pooled["purchase"] == {"auc": None, "labels": 0, "positives": 0}
    assert pooled_auc([a, b], split_ts=0)["click"]["auc"] == 0.25  # with the first half
    assert pooled_auc([], split_ts=0)["click"]["auc"] is None


EXPOSITION = """# HELP recstream_events_total Valid events applied, by type.
# TYPE recstream_events_total counter
recstream_events_total{type="impression"} 700.0
recstream_events_total{type="click"} 290.0
# TYPE recstream_invalid_events_total counter
recstream_invalid_events_total{reason="not_json"} 10.0
# TYPE recstream_assigned_partitions gauge
recstream_assigned_partitions 2.0
# TYPE recstream_consumer_lag gauge
recstream_consumer_lag{partition="0"} 0.0
recstream_consumer_lag{partition="1"} 0.0
# TYPE recstream_sync_bytes_sent_total counter
recstream_sync_bytes_sent_total 6000.0
# TYPE recstream_sync_lag_seconds histogram
recstream_sync_lag_seconds_bucket{le="0.1"} 50.0
recstream_sync_lag_seconds_bucket{le="1.0"} 100.0
recstream_sync_lag_seconds_bucket{le="+Inf"} 100.0
recstream_sync_lag_seconds_count 100.0
recstream_sync_lag_seconds_sum 20.0
"""


def test_the_workers_metrics_text_tells_applied_settled_and_sync_figures():
    one = parse_metrics(EXPOSITION)
    assert one["recstream_events_total{type=click}"] == 290.0
    assert done([one, one], events=2_000, partitions=4)
    assert not done([one, one], events=2_001, partitions=4)
    assert not done([one], events=1_000, partitions=4)  # two partitions nobody owns
    lagging = {**one, "recstream_consumer_lag{partition=1}": 3.0}
    assert not done([one, lagging], events=2_000, partitions=4)
    assert buckets([one, one], "recstream_sync_lag_seconds") == {0.1: 100, 1.0: 200, np.inf: 200}
    assert histogram_quantile(0.99, buckets([one], "recstream_sync_lag_seconds")) == 0.982
    samples = [_Sample(0.0, 0, 0.0, [one, one]), _Sample(30.0, 2_000, 1.0, [one, one])]
    figures = sync_figures(samples)
    assert figures["sync_bytes_per_min"] == 24_000.0 and figures["sync_deltas_sent"] is None
    assert figures["sync_lag_p99_s"] == 0.982


def test_rates_are_timed_from_the_settled_group_and_cpu_over_the_same_window():
    def owned(*counts: int) -> list[dict[str, float]]:
        return [{"recstream_assigned_partitions": n} for n in counts]

    samples = [
        _Sample(10.0, 0, 4.0, owned(4, 0)),  # worker 1 alone, nothing applied yet
        _Sample(11.0, 500, 4.5, owned(4, 0)),  # worker 1 applies alone
        _Sample(12.0, 1_000, 5.5, owned(2, 2)),  # the group has settled
        _Sample(14.0, 3_100, 7.6, owned(2, 2)),
    ]
    figures = measure(samples, partitions=4, events=3_000, launched=0.0)
    assert figures["events_per_s"] == 1_050.0  # 2,100 events in 2 s
    assert figures["cpu_seconds_per_event"] == pytest.approx(0.001)
    assert figures["events_per_s_from_first"] == 750.0  # 3,000 from the scrape at 10 s
    assert figures["startup_s"] == 12.0 and figures["reapplied"] == 100
    assert figures["partitions_per_worker"] == [2, 2]


def test_cpu_seconds_come_from_utime_and_stime_of_a_proc_stat_line():
    line = "123 (python -c x) S 1 123 123 0 -1 4194304 500 0 0 0 1234 66 0 0 20 0 3 0 1 2 3"
    assert stat_cpu_s(line, 100) == pytest.approx(13.0)
    own = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert stat_cpu_s(own, os.sysconf("SC_CLK_TCK")) > 0


@pytest.mark.slow
def test_bench_scale_runs_one_worker_on_the_embedded_broker_and_reports(tmp_path):
    report_path = tmp_path / "scale.json"
    command = [
        sys.executable,
        "-c",
        "import sys; from streams.cli import main; sys.exit(main())",
        "bench",
        "scale",
        "--workers",
        "1",
        "--rounds",
        "1",
        "--events",
        "8000",
        "--report",
        str(report_path),
        "--plot",
        str(tmp_path / "scale.png"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    (run,) = report["runs"]
    (median,) = report["medians"]
    assert median["events_per_s"] == run["events_per_s"] and median["speedup"] == 1.0
    assert run["workers"] == 1 and run["applied"] == 8_000 and run["reapplied"] == 0
    assert run["events_per_s"] > 0 and run["cpu_seconds_per_event"] > 0
    assert run["tasks"]["click"]["labels"] > 0 and 0.5 < run["tasks"]["click"]["auc"] <= 1
    assert run["sync_lag_p99_s"] is None or run["sync_lag_p99_s"] >= 0
    assert run["broker_rss_mb"] > 0
    assert (tmp_path / "scale.png").stat().st_size > 0
    assert "events/s" in result.stdout
