"""Events become labelled samples: delayed funnel labels, sampled negatives, bounded memory."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from online_models.labels import LabelConfig, LabelResolver, Resolution
from producers.contract import CatalogItem, Event, ItemContent

MINUTE = 60_000
PHONE = ItemContent(category="electronics.phone", brand="acme", price=199.0)


def resolver(**overrides) -> LabelResolver:
    config = {"click_window_ms": 10 * MINUTE, "conversion_window_ms": 60 * MINUTE, **overrides}
    return LabelResolver(LabelConfig(**config))


def event(n, ts, kind, user="u1", item_id="i1", content=None, device=None) -> Event:
    context = {"device": device} if device else None
    return Event(f"e{n}", ts, kind, user, item_id, item=content, context=context)


def labels(samples) -> list[tuple]:
    return [(s.key, s.labels()) for s in samples]


def test_an_impression_is_scored_now_and_its_funnel_labels_arrive_as_events_do():
    r = resolver()
    shown = r.observe(event(1, 0, "impression", content=PHONE, device="mobile"))
    assert labels(shown.new) == [(0, (None, None, None))]
    assert shown.new[0].category == "electronics.phone" and shown.new[0].device == "mobile"
    assert labels(r.observe(event(2, MINUTE, "click")).resolved) == [(0, (1.0, None, None))]
    assert labels(r.observe(event(3, 2 * MINUTE, "cart")).resolved) == [(0, (None, 1.0, None))]
    done = r.observe(event(4, 3 * MINUTE, "purchase"))
    assert labels(done.resolved) == [(0, (None, None, 1.0))]
    assert done.resolved[0].price == 199.0
    assert r.open_samples == 0


def test_an_impression_nobody_clicks_turns_negative_when_its_window_closes():
    r = resolver()
    r.observe(event(1, 0, "impression"))
    assert r.advance(10 * MINUTE) == []  # the window still includes its last millisecond
    assert labels(r.advance(10 * MINUTE + 1)) == [(0, (0.0, 0.0, 0.0))]


def test_a_click_without_conversion_gets_negative_cart_and_purchase_after_the_window():
    r = resolver()
    r.observe(event(1, 0, "impression"))
    r.observe(event(2, 5 * MINUTE, "click"))  # the conversion window starts at the click
    assert r.advance(64 * MINUTE) == []
    assert labels(r.advance(66 * MINUTE)) == [(0, (None, 0.0, 0.0))]


def test_later_events_close_windows_in_event_time():
    r = resolver()
    r.observe(event(1, 0, "impression", item_id="a"))
    r.observe(event(2, 6 * MINUTE, "impression", item_id="b"))
    later = r.observe(event(3, 10 * MINUTE + 1, "impression", item_id="c"))
    assert labels(later.resolved) == [(0, (0.0, 0.0, 0.0))]
    assert labels(later.new) == [(2, (None, None, None))]


def test_a_far_future_event_is_clamped_and_does_not_close_other_users_impressions():
    r = resolver(max_skew_ms=5 * MINUTE)
    r.observe(event(1, 0, "impression", user="u1"), partition=0)
    r.observe(event(2, 0, "impression", user="u2"), partition=1)
    bad = r.observe(event(3, 24 * 60 * MINUTE, "impression", user="u3"), partition=2)
    assert bad.event.ts == 5 * MINUTE and bad.resolved == [] and r.counts["clamped"] == 1
    assert r.watermark == 0  # the other partitions have not moved
    for n, (user, part) in enumerate([("u1", 0), ("u2", 1)], start=4):
        clicked = r.observe(event(n, MINUTE, "click", user=user), partition=part)
        assert clicked.new == [] and [s.click for s in clicked.resolved] == [1.0]


def test_a_jump_confirmed_by_a_second_event_is_taken_as_a_quiet_spell():
    r = resolver(max_skew_ms=5 * MINUTE)
    r.observe(event(1, 0, "impression", item_id="a"))
    assert r.observe(event(2, 60 * MINUTE, "impression", item_id="b")).event.ts == 5 * MINUTE
    confirmed = r.observe(event(3, 60 * MINUTE + 1, "impression", item_id="c"))
    assert confirmed.event.ts == 60 * MINUTE + 1 and r.watermark == 60 * MINUTE + 1
    assert [s.key for s in confirmed.resolved] == [0, 1]  # the clamped one closed with it


def test_a_lagging_partition_holds_event_time_back_rather_than_closing_its_windows():
    r = resolver(idle_partition_ms=30 * MINUTE)
    r.observe(event(1, 0, "impression", user="slow"), partition=0)
    r.observe(event(2, 20 * MINUTE, "impression", user="fast"), partition=1)
    assert r.watermark == 0
    late_click = r.observe(event(3, MINUTE, "click", user="slow"), partition=0)
    assert [s.click for s in late_click.resolved] == [1.0] and late_click.new == []
    fast_click = r.observe(event(4, 21 * MINUTE, "click", user="fast"), partition=1)
    assert [s.click for s in fast_click.resolved] == [1.0]


def test_an_idle_partition_drops_out_and_windows_still_close():
    r = resolver(idle_partition_ms=15 * MINUTE)
    r.observe(event(1, 0, "impression", user="idle"), partition=0)
    r.observe(event(2, 0, "impression", user="busy"), partition=1)
    closed = []
    for n in range(1, 5):  # partition 0 sends nothing more
        busy = event(2 + n, n * 5 * MINUTE, "cart", user="busy", item_id=f"x{n}")
        closed += r.observe(busy, partition=1).resolved
    assert r.watermark == 20 * MINUTE
    assert [(s.user_id, s.labels()) for s in closed if s.key == 0] == [("idle", (0.0, 0.0, 0.0))]


def test_a_checkpoint_without_a_clock_still_loads():
    r = resolver()
    r.observe(event(1, 0, "impression"))
    state = r.state_dict()
    del state["clock"]
    del state["counts"]["clamped"]
    restored = resolver()
    restored.load_state_dict(state)
    assert restored.watermark == 0 and restored.counts["clamped"] == 0
    assert labels(restored.advance(11 * MINUTE)) == [(0, (0.0, 0.0, 0.0))]


def test_a_cart_with_no_click_seen_implies_the_click():
    r = resolver()
    r.observe(event(1, 0, "impression"))
    assert labels(r.observe(event(2, MINUTE, "cart")).resolved) == [(0, (1.0, 1.0, None))]
    assert labels(r.observe(event(3, 2 * MINUTE, "purchase")).resolved) == [(0, (None, None, 1.0))]


def test_a_funnel_event_with_no_open_sample_opens_a_positive_one():
    r = resolver()
    bought = r.observe(event(1, 0, "purchase", item_id="i7", content=PHONE))
    assert labels(bought.new) == [(0, (1.0, 1.0, 1.0))]
    assert bought.resolved == [] and r.open_samples == 0
    clicked = r.observe(event(2, MINUTE, "click", item_id="i8"))
    assert labels(clicked.new) == [(1, (1.0, None, None))]
    assert clicked.to_learn() == clicked.new


def test_a_repeated_click_on_an_open_sample_is_not_a_new_sample():
    r = resolver()
    r.observe(event(1, 0, "impression"))
    r.observe(event(2, MINUTE, "click"))
    again = r.observe(event(3, 2 * MINUTE, "click"))
    assert again.new == [] and again.resolved == []
    assert r.counts["repeats"] == 1


def test_the_latest_unclicked_impression_gets_the_click():
    r = resolver()
    r.observe(event(1, 0, "impression"))
    r.observe(event(2, MINUTE, "impression"))
    assert labels(r.observe(event(3, 2 * MINUTE, "click")).resolved) == [(1, (1.0, None, None))]
    assert labels(r.advance(11 * MINUTE)) == [(0, (0.0, 0.0, 0.0))]


def test_duplicated_event_ids_are_applied_once_within_the_dedupe_window():
    r = resolver(dedupe_events=3)
    r.observe(event(1, 0, "impression"))
    assert r.observe(event(1, 0, "impression")) == Resolution(duplicate=True)
    assert r.counts["duplicates"] == 1
    for n in range(2, 6):
        r.observe(event(n, 0, "impression", item_id=f"x{n}"))
    assert r.observe(event(1, 0, "impression")).new  # forgotten after 3 newer ids


def test_an_id_just_inside_the_window_is_a_duplicate_and_just_outside_is_applied():
    r = resolver(dedupe_events=100)
    for n in range(100):
        r.observe(event(n, 0, "impression", item_id=f"x{n}"))
    assert r.observe(event(0, 0, "impression")).duplicate  # 100th most recent id
    r.observe(event(100, 0, "impression", item_id="x100"))
    assert not r.observe(event(0, 0, "impression")).duplicate  # now the 101st


def test_remembered_ids_stay_bounded_on_a_long_stream_of_new_ids():
    r = resolver(dedupe_events=1_000)
    for n in range(20_000):
        r.observe(event(n, n, "impression", item_id=f"x{n % 50}"))
    assert r.remembered_ids == 1_000
    assert len(r.state_dict()["seen_ids"]) == 1_000


def test_content_comes_from_the_catalog_when_the_event_has_none():
    r = resolver()
    r.observe_catalog(CatalogItem("i1", 0, category="books", brand="pub", price=9.5))
    sample = r.observe(event(1, 0, "impression")).new[0]
    assert (sample.category, sample.brand, sample.price) == ("books", "pub", 9.5)


def test_without_impressions_a_batchs_clicks_come_with_negatives_from_the_same_batch():
    r = resolver(impressions=False, negatives_per_click=3, seed=7)
    for n in range(20):
        assert (
            r.observe(event(n, n, "click", user=f"v{n}", item_id=f"i{n}", content=PHONE)).new == []
        )
    assert r.observe(event(100, 100, "impression", item_id="i9")).new == []
    assert r.counts["ignored_impressions"] == 1 and r.clicks_in_batch == 20
    made = r.close_batch()
    assert len(made) == 20 * 4 and r.clicks_in_batch == 0
    for n in range(20):
        positive, *negatives = made[4 * n : 4 * n + 4]
        assert positive.labels() == (1.0, None, None) and positive.item_id == f"i{n}"
        for negative in negatives:
            assert negative.labels() == (0.0, 0.0, 0.0) and negative.weight == 1.0
            assert negative.item_id != f"i{n}" and negative.user_id == f"v{n}"
            assert negative.ts == n and negative.category == "electronics.phone"
    assert [s.logit_offset for s in made] == pytest.approx([-math.log(3 / 20)] * 80)  # k Q(j)
    assert len({s.key for s in made}) == len(made)


def test_in_batch_negatives_follow_the_click_shares_and_carry_the_correction():
    r = resolver(impressions=False, negatives_per_click=1, seed=3)
    made = []
    for n in range(4000):
        item = "hot" if n % 2 else f"i{n % 40}"  # 'hot' has half of all clicks
        r.observe(event(n, n, "click", user=f"v{n}", item_id=item))
        if n % 100 == 99:
            made += r.close_batch()
    negatives = [s for s in made if s.click == 0.0]
    hot = [s for s in negatives if s.item_id == "hot"]
    # drawn with its share of the clicks, 1/2, by the half of the clicks that are not its own
    assert 0.2 < len(hot) / len(negatives) < 0.35
    assert [s.logit_offset for s in hot] == pytest.approx([-math.log(0.5)] * len(hot))
    rare = [s for s in negatives if s.item_id != "hot"]
    assert all(s.logit_offset > 2.0 for s in rare)  # -log(1 * 1/100) for an item clicked once


def test_q_is_an_items_share_of_the_recent_clicks_not_of_its_small_window():
    """In a window of eight clicks every item has one click in eight: Q taken there could
    not tell an item of one click in twenty from one of one in a thousand."""
    r = resolver(
        impressions=False,
        negatives_per_click=1,
        negative_window_items=8,
        negative_pool_items=1_000,
        seed=2,
    )
    offsets: dict[str, list[float]] = {"warm": [], "niche": []}
    for n in range(4_000):
        item = f"warm{n // 2 % 10}" if n % 2 == 0 else f"niche{n}"  # warm: 1 click in 20 each
        r.observe(event(n, 1_000 * n, "click", user=f"u{n}", item_id=item))
        for sample in r.close_batch():
            if sample.click == 1.0 and n >= 1_000:  # once the recent clicks are a full span
                family = "warm" if sample.item_id.startswith("warm") else "niche"
                offsets[family].append(sample.logit_offset)
    assert len(offsets["warm"]) > 1_000 and len(offsets["niche"]) > 1_000
    assert np.mean(offsets["warm"]) == pytest.approx(math.log(20), abs=0.1)
    assert offsets["niche"] == pytest.approx([math.log(1_000)] * len(offsets["niche"]))


def test_items_new_to_the_stream_are_as_common_among_negatives_as_among_positives():
    """Drawing from items seen *before* a click made 'never seen' mean 'positive'."""
    r = resolver(impressions=False, negatives_per_click=4, seed=5)
    seen: set[str] = set()
    new_share = {0.0: [], 1.0: []}
    for batch in range(50):
        fresh = {f"new{batch}-{n}" for n in range(20)}
        items = sorted(fresh) + [f"old{n}" for n in range(20)]
        for n, item in enumerate(items):
            r.observe(
                event(1000 * batch + n, 1000 * batch + n, "click", user=f"u{n}", item_id=item)
            )
        for sample in r.close_batch():
            new_share[sample.click].append(sample.item_id not in seen)
        seen |= set(items)
    positives, negatives = np.mean(new_share[1.0]), np.mean(new_share[0.0])
    assert positives > 0.4 and abs(negatives - positives) < 0.05


def test_at_a_trickle_clicks_wait_for_a_window_whose_new_items_are_drawn_alike():
    """One click per micro-batch: drawing each batch's negatives from earlier clicks made
    every negative an item seen before, and 'never seen' meant 'positive'."""
    r = resolver(impressions=False, negatives_per_click=4, seed=5, negative_window_items=8)
    seen: set[str] = set()
    new_share = {0.0: [], 1.0: []}
    windows = 0
    for n in range(2_000):
        item = f"new{n}" if n % 2 else f"old{n % 10}"
        r.observe(event(n, 1_000 * n, "click", user=f"u{n % 7}", item_id=item))
        made = r.close_batch()
        windows += bool(made)
        for sample in made:
            new_share[sample.click].append(sample.item_id not in seen)
        if not r.clicks_in_batch:  # the window's items count as seen from the next window on
            seen |= {f"new{k}" if k % 2 else f"old{k % 10}" for k in range(n + 1)}
    positives, negatives = np.mean(new_share[1.0]), np.mean(new_share[0.0])
    assert positives > 0.4 and abs(negatives - positives) < 0.05
    assert 100 < windows < 1_000  # windows of several clicks, not one


def test_a_waiting_click_keeps_its_labels_and_an_old_window_is_drawn_however_small():
    r = resolver(impressions=False, negative_window_items=16, negative_window_ms=MINUTE, seed=1)
    r.observe(event(1, 1_000, "click", "u1", "a"))
    cart = r.observe(event(2, 2_000, "cart", "u1", "a"))
    assert cart.resolved == [] and r.close_batch() == []  # the cart waits with its click
    r.observe(event(3, 3_000, "click", "u2", "b"))
    assert r.close_batch() == [] and r.clicks_in_batch == 2
    r.observe(event(4, 1_000 + MINUTE, "click", "u3", "c"))  # the first click is a minute old
    made = r.close_batch()
    positives = [(s.item_id, s.labels()) for s in made if s.click == 1.0]
    clicked = (1.0, None, None)
    assert positives == [("a", (1.0, 1.0, None)), ("b", clicked), ("c", clicked)]
    assert all(s.item_id in "abc" for s in made) and r.clicks_in_batch == 0
    purchase = r.observe(event(5, 2_000 + MINUTE, "purchase", "u1", "a"))
    assert labels(purchase.resolved) == [(made[0].key, (None, None, 1.0))]  # after its positive


def test_the_end_of_a_stream_draws_the_clicks_still_waiting():
    r = resolver(impressions=False, negative_window_items=16)
    r.observe(event(1, 1_000, "click", "u1", "a"))
    r.observe(event(2, 1_500, "click", "u2", "b"))
    assert r.close_batch() == []
    assert sorted(s.item_id for s in r.close_batch(final=True) if s.click) == ["a", "b"]


def test_open_samples_are_bounded_and_the_earliest_deadline_closes_first():
    r = resolver(max_pending=2)
    r.observe(event(1, 0, "impression", item_id="a"))
    r.observe(event(2, 1, "impression", item_id="b"))
    third = r.observe(event(3, 2, "impression", item_id="c"))
    assert labels(third.resolved) == [(0, (0.0, 0.0, 0.0))]
    assert r.open_samples == 2 and r.counts["forced_closes"] == 1


def random_stream(seed: int, n: int) -> list[Event]:
    rng = random.Random(seed)
    events, ts = [], 0
    for i in range(n):
        ts += rng.randrange(0, 20_000)
        kind = rng.choices(["impression", "click", "cart", "purchase"], [6, 3, 1, 1])[0]
        events.append(
            event(rng.randrange(n), ts, kind, f"u{rng.randrange(5)}", f"i{rng.randrange(8)}")
        )
        if i == n // 3:
            events.append(events[-1])  # an exact duplicate
    return events


def emissions(r: LabelResolver, events: list[Event], batch: int = 50, done: int = 0) -> list[tuple]:
    """What the resolver emits over ``events`` in batches of ``batch`` events of the stream,
    whose first ``done`` events were applied before."""
    out = []
    for n, e in enumerate(events, start=done + 1):
        res = r.observe(e)
        out += [("new", s.key, s.item_id, s.labels()) for s in res.new]
        out += [("upd", s.key, s.item_id, s.labels()) for s in res.resolved]
        if n % batch == 0:
            out += [("new", s.key, s.item_id, s.labels()) for s in r.close_batch()]
    out += [("new", s.key, s.item_id, s.labels()) for s in r.close_batch()]
    return out + [("end", s.key, s.item_id, s.labels()) for s in r.flush()]


def test_every_label_is_emitted_once_and_a_late_label_follows_a_positive_stage():
    for impressions in (True, False):
        r = resolver(impressions=impressions, click_window_ms=60_000, conversion_window_ms=300_000)
        seen: dict[int, list] = {}
        for _, key, _, labs in emissions(r, random_stream(11, 3000)):
            seen.setdefault(key, []).append(labs)
        for history in seen.values():
            for task in range(3):
                emitted = [labs[task] for labs in history if labs[task] is not None]
                assert len(emitted) == 1, history
            for labs in history:
                if labs == (None, None, None):
                    continue  # an impression, scored before any label
                first = next(t for t in range(3) if labs[t] is not None)
                assert all(labs[t] is not None for t in range(first, 3)) or labs[first] == 1.0
                if labs[first] == 0.0:
                    assert labs[first:] == (0.0,) * (3 - first)
        assert r.open_samples == 0


def test_a_restored_resolver_continues_exactly_where_the_saved_one_was():
    events = random_stream(5, 2000)
    config = {"impressions": False, "click_window_ms": 60_000, "conversion_window_ms": 300_000}
    whole = emissions(resolver(**config), events)
    first = resolver(**config)
    head = []
    for n, e in enumerate(events[:990], start=1):  # a batch still open when it is saved
        res = first.observe(e)
        head += [("new", s.key, s.item_id, s.labels()) for s in res.new]
        head += [("upd", s.key, s.item_id, s.labels()) for s in res.resolved]
        if n % 50 == 0:
            head += [("new", s.key, s.item_id, s.labels()) for s in first.close_batch()]
    state = json.loads(json.dumps(first.state_dict()))  # plain values only
    second = resolver(**config)
    second.load_state_dict(state)
    assert head + emissions(second, events[990:], done=990) == whole


def test_a_partition_running_far_behind_closes_its_windows_on_its_own_time():
    resolver = LabelResolver(LabelConfig(click_window_ms=60_000, idle_partition_ms=600_000))
    minute = 60_000
    resolver.observe(Event("a0", 16 * minute, "impression", "u0", "i0"), partition=0)
    shown = resolver.observe(Event("b0", 0, "impression", "u1", "i1"), partition=1)  # 16 min late
    for n in range(1, 5):  # both partitions keep sending, partition 1 still 16 minutes behind
        resolver.observe(Event(f"a{n}", 16 * minute + n * 1_000, "impression", "u0", "i0"), 0)
        resolver.observe(Event(f"b{n}", n * 1_000, "impression", "u2", "i2"), partition=1)
    click = resolver.observe(Event("b-click", 5_000, "click", "u1", "i1"), partition=1)
    assert [(s.key, s.labels()) for s in click.resolved] == [(shown.new[0].key, (1.0, None, None))]
    assert click.new == []  # the click found its impression: no separate sample


def test_a_silent_partition_still_closes_its_windows_on_event_time():
    resolver = LabelResolver(LabelConfig(click_window_ms=60_000, idle_partition_ms=600_000))
    shown = resolver.observe(Event("b0", 0, "impression", "u1", "i1"), partition=1)
    closed = []
    for n in range(1, 30):  # only partition 0 sends, a minute at a time
        closed += resolver.observe(Event(f"a{n}", n * 60_000, "click", "u0", "i0"), 0).resolved
    assert (shown.new[0].key, (0.0, 0.0, 0.0)) in [(s.key, s.labels()) for s in closed]
