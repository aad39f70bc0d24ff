"""Provisional negatives: "not yet" becomes "no" after a wait, and is never learned twice."""

import math

from online_models.feedback import ProvisionalNegatives
from online_models.labels import LabelConfig, LabelResolver, TrackedSample
from online_models.layout import label_matrix
from producers.contract import Event

SECOND = 1_000


def admit(waits, samples):
    """The samples ``waits`` lets through."""
    admitted = waits.admit(samples, label_matrix(samples)).learn
    return [s for s, keep in zip(samples, admitted, strict=True) if keep]


def due(waits):
    """``(key, labels)`` of the samples now due, ``None`` for an unknown label."""
    samples, labels = waits.due()
    return [
        (s.key, tuple(None if math.isnan(v) else v for v in row))
        for s, row in zip(samples, labels.tolist(), strict=True)
    ]


def learned_labels(waits, samples):
    """What a learner learns now: admitted samples' labels, then the due ones'."""
    admitted = admit(waits, samples)
    return [(s.key, s.labels()) for s in admitted] + due(waits)


def shown(key: int, ts: int = 0) -> TrackedSample:
    return TrackedSample("u1", f"i{key}", ts=ts, key=key)


def test_an_impression_without_a_click_is_learned_as_a_negative_once_its_wait_is_over():
    waits = ProvisionalNegatives(waits_ms=(10 * SECOND, 60 * SECOND, 60 * SECOND))
    waits.scored([shown(1)])
    assert due(waits) == []
    waits.scored([shown(2, ts=10 * SECOND)])  # the clock reaches the first one's deadline
    assert due(waits) == [(1, (0.0, 0.0, 0.0))]
    closure = TrackedSample("u1", "i1", ts=0, key=1, click=0.0, cart=0.0, purchase=0.0)
    assert admit(waits, [closure]) == []  # already learned as a negative


def test_a_click_in_time_is_learned_as_given_and_then_waits_for_its_cart():
    waits = ProvisionalNegatives(waits_ms=(10 * SECOND, 60 * SECOND, 60 * SECOND))
    waits.scored([shown(1)])
    click = TrackedSample("u1", "i1", ts=0, key=1, click=1.0)
    assert admit(waits, [click]) == [click]
    waits.scored([shown(2, ts=45 * SECOND)])
    assert due(waits) == []
    waits.scored([shown(3, ts=60 * SECOND)])
    assert due(waits) == [
        (2, (0.0, 0.0, 0.0)),  # no click by 55 s
        (1, (None, 0.0, 0.0)),  # clicked, no cart by 60 s
    ]


def test_a_late_positive_is_still_learned():
    waits = ProvisionalNegatives(waits_ms=(10 * SECOND, 60 * SECOND, 60 * SECOND))
    waits.scored([shown(1), shown(2, ts=20 * SECOND)])
    assert [key for key, _ in due(waits)] == [1]
    late = TrackedSample("u1", "i1", ts=0, key=1, click=1.0)
    assert admit(waits, [late]) == [late]
    cart = TrackedSample("u1", "i1", ts=0, key=1, cart=1.0)
    assert admit(waits, [cart]) == [cart]


def test_unkeyed_samples_pass_untouched():
    waits = ProvisionalNegatives(waits_ms=(1, 1, 1))
    from online_models.base import Sample

    plain = Sample("u1", "i1", ts=5, click=0.0)
    waits.scored([Sample("u1", "i2", ts=5)])
    assert admit(waits, [plain]) == [plain] and due(waits) == [] and len(waits) == 0


def test_with_the_resolver_every_label_is_learned_exactly_once_per_task():
    resolver = LabelResolver(
        LabelConfig(click_window_ms=60 * SECOND, conversion_window_ms=3_600_000)
    )
    waits = ProvisionalNegatives(waits_ms=(30 * SECOND, 1_800_000, 1_800_000))
    learned: dict[tuple[int, int], int] = {}
    events = [Event(f"s{k}", k * SECOND, "impression", "u1", f"i{k}") for k in range(5)]
    events += [Event("c1", 5 * SECOND, "click", "u1", "i1")]
    events += [Event("a1", 600 * SECOND, "cart", "u1", "i1")]
    events += [Event(f"t{k}", 4_000 * SECOND + k, "impression", "u2", "x") for k in range(2)]
    for event in events:
        out = resolver.observe(event)
        waits.scored(out.new)
        for key, labels in learned_labels(waits, out.to_learn()):
            for task, label in enumerate(labels):
                if label is not None:
                    learned[(key, task)] = learned.get((key, task), 0) + 1
    for key, labels in learned_labels(waits, resolver.flush()):
        for task, label in enumerate(labels):
            if label is not None:
                learned[(key, task)] = learned.get((key, task), 0) + 1
    assert set(learned.values()) == {1}
    assert {(key, task) for key, task in learned if key < 5} == {
        (key, task) for key in range(5) for task in range(3)
    }
