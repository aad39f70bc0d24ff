"""``recstream bench throughput --kafka``: every runner reads the whole stream off a real broker."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import RECSTREAM

pytestmark = pytest.mark.slow


def test_the_worker_and_its_peers_each_apply_the_whole_stream(tmp_path):
    report_path, plot_path = tmp_path / "kafka.json", tmp_path / "kafka.png"
    done = subprocess.run(
        [
            RECSTREAM,
            "bench",
            "throughput",
            "--kafka",
            "--events",
            "4000",
            "--runs",
            "1",
            "--report",
            str(report_path),
            "--plot",
            str(plot_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert json.loads(done.stdout) == report
    assert report["events"] == 4000 and len(report["rounds"]) == 1
    for runner in ("in_process", "worker", "faust_passthrough", "client_reader"):
        assert report[runner]["events_per_s"] > 0, runner
    split = report["worker"]["cpu_split"]
    assert 0 <= split["pipeline"] <= 1 and split["message_path"] == pytest.approx(
        1 - split["pipeline"], abs=1e-3
    )
    assert report["worker_ratio"] == pytest.approx(
        report["worker"]["events_per_s"] / report["in_process"]["events_per_s"], rel=1e-2
    )
    assert "worker / in-process" in done.stderr
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
