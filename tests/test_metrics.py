"""Operators' view: every metric docs/metrics.md lists, with live values, that promtool accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request

import pytest

from online_models.base import TASKS
from online_models.drift import DETECTORS
from producers.client import EventPublisher
from tests.worker_harness import WorkerProcess, worker_env

pytestmark = pytest.mark.slow

DESIGN_METRICS = {
    "recstream_events_total": "events by type",
    "recstream_invalid_events_total": "invalid events by reason",
    "recstream_model_updates_total": "model updates",
    "recstream_model_version": "model version",
    "recstream_auc": "per-task rolling AUC",
    "recstream_logloss": "per-task rolling log loss",
    "recstream_label_rate": "per-task label rate",
    "recstream_mean_prediction": "per-task mean prediction",
    "recstream_drift_detections_total": "drift detections by task and detector",
    "recstream_feature_psi": "feature PSI by feature",
    "recstream_event_to_score_latency_seconds_bucket": "event-to-score latency histogram",
    "recstream_update_duration_seconds_bucket": "update duration histogram",
    "recstream_scores_published_total": "scores published",
    "recstream_embedding_rows": "embedding rows by table",
    "recstream_cold_items": "cold items",
}


def test_metrics_endpoint_has_every_design_metric_live_and_passes_promtool(
    tmp_path, cli_env, broker, topics
):
    from producers.simulator import Shop, ShopConfig

    worker = WorkerProcess(
        worker_env(cli_env),
        tmp_path / "checkpoints",
        "--click-window",
        "5",
        "--conversion-window",
        "10",
    )
    worker.start()
    try:
        records = list(
            Shop(
                ShopConfig(
                    seed=2, events=12_000, users=400, initial_items=300, new_items=20, drifts=()
                )
            ).records()
        )
        with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
            publisher.publish(records)
        worker.wait_for(
            lambda m: (
                m.get("recstream_model_version", 0) > 0
                and m.get("recstream_scores_published_total", 0) > 0
                and m.get("recstream_feature_psi{feature=category}", 0) > 0  # computed, not 0
                and m.get("recstream_embedding_rows{table=item}", 0) > 0
            ),
            180,
            "live values",
        )
        with urllib.request.urlopen(worker.url, timeout=5) as response:
            text = response.read().decode()
    finally:
        worker.stop()
    names = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    missing = {name: what for name, what in DESIGN_METRICS.items() if name not in names}
    assert not missing
    drift_series = set(
        re.findall(r'recstream_drift_detections_total\{detector="(\w+)",task="(\w+)"\}', text)
    )
    assert drift_series == {(d, t) for d in DETECTORS for t in TASKS}  # a panel line each
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: apt-get install prometheus (make test does, as root)")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
