"""``recstream bench throughput`` prints figures and writes a report and a plot."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import RECSTREAM


def test_bench_throughput_reports_figures_and_plots(tmp_path):
    report_path, plot_path = tmp_path / "tp.json", tmp_path / "tp.png"
    done = subprocess.run(
        [
            RECSTREAM,
            "bench",
            "throughput",
            "--events",
            "3000",
            "--batch",
            "300",
            "--report",
            str(report_path),
            "--plot",
            str(plot_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(report_path.read_text())
    assert json.loads(done.stdout) == report
    assert report["events"] == 3000 and report["batches"] == 10
    assert report["events_per_s"] > 0 and report["users_ranked_per_batch"] > 0
    assert report["batch_ms"]["p50"] <= report["batch_ms"]["p99"]
    assert len(report["segments"]) == 5 and report["checkpoint"]["megabytes"] > 0
    assert "events/s on one core" in done.stderr
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
