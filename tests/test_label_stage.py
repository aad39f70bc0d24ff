"""The label stage: one label stream, with reasons, whose waits follow event time."""

from __future__ import annotations

from online_models.label_stage import LabelStage
from online_models.labels import LabelConfig
from producers.contract import Event

WAITS = (1_000, 30_000, 30_000)


def stage_of(**changes) -> LabelStage:
    return LabelStage(LabelConfig(click_window_ms=10_000, provisional_waits_ms=WAITS, **changes))


def step(stage: LabelStage, *events: tuple[Event, int]):
    """Observe events (with their partitions) as one batch; return its label batch."""
    new, resolved = [], []
    for event, partition in events:
        out = stage.observe(event, partition)
        new += out.new
        resolved += out.to_learn()
    sampled = stage.close_batch()
    return stage.labels(new + sampled, resolved + sampled)


def test_an_event_stamped_far_ahead_does_not_make_every_wait_due():
    stage = stage_of(max_skew_ms=300_000)
    step(stage, (Event("s0", 1_000, "impression", "u0", "i0"), 0))
    step(stage, (Event("s1", 1_100, "impression", "u1", "i1"), 1))
    far = step(stage, (Event("far", 86_000_000, "impression", "u2", "i2"), 0))  # clamped +5 min
    assert far.samples == []  # event time is still ~1 s: nobody waited a second yet
    later = step(stage, (Event("s2", 2_200, "impression", "u3", "i3"), 1))
    assert [s.item_id for s in later.samples] == ["i0", "i1"] and later.reasons() == [
        "provisional",
        "provisional",
    ]


def test_every_label_has_its_reason_and_the_stage_counts_them():
    stage = stage_of()
    step(stage, (Event("e0", 0, "impression", "u0", "i0"), 0))  # the balanced start ends at 1 s
    step(stage, (Event("e1", 1_000, "impression", "u1", "i1"), 0))
    click = step(stage, (Event("e2", 1_500, "click", "u1", "i1"), 0))
    assert click.reasons() == ["resolved"] and click.samples[0].labels() == (1.0, None, None)
    waited = step(stage, (Event("e3", 40_000, "impression", "u9", "i9"), 0))  # cart wait over
    assert [(s.item_id, s.labels()) for s in waited.samples] == [("i1", (None, 0.0, 0.0))]
    assert waited.reasons() == ["provisional"]
    assert stage.learned == {"resolved": 1, "corrected": 0, "provisional": 2}


def test_a_fresh_stage_holds_its_first_clicks_until_their_negatives_are_due():
    stage = stage_of()
    step(stage, (Event("e1", 1_000, "impression", "u1", "i1"), 0))
    step(stage, (Event("e2", 1_100, "impression", "u2", "i2"), 0))
    early = step(stage, (Event("e3", 1_300, "click", "u1", "i1"), 0))
    assert early.samples == []  # a click alone would teach a fresh model that all is clicked
    restored = stage_of()
    restored.load_state_dict(stage.state_dict())
    first = step(restored, (Event("e4", 2_200, "impression", "u3", "i3"), 0))
    assert [(s.item_id, s.labels()) for s in first.samples] == [
        ("i1", (1.0, None, None)),
        ("i2", (0.0, 0.0, 0.0)),
    ]
    assert first.reasons() == ["resolved", "provisional"]
    later = step(restored, (Event("e5", 2_300, "click", "u3", "i3"), 0))
    assert later.reasons() == ["resolved"]  # from then on a click is learned at once


def test_without_impressions_nothing_is_held():
    stage = stage_of(impressions=False, negative_window_items=1)  # the resolver holds none
    clicked = step(stage, (Event("e1", 1_000, "click", "u1", "i1"), 0))
    assert clicked.reasons() and set(clicked.reasons()) == {"resolved"}
