"""Another worker keeps a partition's label state from its changes: enough to take it over."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from online_models.feedback import ProvisionalNegatives
from online_models.label_stage import LabelStage
from online_models.labels import LabelConfig
from online_models.partition_log import PartitionLog
from producers.contract import Event
from tests.test_partition_state import (
    CONFIG,
    ORIGIN,
    SECOND,
    batches,
    hand_over,
    shop,
    step,
    stream,
)


def sent(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as another worker reads it (through JSON)."""
    return orjson.loads(orjson.dumps(value))


def small_stage() -> LabelStage:
    """A stage whose dedup window and wait ring are small enough to fill on the test stream."""
    stage = LabelStage(
        LabelConfig(
            click_window_ms=CONFIG.click_window_ms,
            conversion_window_ms=CONFIG.conversion_window_ms,
            provisional_waits_ms=CONFIG.provisional_waits_ms,
            dedupe_events=300,
        )
    )
    stage.waits = ProvisionalNegatives(CONFIG.provisional_waits_ms, capacity=64)
    return stage


CLICKS_ONLY = LabelConfig(
    impressions=False,
    conversion_window_ms=CONFIG.conversion_window_ms,
    provisional_waits_ms=CONFIG.provisional_waits_ms,
)


@pytest.mark.parametrize(
    "stage",
    [LabelStage(CONFIG), small_stage(), LabelStage(CLICKS_ONLY)],
    ids=["default", "small", "clicks-only"],
)
def test_the_log_of_a_partitions_changes_holds_what_its_owner_would_export(stage):
    log = PartitionLog()
    checked = 0
    for n, batch in enumerate(batches(stream())):
        step(stage, batch)
        for partition in (0, 1):
            log.apply(partition, sent(stage.partition_changes(partition)))
        if n % 25 == 0 or n < 8:  # and while the balanced start holds labels back
            for partition in (0, 1):
                assert log.export(partition) == sent(stage.export_partition(partition))
                checked += bool(stage.export_partition(partition)["resolver"]["open"])
    assert checked > 50
    restored = PartitionLog.from_state(sent(log.state_dict()))
    assert restored.export(0) == log.export(0) == sent(stage.export_partition(0))
    log.drop(1)
    assert 1 not in log and log.export(1) is None and 0 in log
    with pytest.raises(KeyError):  # changes without the state they follow
        log.apply(1, sent(stage.partition_changes(1)))


def test_a_partition_taken_over_from_the_log_learns_as_its_old_owner_would_have():
    log = PartitionLog()
    hand_over(lambda x: log.export(0), lambda x: log.apply(0, sent(x.partition_changes(0))))


def test_the_changes_of_a_batch_are_as_big_as_the_batch_not_as_the_open_samples():
    hour = 3_600 * SECOND  # no window closes during the stream: the open samples pile up
    config = LabelConfig(
        click_window_ms=hour,
        conversion_window_ms=hour,
        provisional_waits_ms=CONFIG.provisional_waits_ms,
    )
    stage = LabelStage(config)
    pairs = [(e, 0) for e in shop(seed=3, until=1_200 * SECOND)]
    sizes, open_samples = {}, {}
    for n, batch in enumerate(batches(pairs, every=10 * SECOND)):
        step(stage, batch)
        changes = stage.partition_changes(0)
        sizes[n], open_samples[n] = len(orjson.dumps(changes)), stage.resolver.open_samples
    early, late = range(5, 15), range(100, 110)  # open samples: ~55 then ~600
    assert sum(open_samples[n] for n in late) > 5 * sum(open_samples[n] for n in early)
    assert sum(sizes[n] for n in late) < 1.5 * sum(sizes[n] for n in early)
    assert len(orjson.dumps(stage.export_partition(0))) > 10 * sizes[110]


def test_changes_are_empty_when_nothing_changed_and_whole_after_an_import_or_a_drop():
    x, y = LabelStage(CONFIG), LabelStage(CONFIG)
    step(x, [(Event("e1", ORIGIN, "impression", "a1", "i1"), 0)])
    assert x.partition_changes(0)["full"]
    nothing = x.partition_changes(0)
    assert not nothing["full"]
    resolver = nothing["resolver"]
    assert resolver["open"] == resolver["gone"] == resolver["seen_ids"] == []
    assert nothing["waits"] == {"waiting": [], "waiting_like": [], "assumed": []}
    assert len(orjson.dumps(nothing)) < 300  # the times, and the names
    step(x, [(Event("e2", ORIGIN + SECOND, "click", "a1", "i1"), 0)])
    assert [row[0] for row in x.partition_changes(0)["resolver"]["open"]] == [0]
    y.import_partition(0, x.export_partition(0))
    y.partition_changes(0)
    y.import_partition(0, x.export_partition(0))
    assert y.partition_changes(0)["full"]
    x.drop_partition(0)
    whole = x.partition_changes(0)
    assert whole["full"] and whole["resolver"]["open"] == []
    x.load_state_dict(y.state_dict())
    assert x.partition_changes(0)["full"]
