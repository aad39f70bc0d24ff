"""The simulated shop: a reproducible stream with a known truth behind it."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import pytest

from producers.contract import (
    CatalogItem,
    Event,
    encode_catalog_item,
    encode_event,
    event_to_dict,
    validate_event,
)
from producers.simulator import DEVICES, Drift, Shop, ShopConfig

SMALL = ShopConfig(users=500, initial_items=300, new_items=60, events=6_000, drifts=())


def wire(config: ShopConfig) -> list[bytes]:
    return [
        encode_event(r) if isinstance(r, Event) else encode_catalog_item(r)
        for r in Shop(config).records()
    ]


def funnel(records: list[Event | CatalogItem]) -> list[tuple]:
    return [
        (r.ts, r.type, r.user_id, r.item_id, r.session_id, r.context["device"])
        for r in records
        if isinstance(r, Event) and r.type != "impression"
    ]


def labelled_impressions(records: list[Event | CatalogItem]) -> list[tuple[Event, bool]]:
    clicked = {
        (r.session_id, r.item_id) for r in records if isinstance(r, Event) and r.type == "click"
    }
    return [
        (r, (r.session_id, r.item_id) in clicked)
        for r in records
        if isinstance(r, Event) and r.type == "impression"
    ]


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@pytest.fixture(scope="module")
def default_run() -> tuple[Shop, list[Event | CatalogItem]]:
    shop = Shop(ShopConfig(events=50_000))
    return shop, list(shop.records())


# ---------------------------------------------------------------- reproducibility


def test_the_same_config_gives_a_byte_identical_stream() -> None:
    assert wire(SMALL) == wire(SMALL)


def test_another_seed_gives_another_stream() -> None:
    other = ShopConfig(**{**SMALL.__dict__, "seed": 8})
    first, second = wire(SMALL), wire(other)
    assert first != second
    assert len(first) == len(second)


def test_event_ids_are_unique_and_follow_the_seed() -> None:
    events = [r for r in Shop(SMALL).records() if isinstance(r, Event)]
    assert [e.event_id for e in events] == [f"sim-7-{n}" for n in range(SMALL.events)]


SHOP_0_DIGEST = "f9f163309532ffe3a1fcbea785cae7d1a7657f66ab4cf1583a7d6afe225053bd"
"""sha256 of the records of ``SMALL`` with a taste shift at event 3,000 (:func:`fingerprint`:
every field but the purchases' quantities, drawn from a generator of their own), as the
simulator made them before shops existed (commit 30fe412): shop 0 is that shop, draw for
draw. A deliberate change of the simulator's draws changes it; nothing else may."""


def fingerprint(records: list[Event | CatalogItem]) -> str:
    """sha256 of the records' fields (not their wire form: the contract gained fields)."""
    rows = [
        repr((r.event_id, r.ts, r.type, r.user_id, r.item_id, r.item, r.session_id, r.context))
        if isinstance(r, Event)
        else repr((r.item_id, r.ts, r.category, r.brand, r.price))
        for r in records
    ]
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def test_shop_0_is_the_shop_of_before_shops_existed() -> None:
    config = ShopConfig(**{**SMALL.__dict__, "drifts": (Drift(3_000, "taste_shift"),)})
    assert config.shop == 0
    assert fingerprint(list(Shop(config).records())) == SHOP_0_DIGEST


def test_two_shops_share_the_world_but_no_user_item_or_event() -> None:
    drifts = (Drift(2_000, "taste_shift"),)
    first = Shop(ShopConfig(**{**SMALL.__dict__, "drifts": drifts}))
    second = Shop(ShopConfig(**{**SMALL.__dict__, "drifts": drifts, "shop": 1}))
    records = {shop.config.shop: list(shop.records()) for shop in (first, second)}
    events = {k: [r for r in rs if isinstance(r, Event)] for k, rs in records.items()}
    # one world: categories, brands, the brands' quality and the tastes of segments and
    # trends (also after the taste shift, which turns the trends alike in both)
    for world in ("_brand_quality", "_segment_department", "_segment_brand", "_global_category"):
        np.testing.assert_array_equal(getattr(first, world), getattr(second, world))
    assert first._brand_names == second._brand_names
    categories = [{i.category for i in shop.catalog.values()} for shop in (first, second)]
    assert len(categories[0] & categories[1]) >= 30  # of 35, a few rare in 360 items
    # their own users, items and events
    for field_name in ("user_id", "item_id", "event_id", "session_id"):
        mine = {getattr(e, field_name) for e in events[0]}
        theirs = {getattr(e, field_name) for e in events[1]}
        assert mine and theirs and not mine & theirs, field_name
    assert events[1][0].user_id.startswith("u1_") and events[1][0].item_id.startswith("i1_")
    assert not set(first.catalog) & set(second.catalog)
    assert not np.array_equal(first._item_appeal, second._item_appeal)
    assert first.drift_points == second.drift_points == [2_000]
    with pytest.raises(KeyError):
        second.truth(events[0][0].user_id, events[1][0].item_id)


def test_another_shop_of_the_same_config_replays_byte_for_byte() -> None:
    config = ShopConfig(**{**SMALL.__dict__, "shop": 2})
    assert wire(config) == wire(config) != wire(SMALL)


# ---------------------------------------------------------------- the default world


def test_the_default_shop_has_the_promised_size(default_run) -> None:
    shop, records = default_run
    config = shop.config
    assert (config.users, config.initial_items, config.new_items) == (20_000, 5_000, 2_000)
    items = [r for r in records if isinstance(r, CatalogItem)]
    assert len(items) == len(shop.catalog) == 7_000
    categories = {i.category for i in items}
    assert len(categories) >= 30
    assert all(c.count(".") == 1 for c in categories)
    assert len({c.split(".")[0] for c in categories}) == 8
    assert len({i.brand for i in items}) >= 100


def test_a_brand_lives_mostly_in_one_department(default_run) -> None:
    shop, _ = default_run
    departments: dict[str, Counter[str]] = defaultdict(Counter)
    for item in shop.catalog.values():
        departments[item.brand][item.category.split(".")[0]] += 1
    shares = [
        max(c.values()) / sum(c.values()) for c in departments.values() if sum(c.values()) >= 20
    ]
    assert len(shares) >= 50
    assert np.median(shares) > 0.7


def test_prices_are_positive_and_vary_by_category(default_run) -> None:
    shop, _ = default_run
    by_category: dict[str, list[float]] = defaultdict(list)
    for item in shop.catalog.values():
        by_category[item.category].append(item.price)
    assert all(p > 0 for prices in by_category.values() for p in prices)
    medians = [np.median(p) for p in by_category.values()]
    assert max(medians) / min(medians) > 5


def test_funnel_rates_look_like_a_shop(default_run) -> None:
    _, records = default_run
    events = [r for r in records if isinstance(r, Event)]
    counts = Counter(e.type for e in events)
    assert 0.03 <= counts["click"] / counts["impression"] <= 0.12
    # Conversions come up to 30 minutes after their step: count only closed windows.
    closed = events[-1].ts - 30 * 60_000
    done: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for e in events:
        done[e.type].add((e.session_id, e.item_id))
    clicks = [(e.session_id, e.item_id) for e in events if e.type == "click" and e.ts <= closed]
    carts = [(e.session_id, e.item_id) for e in events if e.type == "cart" and e.ts <= closed]
    cart_rate = sum(c in done["cart"] for c in clicks) / len(clicks)
    purchase_rate = sum(c in done["purchase"] for c in carts) / len(carts)
    assert 0.05 <= cart_rate <= 0.2
    assert 0.15 <= purchase_rate <= 0.5
    assert 0.01 <= cart_rate * purchase_rate <= 0.06  # purchases: a few percent of clicks


def test_user_activity_is_heavy_tailed(default_run) -> None:
    _, records = default_run
    sessions = Counter(
        r.user_id for r in records if isinstance(r, Event) and r.type == "impression"
    )
    top = sum(n for _, n in sessions.most_common(len(sessions) // 100))
    assert top / sum(sessions.values()) > 0.2  # the top 1% of users see over a fifth
    assert sum(1 for n in sessions.values() if n <= 10) > len(sessions) / 3


# ---------------------------------------------------------------- the wire


def test_every_event_passes_the_contract(default_run) -> None:
    _, records = default_run
    for record in records:
        if isinstance(record, Event):
            assert validate_event(event_to_dict(record)) == record
            assert record.item is not None and record.session_id
            assert record.context["device"] in DEVICES


def test_event_time_never_goes_back(default_run) -> None:
    _, records = default_run
    stamps = [r.ts for r in records if isinstance(r, Event)]
    assert all(a <= b for a, b in itertools.pairwise(stamps))
    assert stamps[0] == ShopConfig().start_ms


def test_the_stream_stops_after_the_configured_number_of_events(default_run) -> None:
    _, records = default_run
    assert sum(isinstance(r, Event) for r in records) == 50_000


def test_an_items_catalog_record_precedes_its_first_event(default_run) -> None:
    _, records = default_run
    published: dict[str, CatalogItem] = {}
    for record in records:
        if isinstance(record, CatalogItem):
            published[record.item_id] = record
        else:
            item = published[record.item_id]
            assert record.item == item.content
            assert item.ts <= record.ts


def test_new_items_arrive_during_the_run_and_are_shown_soon(default_run) -> None:
    _, records = default_run
    position: dict[str, int] = {}
    first_shown: dict[str, int] = {}
    events_seen = 0
    for record in records:
        if isinstance(record, CatalogItem):
            if events_seen:
                position[record.item_id] = events_seen
        else:
            if record.type == "impression" and record.item_id in position:
                first_shown.setdefault(record.item_id, events_seen)
            events_seen += 1
    assert len(position) == 2_000
    early = [i for i, at in position.items() if at < 45_000]
    assert sum(i in first_shown for i in early) / len(early) > 0.9
    waits = [first_shown[i] - position[i] for i in early if i in first_shown]
    assert np.median(waits) < 1_000


def test_without_impressions_the_same_funnel_is_emitted() -> None:
    with_impressions = list(Shop(ShopConfig(**{**SMALL.__dict__, "new_items": 0})).records())
    expected = funnel(with_impressions)
    quiet = ShopConfig(**{**SMALL.__dict__, "new_items": 0, "impressions": False, "events": 200})
    records = list(Shop(quiet).records())
    assert not any(isinstance(r, Event) and r.type == "impression" for r in records)
    assert len(expected) > 200
    assert funnel(records) == expected[:200]


# ---------------------------------------------------------------- the truth


def test_truth_many_agrees_with_truth(default_run) -> None:
    shop, _ = default_run
    rng = np.random.default_rng(0)
    users = [f"u{k}" for k in rng.integers(0, shop.config.users, 50)]
    items = [f"i{k}" for k in rng.integers(0, len(shop.catalog), 50)]
    devices = [DEVICES[k] for k in rng.integers(0, len(DEVICES), 50)]
    for given in (None, devices):
        many = shop.truth_many(users, items, given)
        one = [
            shop.truth(u, i, None if given is None else d)
            for u, i, d in zip(users, items, devices, strict=True)
        ]
        np.testing.assert_allclose(many, np.array(one))
        assert many.shape == (50, 3) and np.all((many > 0) & (many < 1))


def test_truth_knows_any_published_item_and_no_other() -> None:
    shop = Shop(SMALL)
    assert 0 < shop.truth("u499", "i299")[0] < 1  # never shown: the stream has not started
    with pytest.raises(KeyError):
        shop.truth("u0", "i300")  # a new item, not published yet
    with pytest.raises(KeyError):
        shop.truth("u500", "i0")


def test_the_truth_explains_the_clicks(default_run) -> None:
    shop, records = default_run
    pairs = labelled_impressions(records)
    clicked = np.array([c for _, c in pairs])
    p = shop.truth_many(
        [e.user_id for e, _ in pairs],
        [e.item_id for e, _ in pairs],
        [e.context["device"] for e, _ in pairs],
    )[:, 0]
    assert 0.75 < auc(clicked, p) < 0.92  # informative, not deterministic
    assert abs(p.mean() - clicked.mean()) < 0.1 * clicked.mean()  # calibrated


def test_a_taste_shift_changes_the_truth_at_its_event_index() -> None:
    config = ShopConfig(**{**SMALL.__dict__, "drifts": (Drift(3_000, "taste_shift"),)})
    shop = Shop(config)
    users = [f"u{k}" for k in range(0, 500, 5)]
    items = [f"i{k}" for k in range(0, 300, 3)]
    seen = 0
    before = after = None
    for record in shop.records():
        if isinstance(record, Event):
            seen += 1
            if seen == 1:
                start = shop.truth_many(users, items)
            if seen == 3_000:
                before = shop.truth_many(users, items)
                assert shop.drift_points == []
            if seen == 3_001:
                after = shop.truth_many(users, items)
    np.testing.assert_array_equal(start, before)
    changed = ~np.isclose(before[:, 0], after[:, 0])
    assert changed.mean() > 0.9
    assert shop.drift_points == [3_000]


def test_a_category_surge_raises_only_that_category() -> None:
    surge = Drift(2_000, "category_surge", category="home.kitchen", strength=1.5)
    shop = Shop(ShopConfig(**{**SMALL.__dict__, "drifts": (surge,)}))
    records = shop.records()
    for _ in range(SMALL.initial_items):
        next(records)
    items = list(shop.catalog)
    users, devices = ["u3"] * len(items), ["mobile"] * len(items)
    before = shop.truth_many(users, items, devices)
    for _ in records:
        pass
    after = shop.truth_many(users, items, devices)
    in_kitchen = np.array([shop.catalog[i].category == "home.kitchen" for i in items])
    assert in_kitchen.any()
    model = shop.config.truth_model
    quality = [model.click_weights[2], model.cart_weights[2], model.purchase_weights[2]]
    lift = logit(after[in_kitchen]) - logit(before[in_kitchen])
    np.testing.assert_allclose(lift, np.broadcast_to(np.multiply(quality, 1.5), lift.shape))
    np.testing.assert_allclose(after[~in_kitchen], before[~in_kitchen])
    assert shop.drift_points == [2_000]


def test_after_a_taste_shift_the_old_truth_predicts_clicks_clearly_worse() -> None:
    """A model that knew the shop before the shift loses log loss right after it."""
    drift_at, window = 20_000, 5_000
    drifting = Shop(ShopConfig(events=drift_at + window, drifts=(Drift(drift_at, "taste_shift"),)))
    steady = Shop(ShopConfig(events=drift_at + window, drifts=()))
    records = list(drifting.records())
    for _ in steady.records():
        pass
    events = [r for r in records if isinstance(r, Event)]
    after = labelled_impressions(events[drift_at:])
    clicked = np.array([c for _, c in after])
    args = ([e.user_id for e, _ in after], [e.item_id for e, _ in after])
    devices = [e.context["device"] for e, _ in after]

    def log_loss(p: np.ndarray) -> float:
        return float(-np.mean(np.where(clicked, np.log(p), np.log1p(-p))))

    fresh = log_loss(drifting.truth_many(*args, devices)[:, 0])
    stale = log_loss(steady.truth_many(*args, devices)[:, 0])
    assert drifting.drift_points == [drift_at]
    assert stale > 1.15 * fresh
    assert math.isfinite(stale)


def test_delay_scale_brings_conversions_closer_to_their_clicks():
    def cart_gaps(scale: float) -> list[int]:
        shop = Shop(
            ShopConfig(
                seed=4,
                events=30_000,
                users=2_000,
                initial_items=500,
                new_items=0,
                drifts=(),
                delay_scale=scale,
            )
        )
        clicks: dict[tuple[str, str], int] = {}
        gaps = []
        for record in shop.records():
            if isinstance(record, Event) and record.type == "click":
                clicks.setdefault((record.user_id, record.item_id), record.ts)
            elif isinstance(record, Event) and record.type == "cart":
                gaps.append(record.ts - clicks[(record.user_id, record.item_id)])
        return gaps

    minutes, seconds = np.median(cart_gaps(1.0)), np.median(cart_gaps(1 / 60))
    assert minutes > 60_000 and seconds < 31_000


def test_a_simulated_stream_is_valid_for_any_reader_clock_from_2021_on():
    from producers.contract import decode_event, encode_event

    jan_2021_ms = 1_609_459_200_000
    shop = Shop(ShopConfig(events=500, users=50, initial_items=40, new_items=5, drifts=()))
    events = [r for r in shop.records() if isinstance(r, Event)]
    assert all(decode_event(encode_event(e), now_ms=jan_2021_ms) == e for e in events)


def test_purchases_carry_quantities_drawn_around_the_expected_quantity() -> None:
    shop = Shop(ShopConfig(events=120_000, impressions=False, drifts=()))
    records = list(shop.records())
    events = [r for r in records if isinstance(r, Event)]
    bought = [e for e in events if e.type == "purchase"]
    assert len(bought) > 300
    assert all(e.quantity == 1 for e in events if e.type != "purchase")
    quantity = np.array([e.quantity for e in bought], dtype=float)
    expected = shop.expected_quantity([e.user_id for e in bought], [e.item_id for e in bought])
    assert quantity.min() >= 1 and expected.min() > 1
    assert abs(quantity.mean() - expected.mean()) < 4 * quantity.std() / math.sqrt(len(bought))
    # a user's volume and a department's matter: the expectation explains much of the spread
    assert np.corrcoef(quantity, expected)[0, 1] > 0.4


def test_volume_blind_quantities_average_over_users_with_the_department_kept() -> None:
    shop = Shop(ShopConfig(events=2_000, users=400, drifts=()))
    items = [e.item_id for e in shop.records() if isinstance(e, Event)][:30]
    draws = shop.predicted_quantities(items, 4_000, np.random.default_rng(3))
    assert draws.shape == (30, 4_000) and draws.min() >= 1
    every_user = [f"u{n}" for n in range(400)]
    for item, row in zip(items[:5], draws[:5], strict=True):  # the mean over the shop's users
        expected = shop.expected_quantity(every_user, [item] * 400).mean()
        assert abs(row.mean() - expected) < 0.1 * expected


def test_predicted_quantities_learn_a_buyer_from_its_earlier_orders() -> None:
    shop = Shop(ShopConfig(events=2_000, users=400, drifts=()))
    items = [e.item_id for e in shop.records() if isinstance(e, Event)][:30]
    users = [f"u{n}" for n in range(400)]
    expected = np.array([shop.expected_quantity(users, [item] * 400) for item in items])
    item, user = np.unravel_index(np.argmax(expected), expected.shape)  # the heaviest buyer
    heavy = expected[item, user]
    earlier = [(items[item], round(heavy))] * 30
    rng = np.random.default_rng(5)
    known, fresh = shop.predicted_quantities([items[item]] * 2, 4_000, rng, [earlier, []])
    assert abs(known.mean() - heavy) < 0.15 * heavy
    assert abs(fresh.mean() - expected[item].mean()) < 0.1 * expected[item].mean() < 0.5 * heavy


def test_quantities_leave_the_rest_of_the_stream_as_it_was() -> None:
    config = ShopConfig(events=20_000)
    without = [
        replace(r, quantity=1) if isinstance(r, Event) else r for r in Shop(config).records()
    ]
    drawn = Shop(config)
    drawn._quantity = lambda user, item: 1  # no draws at all
    assert without == list(drawn.records())
