"""What a score consumer sees: records that match the contract, and new items before any click."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from producers.client import EventPublisher
from producers.contract import SCHEMA_VERSION, CatalogItem, Event
from tests.kafka_readers import read_all
from tests.worker_harness import WorkerProcess, worker_env

pytestmark = pytest.mark.slow

FIELDS = {"schema", "user_id", "ts", "event_ts", "model_version", "items"}
ITEM_FIELDS = {"item_id", "p_click", "p_cart", "p_purchase", "score", "cold"}


@pytest.fixture
def worker(tmp_path, cli_env):
    process = WorkerProcess(worker_env(cli_env), tmp_path / "checkpoints")
    yield process.start()
    process.stop()


def _warm_up(broker, topics, worker, events: int = 6_000) -> list[Event]:
    from producers.simulator import Shop, ShopConfig

    records = list(
        Shop(
            ShopConfig(seed=11, events=events, users=300, initial_items=400, new_items=0, drifts=())
        ).records()
    )
    with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
        publisher.publish(records)
    worker.wait_for(
        lambda m: sum(v for k, v in m.items() if k.startswith("recstream_events_total{")) >= events,
        180,
        "warm-up applied",
    )
    return [r for r in records if isinstance(r, Event)]


def test_librdkafka_reads_scores_that_match_the_contract(broker, topics, worker):
    events = _warm_up(broker, topics, worker)
    scored_users = {e.user_id for e in events if e.type != "impression"}
    records = [json.loads(value) for _, value in read_all(broker.bootstrap, topics.scores)]
    assert records, "no scores published"
    keys = {key.decode() for key, _ in read_all(broker.bootstrap, topics.scores)}
    assert keys == {r["user_id"] for r in records} and keys <= scored_users
    for record in records:
        assert set(record) == FIELDS and record["schema"] == SCHEMA_VERSION
        assert isinstance(record["model_version"], int) and record["ts"] >= record["event_ts"]
        items = record["items"]
        assert 0 < len(items) <= 20 and len({i["item_id"] for i in items}) == len(items)
        assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
        for item in items:
            assert set(item) == ITEM_FIELDS and isinstance(item["cold"], bool)
            assert 0.0 <= item["p_purchase"] <= item["p_cart"] <= item["p_click"] <= 1.0


def test_a_new_catalog_item_is_scored_cold_before_anyone_interacts_with_it(broker, topics, worker):
    events = _warm_up(broker, topics, worker)
    clicks = [e for e in events if e.type == "click" and e.item is not None]
    user = Counter(e.user_id for e in clicks).most_common(1)[0][0]
    mine = [e for e in clicks if e.user_id == user]
    liked = [e.item for e in mine]
    category = Counter(c.category for c in liked).most_common(1)[0][0]
    brand = Counter(c.brand for c in liked if c.category == category).most_common(1)[0][0]
    price = sorted(c.price for c in liked if c.category == category)[0]
    now = int(time.time() * 1000)
    new_item = CatalogItem("brand-new-item", now, category=category, brand=brand, price=price)
    trigger = Event("trigger-1", now, "click", user, mine[-1].item_id)
    catalog = worker.total("recstream_catalog_items")
    with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
        publisher.publish([new_item])
        worker.wait_for(
            lambda m: m.get("recstream_catalog_items", 0) > catalog,
            60,
            "the new item reached the worker",
        )
        publisher.publish([trigger])

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mine = [
            json.loads(v)
            for k, v in read_all(broker.bootstrap, topics.scores, idle_s=1.0)
            if k.decode() == user
        ]
        latest = [r for r in mine if r["event_ts"] == now]
        if latest:
            break
    entries = {i["item_id"]: i for i in latest[-1]["items"]}
    assert "brand-new-item" in entries, f"top-K of {user}: {sorted(entries)}"
    assert entries["brand-new-item"]["cold"] is True
