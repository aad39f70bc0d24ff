"""A partition moves between workers: its labels continue where the last owner's state left off."""

from __future__ import annotations

import random

import orjson

from online_models.label_stage import LabelBatch, LabelStage
from online_models.labels import LabelConfig
from producers.contract import CatalogItem, Event
from streams.candidates import CandidatePool

SECOND = 1_000
CONFIG = LabelConfig(
    click_window_ms=60 * SECOND,
    conversion_window_ms=600 * SECOND,
    provisional_waits_ms=(10 * SECOND, 120 * SECOND, 120 * SECOND),
)
ORIGIN = 1_764_500_000_000
"""Event time of the first session (an epoch time, as the shop's events carry)."""
HAND_OVER = ORIGIN + 300 * SECOND
"""The event time partition 0 moves from stage X to stage Y."""


def shop(seed: int = 7, until: int = 3_000 * SECOND) -> list[Event]:
    """Partition 0's events (users ``a*``): sessions of impressions, clicks, carts, purchases;
    and funnels across the hand-over: a click before it and its purchase after it, within
    the cart wait (``a-fast``) and after it (``a-slow``); an impression learned as not
    clicked before it, clicked after it (``a-late``)."""
    rng = random.Random(seed)
    events: list[Event] = []
    for start in range(ORIGIN, ORIGIN + until, 5 * SECOND):
        user = f"a{rng.randrange(8)}"
        for item in rng.sample(range(30), 3):
            events.append(Event("", start, "impression", user, f"i{item}"))
            if rng.random() < 0.3:
                clicked = start + rng.randrange(1, 20) * SECOND
                events.append(Event("", clicked, "click", user, f"i{item}"))
                if rng.random() < 0.5:
                    carted = clicked + rng.randrange(1, 200) * SECOND
                    events.append(Event("", carted, "cart", user, f"i{item}"))
                    if rng.random() < 0.5:
                        bought = carted + rng.randrange(1, 200) * SECOND
                        events.append(Event("", bought, "purchase", user, f"i{item}"))
    events.append(Event("", HAND_OVER - 20 * SECOND, "impression", "a-late", "i98"))
    events.append(Event("", HAND_OVER + 5 * SECOND, "click", "a-late", "i98"))  # after its wait
    for user, bought in (("a-fast", HAND_OVER + 30 * SECOND), ("a-slow", HAND_OVER + 200 * SECOND)):
        events.append(Event("", HAND_OVER - 40 * SECOND, "impression", user, "i99"))
        events.append(Event("", HAND_OVER - 30 * SECOND, "click", user, "i99"))
        events.append(Event("", bought, "purchase", user, "i99"))
    events.sort(key=lambda e: e.ts)
    return [Event(f"p0-{n}", e.ts, e.type, e.user_id, e.item_id) for n, e in enumerate(events)]


def mirrored(events: list[Event]) -> list[Event]:
    """The same events in partition 1 (users ``b*``): both partitions' clocks move alike."""
    return [
        Event(e.event_id.replace("p0", "p1"), e.ts, e.type, "b" + e.user_id[1:], e.item_id)
        for e in events
    ]


def batches(events: list[tuple[Event, int]], every: int = 2 * SECOND):
    """The (event, partition) pairs in micro-batches of ``every`` ms of event time."""
    batch: list[tuple[Event, int]] = []
    for pair in events:
        if batch and pair[0].ts // every != batch[0][0].ts // every:
            yield batch
            batch = []
        batch.append(pair)
    if batch:
        yield batch


def step(stage: LabelStage, batch: list[tuple[Event, int]]) -> LabelBatch:
    new, resolved = [], []
    for event, partition in batch:
        out = stage.observe(event, partition)
        new += out.new
        resolved += out.to_learn()
    sampled = stage.close_batch()
    return stage.labels(new + sampled, resolved + sampled)


def learned(batch: LabelBatch, prefix: str) -> list[tuple]:
    """What is learned of users whose id starts with ``prefix``: keys aside, keys are local."""
    return [
        (s.user_id, s.item_id, s.ts, s.labels(), reason)
        for s, reason in zip(batch.samples, batch.reasons(), strict=True)
        if s.user_id.startswith(prefix)
    ]


def stream() -> list[tuple[Event, int]]:
    zero = shop()
    pairs = [(e, 0) for e in zero] + [(e, 1) for e in mirrored(zero)]
    return sorted(pairs, key=lambda pair: (pair[0].ts, pair[1]))


def hand_over(carry, after_each=lambda x: None):
    """Stage X sees partitions 0 and 1, Y only 1 until the hand-over, when it imports
    ``carry(x)`` (``after_each(x)`` runs after each batch before it); both then see both.
    Returns what each learns of partition 0 afterwards, the stages and the batches before.
    The learning is checked the same (the funnels of an old owner's samples included)."""
    events = stream()
    before = [b for b in batches(events) if b[0][0].ts < HAND_OVER]
    after = [b for b in batches(events) if b[0][0].ts >= HAND_OVER]
    x, y = LabelStage(CONFIG), LabelStage(CONFIG)
    for batch in before:
        step(x, batch)
        step(y, [(event, partition) for event, partition in batch if partition == 1])
        after_each(x)
    y.import_partition(0, carry(x))
    in_x, in_y = [], []
    for batch in after:
        in_x += learned(step(x, batch), "a")
        in_y += learned(step(y, batch), "a")
    assert in_y == in_x and len(in_x) > 100
    reasons = {(user, labels, reason) for user, _, _, labels, reason in in_y}
    assert ("a-fast", (None, 1.0, 1.0), "resolved") in reasons  # clicked before, bought after
    assert ("a-slow", (None, 1.0, 1.0), "corrected") in reasons  # after its cart wait
    assert ("a-late", (1.0, None, None), "corrected") in reasons  # learned as 0 before
    return in_y, x, y, before


def test_the_new_owner_learns_a_partition_taken_over_as_the_old_one_would_have():
    in_y, x, y, before = hand_over(lambda x: orjson.loads(orjson.dumps(x.export_partition(0))))
    assert any(labels == (0.0, 0.0, 0.0) for _, _, ts, labels, _ in in_y if ts < HAND_OVER)
    again = next(event for event, partition in before[-1] if partition == 0)
    assert y.observe(again, 0).duplicate and x.observe(again, 0).duplicate


def test_a_partition_dropped_learns_nothing_more_here_and_its_pending_keys_are_returned():
    events = stream()
    before = [b for b in batches(events) if b[0][0].ts < HAND_OVER]
    after = [b for b in batches(events) if b[0][0].ts >= HAND_OVER]
    kept, dropping = LabelStage(CONFIG), LabelStage(CONFIG)
    users: dict[int, str] = {}
    for batch in before:
        step(kept, batch)
        for event, partition in batch:
            users.update((s.key, s.user_id) for s in dropping.observe(event, partition).new)
        dropping.labels([], [])  # the same labels as kept's, stepped by hand to see the keys
    assert kept.state_dict()["resolver"]["open"] == dropping.state_dict()["resolver"]["open"]
    first_new_key = dropping.resolver.new_key()
    dropped = dropping.drop_partition(0)
    still = [
        s.key
        for batch in after
        for s in step(kept, batch).samples
        if s.key < first_new_key and s.user_id.startswith("a")
    ]
    assert still and set(still) <= set(dropped)
    assert {users[key][0] for key in dropped} == {"a"}
    for batch in after:
        assert learned(step(dropping, [pair for pair in batch if pair[1] == 1]), "a") == []
    assert dropping.export_partition(0)["resolver"] == {
        "open": [],
        "seen_ids": [],
        "clock": None,
        "batch_clicks": [],
    }


def test_an_export_is_plain_json_and_does_not_grow_with_the_stream():
    config = LabelConfig(
        click_window_ms=60 * SECOND,
        conversion_window_ms=600 * SECOND,
        provisional_waits_ms=(10 * SECOND, 120 * SECOND, 120 * SECOND),
        dedupe_events=500,
    )
    stage = LabelStage(config)
    sizes = {}
    pairs = [(e, 0) for e in shop(seed=11, until=20_000 * SECOND)]
    for batch in batches(pairs):
        step(stage, batch)
        hour = (batch[0][0].ts - ORIGIN) // 3_600_000
        if hour in (1, 5) and hour not in sizes:  # after an hour and after five
            export = stage.export_partition(0)
            assert orjson.loads(orjson.dumps(export)) == export
            sizes[hour] = len(orjson.dumps(export))
            assert len(export["resolver"]["seen_ids"]) == 500
    assert sizes[5] < 1.5 * sizes[1]


def test_a_pool_hands_its_changed_users_recent_items_to_another():
    a, b = CandidatePool(), CandidatePool()
    for pool in (a, b):  # the catalog comes from its own topic, to every worker
        for n in [*range(20), 77]:
            pool.observe_catalog(CatalogItem(f"i{n}", 0, category="home.lamp"))
    a.observe([Event(f"e{n}", n, "click", f"u{n % 3}", f"i{n}") for n in range(20)])
    b.observe([Event("x1", 0, "click", "u0", "i77")])
    b.apply_user_changes(a.take_user_changes())
    recent = a.state_dict()["user_items"]["u0"]
    assert b.state_dict()["user_items"]["u0"] == recent
    assert [item for item, _ in b.candidates("u0")][: len(recent)] == recent
    assert a.take_user_changes() == {}
    a.observe([Event("e99", 99, "cart", "u1", "i3")])
    a.forget_user("u2")
    changes = a.take_user_changes()
    assert changes == {"u1": a.state_dict()["user_items"]["u1"]}  # an erasure is not sent:
    b.apply_user_changes(orjson.loads(orjson.dumps(changes)))  # every worker reads control
    assert "u2" not in a.state_dict()["user_items"] and "u2" not in a.state_dict()["changed"]


def test_a_lagging_partition_taken_over_still_closes_its_windows_on_its_own_time():
    late = 200 * SECOND  # partition 0's events arrive this far behind partition 1's
    zero = shop(until=1_000 * SECOND)
    pairs = [(e, 0, e.ts + late) for e in zero] + [(e, 1, e.ts) for e in mirrored(zero)]
    pairs.sort(key=lambda pair: pair[2])
    x, y = LabelStage(CONFIG), LabelStage(CONFIG)
    in_x, in_y = [], []
    handed_over = False
    for event, partition, arrival in pairs:
        if arrival >= HAND_OVER + late and partition == 1 and not handed_over:
            y.import_partition(0, x.export_partition(0))  # partition 1's event next
            handed_over = True
        if handed_over:
            in_x += [s for s in x.observe(event, partition).resolved if s.user_id[0] == "a"]
            in_y += [s for s in y.observe(event, partition).resolved if s.user_id[0] == "a"]
        else:
            x.observe(event, partition)
            if partition == 1:
                y.observe(event, partition)
    labels = [(s.user_id, s.item_id, s.ts, s.labels()) for s in in_x]
    assert [(s.user_id, s.item_id, s.ts, s.labels()) for s in in_y] == labels and labels


def test_labels_held_back_at_a_fresh_start_move_with_their_partition():
    x, y = LabelStage(CONFIG), LabelStage(CONFIG)
    step(x, [(Event("e1", 0, "impression", "a1", "i1"), 0)])
    step(y, [(Event("e0", 0, "impression", "b1", "i1"), 1)])
    step(x, [(Event("e2", 1 * SECOND, "click", "a1", "i1"), 0)])  # held: the start is 10 s
    y.import_partition(0, x.export_partition(0))
    assert x.drop_partition(0) == [0]
    later = [(Event("e3", 11 * SECOND, "impression", "b1", "i2"), 1)]
    first = step(y, [*later, (Event("e4", 11 * SECOND, "impression", "a2", "i2"), 0)])
    assert learned(first, "a") == [("a1", "i1", 0, (1.0, None, None), "resolved")]
