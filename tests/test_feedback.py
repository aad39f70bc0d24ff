"""Provisional negatives: "not yet" becomes "no" after a wait, and is never learned twice."""

from online_models.feedback import ProvisionalNegatives
from online_models.labels import LabelConfig, LabelResolver, TrackedSample
from producers.contract import Event

SECOND = 1_000


def shown(key: int, ts: int = 0) -> TrackedSample:
    return TrackedSample("u1", f"i{key}", ts=ts, key=key)


def test_an_impression_without_a_click_is_learned_as_a_negative_once_its_wait_is_over():
    waits = ProvisionalNegatives(waits_ms=(10 * SECOND, 60 * SECOND, 60 * SECOND))
    waits.scored([shown(1)])
    assert waits.due() == []
    waits.scored([shown(2, ts=10 * SECOND)])  # the clock reaches the first one's deadline
    assert [(s.key, s.labels()) for s in waits.due()] == [(1, (0.0, 0.0, 0.0))]
    closure = TrackedSample("u1", "i1", ts=0, key=1, click=0.0, cart=0.0, purchase=0.0)
    assert waits.admit([closure]) == []  # already learned as a negative


def test_a_click_in_time_is_learned_as_given_and_then_waits_for_its_cart():
    waits = ProvisionalNegatives(waits_ms=(10 * SECOND, 60 * SECOND, 60 * SECOND))
    waits.scored([shown(1)])
    click = TrackedSample("u1", "i1", ts=0, key=1, click=1.0)
    assert waits.admit([click]) == [click]
    waits.scored([shown(2, ts=45 * SECOND)])
    assert waits.due() == []
    waits.scored([shown(3, ts=60 * SECOND)])
    assert [(s.key, s.labels()) for s in waits.due()] == [
        (2, (0.0, 0.0, 0.0)),  # no click by 55 s
        (1, (None, 0.0, 0.0)),  # clicked, no cart by 60 s
    ]


def test_a_late_positive_is_still_learned():
    waits = ProvisionalNegatives(waits_ms=(10 * SECOND, 60 * SECOND, 60 * SECOND))
    waits.scored([shown(1), shown(2, ts=20 * SECOND)])
    assert [s.key for s in waits.due()] == [1]
    late = TrackedSample("u1", "i1", ts=0, key=1, click=1.0)
    assert waits.admit([late]) == [late]
    cart = TrackedSample("u1", "i1", ts=0, key=1, cart=1.0)
    assert waits.admit([cart]) == [cart]


def test_unkeyed_samples_pass_untouched():
    waits = ProvisionalNegatives(waits_ms=(1, 1, 1))
    from online_models.base import Sample

    plain = Sample("u1", "i1", ts=5, click=0.0)
    waits.scored([Sample("u1", "i2", ts=5)])
    assert waits.admit([plain]) == [plain] and waits.due() == [] and len(waits) == 0


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
        for sample in [*waits.admit(out.to_learn()), *waits.due()]:
            for task, label in enumerate(sample.labels()):
                if label is not None:
                    learned[(sample.key, task)] = learned.get((sample.key, task), 0) + 1
    for sample in [*waits.admit(resolver.flush()), *waits.due()]:
        for task, label in enumerate(sample.labels()):
            if label is not None:
                learned[(sample.key, task)] = learned.get((sample.key, task), 0) + 1
    assert set(learned.values()) == {1}
    assert {(key, task) for key, task in learned if key < 5} == {
        (key, task) for key in range(5) for task in range(3)
    }
