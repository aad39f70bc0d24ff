"""The private Faust/aiokafka hooks of the bench are where streams.bench.faust_hooks expects."""

import asyncio
import tomllib
from pathlib import Path

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.bench import faust_hooks
from streams.bench.faust_hooks import CHECKED_VERSIONS, hook_problems, use_fetch_wait, version_drift

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_versions_have_every_hook_point():
    assert hook_problems() == []
    assert version_drift() == []


def test_the_checked_versions_are_the_pinned_ones():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for package, checked in CHECKED_VERSIONS.items():
        assert f"{package}=={checked}" in project["dependencies"]


def test_a_moved_hook_point_is_named(monkeypatch):
    monkeypatch.setattr(faust_hooks, "_ORIGINAL_FACTORY", None)
    assert any("_create_worker_consumer" in p for p in hook_problems())


def test_a_worker_that_no_longer_uses_the_fetch_wait_attribute_is_named(monkeypatch):
    async def start(self):  # an aiokafka whose start reads another attribute
        return self.fetch_wait

    monkeypatch.setattr(faust_hooks.aiokafka.AIOKafkaConsumer, "start", start)
    assert any("_fetch_max_wait_ms" in p for p in hook_problems())


def _fetch_wait_of_a_new_worker_consumer() -> int:
    async def build() -> int:
        app = faust.App("hooks-test", broker="kafka://127.0.0.1:1", web_enabled=False)
        thread = faust_aiokafka.AIOKafkaConsumerThread(app.consumer)
        return thread._create_worker_consumer(app.transport)._fetch_max_wait_ms

    return asyncio.run(build())


@pytest.mark.parametrize("wait", [7, 10, 250])
def test_the_worker_consumer_faust_builds_uses_our_fetch_wait(wait):
    use_fetch_wait(wait)
    try:
        assert _fetch_wait_of_a_new_worker_consumer() == wait
    finally:
        use_fetch_wait(1500)  # Faust's own wait, for the rest of the session
