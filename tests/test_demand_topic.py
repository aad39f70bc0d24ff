"""What a demand consumer sees: item forecasts on the compacted ``demand`` topic, as contracted."""

from __future__ import annotations

import json
import math
import signal

import pytest

from producers.client import EventPublisher
from producers.contract import CatalogItem, Event
from tests.kafka_readers import read_all, topic_names
from tests.worker_harness import WorkerProcess, worker_env

pytestmark = pytest.mark.slow

FIELDS = {"item_id", "horizon_s", "purchases", "carts", "model_version", "ts"}
HORIZON_S = 20.0


def test_librdkafka_reads_demand_forecasts_that_match_the_contract(
    broker, topics, tmp_path, cli_env
):
    from producers.simulator import Shop, ShopConfig

    assert topics.demand in topic_names(broker.bootstrap)
    worker = WorkerProcess(
        worker_env(cli_env), tmp_path / "checkpoints", "--demand-horizon", str(HORIZON_S)
    ).start()
    try:
        records = list(  # about 190 s of event time: points every 5 s, resolved after 20 s
            Shop(
                ShopConfig(
                    seed=3, events=3_000, users=300, initial_items=300, new_items=0, drifts=()
                )
            ).records()
        )
        catalog = {r.item_id for r in records if isinstance(r, CatalogItem)}
        events = [r for r in records if isinstance(r, Event)]
        with EventPublisher(broker.bootstrap, topics.events, topics.items) as publisher:
            publisher.publish(records)
        metrics = worker.wait_for(
            lambda m: (
                sum(v for k, v in m.items() if k.startswith("recstream_events_total{"))
                >= len(events)
                and m["recstream_demand_forecasts_published_total"] >= len(catalog)
            ),
            60,
            "events applied and forecasts sent",
        )
        published = metrics["recstream_demand_forecasts_published_total"]
        deviance = metrics["recstream_demand_deviance"]
        worker.signal(signal.SIGTERM)  # a clean stop: the producer is flushed
    finally:
        worker.stop()
    assert math.isfinite(deviance) and deviance >= 0  # demand points were resolved
    messages = read_all(broker.bootstrap, topics.demand)
    assert len(messages) >= published > 0
    last = events[-1].ts
    for key, value in messages:
        record = json.loads(value)
        assert set(record) == FIELDS
        assert key.decode() == record["item_id"] and record["item_id"] in catalog
        assert record["horizon_s"] == HORIZON_S
        for name in ("purchases", "carts"):
            assert isinstance(record[name], float) and 0.0 < record[name] < 1e6
        assert isinstance(record["model_version"], int) and record["model_version"] >= 0
        assert isinstance(record["ts"], int) and events[0].ts <= record["ts"] <= last
    items = {json.loads(value)["item_id"] for _, value in messages}
    assert len(items) == len(catalog)  # every catalog item got a forecast
