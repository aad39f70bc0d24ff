"""What a score consumer sees: records that match the contract, new items before any click,
and no item removed or withdrawn from the catalog."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from producers.client import EventPublisher
from producers.contract import SCHEMA_VERSION, CatalogItem, CatalogRemoval, Event, ItemContent
from tests.kafka_readers import read_all
from tests.worker_harness import WorkerProcess, worker_env

pytestmark = pytest.mark.slow

FIELDS = {"schema", "user_id", "ts", "event_ts", "model_version", "seq", "items"}
ITEM_FIELDS = {"item_id", "p_click", "p_cart", "p_purchase", "score", "cold", "expected_value"}


@pytest.fixture
def worker(tmp_path, cli_env):
    process = WorkerProcess(worker_env(cli_env), tmp_path / "checkpoints")
    yield process.start()
    process.stop()


def _warm_up(broker, topics, worker, events: int = 6_000) -> list[Event | CatalogItem]:
    """Publish a simulated shop's first ``events`` events with its catalog and wait until the
    worker applied them; returns what was published."""
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
    return records


def _events(records: list[Event | CatalogItem]) -> list[Event]:
    return [r for r in records if isinstance(r, Event)]


def _content(records: list[Event | CatalogItem]) -> dict[str, ItemContent]:
    """Every published item's content: from the catalog, or from an event that carried it."""
    content = {e.item_id: e.item for e in _events(records) if e.item is not None}
    for item in records:
        if isinstance(item, CatalogItem):
            content[item.item_id] = ItemContent(item.category, item.brand, item.price)
    return content


def test_librdkafka_reads_scores_that_match_the_contract(broker, topics, worker):
    events = _events(_warm_up(broker, topics, worker))
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
            assert isinstance(item["expected_value"], float) and item["expected_value"] >= 0.0


def test_a_new_catalog_item_is_scored_cold_before_anyone_interacts_with_it(broker, topics, worker):
    events = _events(_warm_up(broker, topics, worker))
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


def _latest_lists(broker, topics) -> dict[str, list[str]]:
    """Each user's latest top-K on the score topic, as item ids."""
    latest = {}
    for _, value in read_all(broker.bootstrap, topics.scores, idle_s=1.0):
        record = json.loads(value)
        latest[record["user_id"]] = [entry["item_id"] for entry in record["items"]]
    return latest


def _lists_ranked_after(broker, topics, clicks: list[Event]) -> list[list[str]]:
    """Publish ``clicks`` (one per user, all at one ``ts`` no other event has) and return the
    lists they triggered: ranked after everything the worker had applied before them."""
    (ts,) = {click.ts for click in clicks}
    with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
        publisher.publish(clicks)
    deadline = time.monotonic() + 60
    while True:
        records = [json.loads(v) for _, v in read_all(broker.bootstrap, topics.scores, idle_s=0.5)]
        triggered = [r for r in records if r["event_ts"] == ts]
        if len(triggered) >= len(clicks) or time.monotonic() > deadline:
            assert len(triggered) == len(clicks), f"{len(triggered)} of {len(clicks)} lists"
            return [[entry["item_id"] for entry in r["items"]] for r in triggered]


def test_a_removed_or_withdrawn_item_is_in_no_list_ranked_after_it_and_available_brings_it_back(
    broker, topics, worker
):
    """Acceptance 1 of issue 16, on the real broker and worker.

    The two items in most users' lists: one gets a tombstone, the other
    ``available: false`` and then ``available: true``. After each catalog
    message has been applied (seen on /metrics), the users who had the item
    click it (its content in the event): none of the lists this triggers
    lists a removed or withdrawn item; once it is available again, it is back.
    """
    records = _warm_up(broker, topics, worker, events=3_000)
    latest = _latest_lists(broker, topics)
    listed = Counter(item for items in latest.values() for item in items)
    (gone, gone_in), (paused, paused_in) = listed.most_common(2)
    assert gone_in >= 20 and paused_in >= 20, f"{len(latest)} lists: {listed.most_common(5)}"
    content = _content(records)

    def clicks(item: str, ts: int) -> list[Event]:
        users = sorted(user for user, items in latest.items() if item in items)
        return [Event(f"{item}-{ts}-{u}", ts, "click", u, item, content[item]) for u in users]

    now = int(time.time() * 1000)
    with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
        assert publisher.publish([CatalogRemoval(gone)]).items_sent == 1  # a tombstone
    worker.wait_for(
        lambda m: m.get("recstream_catalog_items_removed_total") == 1, 30, "tombstone applied"
    )
    after_tombstone = _lists_ranked_after(broker, topics, clicks(gone, now))
    assert [items for items in after_tombstone if gone in items] == []

    def availability(available: bool) -> CatalogItem:
        c = content[paused]
        return CatalogItem(paused, now, c.category, c.brand, c.price, available=available)

    with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
        publisher.publish([availability(False)])
    worker.wait_for(
        lambda m: m.get("recstream_catalog_items_withdrawn") == 1, 30, "withdrawal applied"
    )
    withdrawn = _lists_ranked_after(broker, topics, clicks(paused, now + 1))
    assert [items for items in withdrawn if paused in items] == []

    with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
        publisher.publish([availability(True)])
    worker.wait_for(lambda m: m.get("recstream_catalog_items_withdrawn") == 0, 30, "back")
    back = _lists_ranked_after(broker, topics, clicks(paused, now + 2))
    print(
        f"lists: {len(latest)}; {gone} in {gone_in}, {paused} in {paused_in}; "
        f"{paused} back in {sum(paused in items for items in back)} of {len(back)}"
    )
    assert sum(paused in items for items in back) >= len(back) // 2
