"""Run ``recstream worker`` as a real process against the test broker, and watch it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from streams.broker import free_port
from streams.checkpoint import read_checkpoint
from streams.demo import scrape
from tests.conftest import RECSTREAM


class WorkerProcess:
    """A worker process with its metrics port, checkpoint directory and log file."""

    def __init__(
        self,
        env: dict[str, str],
        checkpoint_dir: Path,
        *extra: str,
        checkpoint_interval_s: float = 2.0,
    ) -> None:
        self.env = env
        self.checkpoint_dir = checkpoint_dir
        self.extra = [*extra, "--checkpoint-interval", str(checkpoint_interval_s)]
        self.port = free_port()
        self.log = checkpoint_dir.parent / f"worker-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self, timeout_s: float = 90.0) -> WorkerProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    RECSTREAM,
                    "worker",
                    "--metrics-port",
                    str(self.port),
                    "--checkpoint-dir",
                    str(self.checkpoint_dir),
                    *self.extra,
                ],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        self.wait_for(
            lambda m: m.get("recstream_assigned_partitions", 0) > 0,
            timeout_s,
            "partitions assigned",
        )
        return self

    def metrics(self) -> dict[str, float]:
        return scrape(self.url)

    def total(self, name: str) -> float:
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(name + "{"))

    def wait_for(self, condition, timeout_s: float, what: str) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        metrics: dict[str, float] = {}
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"worker died: {self.tail()}"
            metrics = self.metrics() or metrics
            if metrics and condition(metrics):
                return metrics
            time.sleep(0.25)
        applied = sum(v for k, v in metrics.items() if k.startswith("recstream_events_total{"))
        raise AssertionError(
            f"timed out waiting for {what} ({applied:.0f} events applied, "
            f"partitions {metrics.get('recstream_assigned_partitions')}); "
            f"log: {self.tail()}"
        )

    def checkpoint_covers(self) -> int:
        """How many input messages the newest checkpoint covers (0 when there is none)."""
        paths = sorted(self.checkpoint_dir.glob("checkpoint-*.pt"))
        return sum(read_checkpoint(paths[-1]).offsets.values()) if paths else 0

    def wait_for_checkpoint(self, count: int, timeout_s: float = 120.0) -> None:
        """Wait until the newest checkpoint covers ``count`` messages, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.checkpoint_covers() < count:
            assert self.process.poll() is None, f"worker died: {self.tail()}"
            assert time.monotonic() < deadline, f"no checkpoint covers {count}; log: {self.tail()}"
            time.sleep(0.25)

    def signal(self, sig: int, timeout_s: float = 120.0) -> int:
        """Send a signal and wait for the exit (``timeout_s`` guards a hang); return its code."""
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.signal(signal.SIGKILL)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def worker_env(cli_env: dict[str, str]) -> dict[str, str]:
    return {
        **cli_env,
        "PYTHONUNBUFFERED": "1",
        **{k: v for k, v in os.environ.items() if k.startswith("RECSTREAM_TANSU")},
    }
