"""A seeded simulated shop whose true click, cart and purchase probabilities are known.

The shop is recstream's main data source (demo, producer, quality bench). It
yields contract records: first the initial catalog as :class:`CatalogItem`
records, then :class:`Event` records (impressions, clicks, carts, purchases)
in non-decreasing event time, with new items published on the way, each
before any event mentions it. The same :class:`ShopConfig` gives a
byte-identical stream.

The world
    Categories are dotted paths (``"electronics.phone"``): 8 departments with
    4-5 subcategories each, 35 in all. Each of 120 brands lives in one home
    department (items of a department take one of its brands 85% of the time).
    Prices are log-normal per category, shifted by a price tier per brand.
    An item's *appeal* (its own quality) is its brand's quality plus an item
    residual. Users belong to one of a few *segments* (archetypes); activity
    is heavy-tailed (Zipf-like), so a few hundred users come back often.

The truth (all on the logit scale, parameters in :class:`TruthModel`)
    For user ``u``, item ``i`` (department ``d``, category ``c``, brand ``b``,
    relative price ``z`` = standardised log price within its category) and
    session device ``v``::

        affinity = dept_u[d] + cat_u[c]            # content taste
        brand    = brand_u[b]                      # brand taste
        quality  = appeal_i + surge[c]             # the item's own quality
        price    = -beta_u * z                     # price sensitivity
        logit p(task) = w_task . (affinity, brand, quality, price)
                        + bias_task + device_task[v]

    with ``task`` in click, cart-given-click, purchase-given-cart. The tasks
    share every part but weigh them differently (cart leans on price,
    purchase on brand and quality), so multi-task sharing helps without the
    tasks being the same. A user's tastes are ``global trend + segment +
    individual``, the individual part small: most of the signal is
    learnable from content, a few segments and item appeal. The biases are
    solved at start so that random (user, item) pairs meet the model's base
    rates whatever the seed; slates favour liked and popular items, so the
    click rate on impressions is higher (about 7-10% with the defaults).

A session
    A step picks a user (by activity), a device (mostly the user's own), and
    shows a slate of 5-10 items drawn from four sources: popular items (by
    decayed clicks), bestsellers of departments the user likes, random items
    and the newest arrivals (so cold items get exposure). Each impression is
    clicked with p_click (2-30 s later); a click is carted 1-30 minutes later
    with p(cart|click); a cart is bought 1-30 minutes after that with
    p(purchase|cart). Pending conversions wait in a heap and are emitted in
    event-time order among later events, so a stream's last half hour lacks
    some of its conversions. Sessions start ``sessions_per_second`` apart on
    average in event time: 200k events with impressions span about 3.5 hours.

Impressions off
    With ``impressions=False`` the same process runs (the random draws of a
    session do not depend on what is emitted) but impressions are not sent,
    so ``events`` then covers about 12 times as many sessions. New items and
    drifts are scheduled by wire-event index, so the funnel events equal
    those of the stream with impressions exactly when neither is scheduled
    (``new_items=0, drifts=()``), and up to the first scheduled change
    otherwise.

Drift
    :class:`Drift` entries take effect just before the wire event with index
    ``at_event`` (events counted from 0, catalog records not counted);
    outcomes of a session are drawn when it starts, so sessions in flight
    finish under the old state. ``taste_shift`` turns the global department
    and category trends (new trends correlate ``trend_correlation`` with the
    old) and moves ``fraction`` of users to a fresh segment with fresh
    individual tastes; the click bias is then re-solved so that what the
    shop currently shows keeps its click rate: what is liked changes, not
    how much. The default, at event 120,000, is mild but clear: a hashed
    logistic regression learning the stream saw its click log loss rise
    from 0.25 to 0.31 over the next 2,500 events, and river's ADWIN on
    that loss fired 772 events after the shift (and nowhere else after
    warm-up).
    ``category_surge`` adds ``strength`` to the quality of one category's
    items.

Shops
    ``ShopConfig.shop`` numbers shops of one market: every shop of a seed has
    the same *world* (categories, brands and their quality and price tiers,
    category price levels, the segments' tastes, the global trends, and
    what a taste shift turns them into) and its own users and items (their
    segments, individual tastes, devices, activity, items' categories,
    brands, prices and appeal), sessions and drift movers. Shop 0 is the
    shop of before shops existed, draw for draw; shop ``k``'s ids are
    ``u{k}_...``, ``i{k}_...`` and ``sim-{seed}-shop{k}-...``, so no id is
    shared. What one shop learns about categories, brands and prices holds
    in another; nothing it learns about a user or an item does.

Example
-------
>>> from producers.simulator import Shop, ShopConfig
>>> shop = Shop(ShopConfig(users=200, initial_items=100, new_items=10, events=500, drifts=()))
>>> records = list(shop.records())
>>> sum(isinstance(r, Event) for r in records), len(shop.catalog)
(500, 110)
>>> first = next(r for r in records if isinstance(r, Event))
>>> first.event_id, first.type, first.context["device"] in DEVICES
('sim-7-0', 'impression', True)
>>> p_click, p_cart, p_purchase = shop.truth(first.user_id, first.item_id)
>>> 0 < p_click < 1 and 0 < p_cart < 1 and 0 < p_purchase < 1
True
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from producers.contract import CatalogItem, Event, ItemContent

DEPARTMENTS: dict[str, tuple[str, ...]] = {
    "electronics": ("phone", "laptop", "audio", "camera", "tv"),
    "home": ("kitchen", "furniture", "decor", "bedding", "garden"),
    "fashion": ("shoes", "women", "men", "bags", "accessories"),
    "beauty": ("skincare", "makeup", "fragrance", "haircare"),
    "sports": ("fitness", "outdoor", "cycling", "team"),
    "books": ("fiction", "nonfiction", "kids", "comics"),
    "grocery": ("snacks", "beverages", "coffee", "pantry"),
    "toys": ("building", "dolls", "games", "baby"),
}
DEFAULT_CATEGORIES: tuple[str, ...] = tuple(
    f"{department}.{sub}" for department, subs in DEPARTMENTS.items() for sub in subs
)
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
_DEVICE_CODES = {device: code for code, device in enumerate(DEVICES)}
DRIFT_KINDS: tuple[str, ...] = ("taste_shift", "category_surge")

_BRAND_STEMS = ("nor", "vel", "kai", "zen", "lum", "ori", "tak", "bri", "mon", "sol", "fen", "ari")
_BRAND_ENDS = ("a", "ex", "io", "ora", "tek", "ly", "um", "is", "on", "ia")
_BLOCK_STEPS = 256  # sessions whose random draws come from one generator (see Shop._draw_block)
_HOME_BRAND_SHARE = 0.85
_SESSION_OWN_DEVICE = 0.8
_POPULARITY_DECAY = 0.97  # per block of sessions
_CALIBRATION_PAIRS = 20_000
_PRIOR_CLICKS = 3.0  # bestseller prior of the initial catalog, scaled by exp(appeal)
_DRIFTING = (
    "_user_department",
    "_user_category",
    "_user_brand",
    "_user_beta",
    "_category_surge",
    "_task_offsets",
)  # the truth's arrays a drift changes (in place, or by replacing them)
PRIOR_VOLUME_DRAWS = 4_000
"""Draws of a buyer's volume that :meth:`Shop.predicted_quantities` weighs by its orders."""


@dataclass(frozen=True)
class Drift:
    """A scheduled change of the shop, effective before wire event ``at_event``.

    ``taste_shift``: the global department and category trends turn (the new
    ones correlate ``trend_correlation`` with the old, same spread) and a
    ``fraction`` of users get a new segment and new individual tastes.
    ``category_surge``: items of ``category`` (``None``: one picked by the
    seed) gain ``strength`` on the quality term of every task.
    """

    at_event: int
    kind: str
    fraction: float = 0.3
    trend_correlation: float = -0.3
    category: str | None = None
    strength: float = 1.5

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"drift kind {self.kind!r} is not one of {DRIFT_KINDS}")
        if self.at_event < 0 or not 0.0 <= self.fraction <= 1.0:
            raise ValueError("a drift needs at_event >= 0 and 0 <= fraction <= 1")
        if not -1.0 <= self.trend_correlation <= 1.0:
            raise ValueError("trend_correlation must lie in [-1, 1]")


@dataclass(frozen=True)
class TruthModel:
    """Parameters of the true model (``*_sd``: standard deviations on the logit scale).

    - Tastes: ``global_*`` trends shared by everyone, ``segment_*`` per
      segment (``segments`` of them), ``individual_*`` per user.
    - Items: ``appeal = brand quality (brand_quality_sd) + residual
      (item_appeal_sd)``.
    - Price sensitivity ``beta``: ``price_sensitivity_mean`` plus segment
      and individual parts.
    - Base rates over random (user, item) pairs, which fix the biases:
      ``click_rate``, ``cart_rate`` (per click), ``purchase_rate`` (per cart).
    - Quantity bought: ``1 + Poisson(a_user * b_department)``, ``a_user``
      log-normal(0, ``quantity_user_sd``) per user, ``b_department`` uniform
      in ``quantity_department_range`` per top-level category; an order's
      value is price times quantity.
    - Task weights over ``(affinity, brand, quality, price)``; device
      offsets ``(click, cart, purchase)`` per device in :data:`DEVICES`
      order, ``device_mix`` their shares.

    With the defaults a user-specific part (segment + individual) is a
    minority of the click logit: trends, brand quality, item appeal and price
    carry most of it. Measured on the default 200k-event stream (click
    AUC on impressions): the full truth 0.819; knowing segments but not
    individuals 0.815; content and brand-level appeal only, no user at all,
    0.786 (90% of the full truth's lift over 0.5).
    """

    segments: int = 6
    global_department_sd: float = 0.8
    global_category_sd: float = 0.6
    segment_department_sd: float = 0.3
    segment_category_sd: float = 0.1
    segment_brand_sd: float = 0.1
    individual_department_sd: float = 0.1
    individual_category_sd: float = 0.1
    individual_brand_sd: float = 0.1
    brand_quality_sd: float = 0.7
    item_appeal_sd: float = 0.3
    price_sensitivity_mean: float = 0.6
    price_sensitivity_segment_sd: float = 0.3
    price_sensitivity_individual_sd: float = 0.15
    click_rate: float = 0.025
    cart_rate: float = 0.1
    purchase_rate: float = 0.25
    click_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.5)
    cart_weights: tuple[float, float, float, float] = (0.5, 0.5, 0.3, 1.5)
    purchase_weights: tuple[float, float, float, float] = (0.3, 1.0, 1.0, 0.5)
    quantity_user_sd: float = 0.5
    quantity_department_range: tuple[float, float] = (0.1, 3.0)
    device_mix: tuple[float, ...] = (0.6, 0.3, 0.1)
    device_offsets: tuple[tuple[float, float, float], ...] = (
        (0.1, -0.2, -0.1),
        (-0.1, 0.25, 0.15),
        (0.0, 0.0, 0.0),
    )


@dataclass(frozen=True)
class ShopConfig:
    """Everything that defines a simulated stream; equal configs give equal streams.

    ``events`` counts wire events (catalog records not counted); new items
    arrive in uploads of ``new_item_batch`` at seeded points spread over
    them. ``start_ms`` is the event time of the first session
    (2020-11-01T00:00Z, a Sunday: in the past for any reader's clock, so the
    stream is valid whenever it is read; :func:`on_wall_clock` restamps it
    for a live shop); sessions start ``sessions_per_second`` apart on
    average in event time: about 16 wire events a second with impressions
    (2M events span under two days), under two without (2M events span
    about 13 days). ``exposure`` is the share of slate slots from (popular,
    liked department, random, newest arrivals); the popular ones come from
    the ``popular_pool`` most clicked items, the newest from the last
    ``new_window`` arrivals. User activity falls off as
    ``(rank + activity_offset) ** -activity_exponent``. ``delay_scale``
    multiplies the event-time delays from impression to click (2-30 s) and
    from click to cart and cart to purchase (1-30 min): a live demo of a
    minute or two uses about 1/60, so conversions arrive seconds apart.
    ``shop`` chooses a shop of the seed's world (see the module docstring):
    0, the default, is the seed's first shop.
    """

    seed: int = 7
    users: int = 20_000
    initial_items: int = 5_000
    new_items: int = 2_000
    events: int = 200_000
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    brands: int = 120
    impressions: bool = True
    drifts: tuple[Drift, ...] = (Drift(120_000, "taste_shift"),)
    start_ms: int = 1_604_188_800_000
    sessions_per_second: float = 2.0
    delay_scale: float = 1.0
    slate_size: tuple[int, int] = (5, 10)
    exposure: tuple[float, float, float, float] = (0.35, 0.30, 0.20, 0.15)
    popular_pool: int = 200
    new_item_batch: int = 5
    new_window: int = 150
    activity_exponent: float = 1.2
    activity_offset: float = 5.0
    truth_model: TruthModel = field(default_factory=TruthModel)
    shop: int = 0

    def __post_init__(self) -> None:
        if self.users < 1 or self.initial_items < 1 or self.new_items < 0 or self.events < 0:
            raise ValueError("need users >= 1, initial_items >= 1, new_items >= 0, events >= 0")
        if not self.categories or any("." not in c for c in self.categories):
            raise ValueError("categories must be dotted paths such as 'home.kitchen'")
        if len(set(self.categories)) != len(self.categories) or self.brands < 1:
            raise ValueError("categories must be distinct and brands >= 1")
        low, high = self.slate_size
        if not 1 <= low <= high:
            raise ValueError("slate_size must be (low, high) with 1 <= low <= high")
        if (
            len(self.exposure) != 4
            or min(self.exposure) < 0
            or not math.isclose(sum(self.exposure), 1.0)
        ):
            raise ValueError("exposure must be 4 non-negative shares summing to 1")
        if self.sessions_per_second <= 0 or self.new_item_batch < 1:
            raise ValueError("sessions_per_second must be positive and new_item_batch >= 1")
        if self.shop < 0:
            raise ValueError("shop must be 0 or more")
        for drift in self.drifts:
            if drift.category is not None and drift.category not in self.categories:
                raise ValueError(f"drift category {drift.category!r} is not a category")


@dataclass
class _Plan:
    """Sessions ``start..stop`` worked out under one state of the shop."""

    start: int
    stop: int
    times: list[int]
    users: list[int]
    devices: list[int]
    shown: list[int]  # item indexes, session k's are shown[shown_from[k]:shown_from[k + 1]]
    shown_from: list[int]
    clicks: list[tuple[int, int, int, int]]  # (item, click_ts, cart_ts or 0, purchase_ts or 0)
    clicks_from: list[int]


@dataclass
class _Block:
    """The random draws of ``_BLOCK_STEPS`` consecutive sessions."""

    index: int
    times: np.ndarray
    user: np.ndarray
    own_device: np.ndarray
    device: np.ndarray
    size: np.ndarray
    source: np.ndarray
    pick: np.ndarray
    department: np.ndarray
    click: np.ndarray
    cart: np.ndarray
    purchase: np.ndarray
    click_delay: np.ndarray
    cart_delay: np.ndarray
    purchase_delay: np.ndarray


class Shop:
    """The simulated shop: wire records via :meth:`records`, the truth via :meth:`truth`.

    Parameters
    ----------
    config
        The shop's definition; see :class:`ShopConfig`.
    """

    def __init__(self, config: ShopConfig | None = None) -> None:
        self.config = config or ShopConfig()
        cfg = self.config
        self._model = model = cfg.truth_model
        self._task_weights = np.array(
            [model.click_weights, model.cart_weights, model.purchase_weights]
        ).T
        self._task_offsets = np.array(model.device_offsets, dtype=float)  # (device, task)
        # Shop 0 draws its world, items and users from one generator, in this order; another
        # shop draws the same world (and shop 0's items and users, then dropped: the world's
        # draws come between them) and then its own items and users from a generator of its own.
        rng = np.random.default_rng([cfg.seed, 1])
        self._build_world(rng)
        self._draw_items(rng)
        self._build_segments(rng)
        self._draw_users(rng)
        if cfg.shop:
            rng = np.random.default_rng(self._seeds(1))
            self._draw_items(rng)
            self._draw_users(rng)
        self._build_schedule(rng)
        self._catalog: dict[str, CatalogItem] = {}
        self._available = cfg.initial_items
        self._user_numbers: dict[str, int] = {}  # id -> index, parsed once (see _parsed)
        self._item_numbers: dict[str, int] = {}
        self._calibrate(rng)
        self._build_quantities(np.random.default_rng([cfg.seed, 4]))  # apart: the rest unchanged
        self._drift_points: list[int] = []
        self._stale = True
        self._started = False

    # ------------------------------------------------------------ public API

    @property
    def catalog(self) -> dict[str, CatalogItem]:
        """Catalog items published so far, by item id."""
        return self._catalog

    @property
    def drift_points(self) -> list[int]:
        """For each drift applied so far: the number of events emitted before it took effect."""
        return list(self._drift_points)

    def records(self) -> Iterator[Event | CatalogItem]:
        """Wire records in order; stops after ``config.events`` events.

        A shop is one stream: iterate it once (a fresh :class:`Shop` replays it).
        The emission loop is written out in one piece because it runs once per
        event; sessions are worked out in vectorised plans (:meth:`_plan`).
        """
        if self._started:
            raise RuntimeError("a Shop yields its stream once; make a new Shop to replay it")
        self._started = True
        cfg = self.config
        for index in range(cfg.initial_items):
            yield self._publish(index, cfg.start_ms)
        if cfg.events == 0:
            return
        prefix = f"sim-{cfg.seed}-shop{cfg.shop}-" if cfg.shop else f"sim-{cfg.seed}-"
        limit = cfg.events
        emit_impressions = cfg.impressions
        user_ids, item_ids, contents = self._user_ids, self._item_ids, self._contents
        heap: list[tuple[int, int, str, int, int, str, str]] = []
        push, pop = heapq.heappush, heapq.heappop
        seq = 0
        emitted = 0
        next_change = self._next_change_at()
        plan: _Plan | None = None
        step = 0
        while True:
            if plan is None or self._stale or step >= plan.stop:
                per_session = emitted / step if step else 1.0
                plan = self._plan(step, math.ceil((next_change - emitted) / per_session) + 1)
            at = step - plan.start
            now = plan.times[at]
            while heap and heap[0][0] <= now:
                ts, _, kind, user, item, session, device = pop(heap)
                if emitted == next_change:
                    yield from self._apply_changes(emitted, ts)
                    next_change = self._next_change_at()
                yield Event(
                    prefix + str(emitted),
                    ts,
                    kind,
                    user_ids[user],
                    item_ids[item],
                    contents[item],
                    session,
                    {"device": device},
                    self._quantity(user, item) if kind == "purchase" else 1,
                )
                emitted += 1
                if emitted == limit:
                    return
            if self._stale:
                continue  # the state changed before this session started: plan it anew
            user = plan.users[at]
            device = DEVICES[plan.devices[at]]
            session = f"{prefix}s{step}"
            if emit_impressions:
                user_id = user_ids[user]
                for item in plan.shown[plan.shown_from[at] : plan.shown_from[at + 1]]:
                    if emitted == next_change:
                        yield from self._apply_changes(emitted, now)
                        next_change = self._next_change_at()
                    yield Event(
                        prefix + str(emitted),
                        now,
                        "impression",
                        user_id,
                        item_ids[item],
                        contents[item],
                        session,
                        {"device": device},
                    )
                    emitted += 1
                    if emitted == limit:
                        return
            for item, click_ts, cart_ts, purchase_ts in plan.clicks[
                plan.clicks_from[at] : plan.clicks_from[at + 1]
            ]:
                push(heap, (click_ts, seq, "click", user, item, session, device))
                if cart_ts:
                    push(heap, (cart_ts, seq + 1, "cart", user, item, session, device))
                if purchase_ts:
                    push(heap, (purchase_ts, seq + 2, "purchase", user, item, session, device))
                seq += 3
                self._recent_clicks.append(item)
            step += 1

    def truth(
        self, user_id: str, item_id: str, device: str | None = None
    ) -> tuple[float, float, float]:
        """``(p_click, p_cart_given_click, p_purchase_given_cart)`` as of the last record yielded.

        ``device=None`` gives the probabilities of a session whose device is
        unknown (averaged over the device mix, funnel-wise).
        """
        row = self.truth_many([user_id], [item_id], None if device is None else [device])[0]
        return (float(row[0]), float(row[1]), float(row[2]))

    def snapshot(self, base: Shop | None = None) -> Shop:
        """A copy whose :meth:`truth_many` stays the shop's truth as it is now (the shop's
        drifts change it), for the items published so far: to judge later what would have
        been served now. ``base``, an earlier snapshot with no drift since, lends its copies."""
        frozen = copy.copy(self)
        for name in _DRIFTING:
            setattr(
                frozen, name, getattr(self, name).copy() if base is None else getattr(base, name)
            )
        return frozen

    def expected_quantity(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """The mean quantity of a purchase of each item by its user, ``1 + a_user * b_department``.

        An order's expected value is the item's price times this.
        """
        users = self._user_indices(user_ids)
        items = self._item_indices(item_ids)
        return (
            1.0 + self._user_volume[users] * self._department_volume[self._item_department[items]]
        )

    def predicted_quantities(
        self,
        item_ids: Sequence[str],
        draws: int,
        rng: np.random.Generator,
        earlier: Sequence[Sequence[tuple[str, int]]] | None = None,
    ) -> np.ndarray:
        """``(len(item_ids), draws)`` quantities of a purchase of each item by a buyer
        known only by ``earlier[n]``, the ``(item_id, quantity)`` of its earlier orders:
        ``a_user`` drawn from its distribution given those orders (importance-resampled
        from :data:`PRIOR_VOLUME_DRAWS` draws of its prior), the department's true.

        No earlier orders (``earlier`` ``None`` or an empty list): the buyer's volume is
        drawn from the prior. What knowing everything but the buyer's volume allows,
        with the buyer learned from its orders as well as anyone could (the value
        bench's ``volume_blind`` and ``posterior`` predictors).
        """
        model = self._model
        items = self._item_indices(item_ids)
        department = self._department_volume[self._item_department[items]]
        volumes = np.empty((len(items), draws))
        for n in range(len(items)):
            orders = earlier[n] if earlier is not None else ()
            if not orders:
                volumes[n] = rng.lognormal(0.0, model.quantity_user_sd, draws)
                continue
            prior = rng.lognormal(0.0, model.quantity_user_sd, PRIOR_VOLUME_DRAWS)
            rates = self._department_volume[
                self._item_department[self._item_indices([i for i, _ in orders])]
            ]
            extra = np.array([q for _, q in orders], dtype=np.float64) - 1.0
            mean = prior[:, None] * rates[None, :]
            log_likelihood = (extra * np.log(mean) - mean).sum(axis=1)  # Poisson, up to a constant
            weights = np.exp(log_likelihood - log_likelihood.max())
            volumes[n] = rng.choice(prior, draws, p=weights / weights.sum())
        return 1 + rng.poisson(volumes * department[:, None])

    def truth_many(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        devices: Sequence[str] | None = None,
    ) -> np.ndarray:
        """The ``(n, 3)`` array of :meth:`truth` for paired ``user_ids`` and ``item_ids``.

        Any user and any published item may be asked about, shown or not.
        """
        if len(user_ids) != len(item_ids):
            raise ValueError("user_ids and item_ids must pair up")
        users = self._user_indices(user_ids)
        items = self._item_indices(item_ids)
        if devices is not None:
            if len(devices) != len(users):
                raise ValueError("devices must pair up with user_ids")
            try:
                codes = np.fromiter(map(_DEVICE_CODES.__getitem__, devices), np.int64, len(devices))
            except KeyError as err:
                raise ValueError(f"unknown device {err.args[0]!r}: one of {DEVICES}") from None
            return _sigmoid(self._logits(users, items, codes))
        # Unknown device: expectations over the mix of the joint funnel probabilities.
        joint = np.zeros((len(users), 3))
        for code, share in enumerate(self._model.device_mix):
            p = _sigmoid(self._logits(users, items, np.full(len(users), code)))
            joint += share * np.cumprod(p, axis=1)
        out = joint.copy()
        out[:, 1:] = joint[:, 1:] / joint[:, :-1]
        return out

    # ------------------------------------------------------------ the world

    def _seeds(self, *stream: int) -> list[int]:
        """The seed of one of the shop's random streams: shop 0's, or its own shop's."""
        cfg = self.config
        return [cfg.seed, *stream, cfg.shop] if cfg.shop else [cfg.seed, *stream]

    def _build_world(self, rng: np.random.Generator) -> None:
        """Categories and brands: every shop of a seed shares them."""
        cfg, model = self.config, self._model
        departments = sorted({c.split(".", 1)[0] for c in cfg.categories})
        self._category_names = list(cfg.categories)
        self._category_department = np.array(
            [departments.index(c.split(".", 1)[0]) for c in cfg.categories]
        )
        n_dept, n_cat, n_brand = len(departments), len(cfg.categories), cfg.brands
        self._departments = n_dept
        self._brand_department = np.arange(n_brand) % n_dept
        self._brand_names = [_brand_name(b) for b in range(n_brand)]
        self._brand_weight = rng.pareto(1.5, n_brand) + 0.2
        self._brand_quality = rng.normal(0.0, model.brand_quality_sd, n_brand)
        self._brand_tier = rng.normal(0.0, 0.3, n_brand)
        self._category_log_median = rng.normal(math.log(35.0), 0.9, n_cat)
        self._category_sd = rng.uniform(0.35, 0.65, n_cat)
        self._category_weight = rng.dirichlet(np.full(n_cat, 4.0))

    def _draw_items(self, rng: np.random.Generator) -> None:
        """The shop's own items (initial and new): category, brand, price and appeal."""
        cfg, model = self.config, self._model
        n_dept, n_cat, n_brand = self._departments, len(cfg.categories), cfg.brands
        brand_department, brand_weight = self._brand_department, self._brand_weight
        category_log_median, category_sd = self._category_log_median, self._category_sd
        total = cfg.initial_items + cfg.new_items
        category = rng.choice(n_cat, total, p=self._category_weight)
        department = self._category_department[category]
        brand = np.empty(total, np.int64)
        home = rng.random(total) < _HOME_BRAND_SHARE
        for d in range(n_dept):
            own = np.flatnonzero(brand_department == d)
            pool = own if len(own) else np.arange(n_brand)
            mine = home & (department == d)
            weights = brand_weight[pool] / brand_weight[pool].sum()
            brand[mine] = rng.choice(pool, mine.sum(), p=weights)
        away = ~home
        brand[away] = rng.choice(n_brand, away.sum(), p=brand_weight / brand_weight.sum())
        log_price = (
            category_log_median[category]
            + self._brand_tier[brand]
            + rng.normal(0.0, category_sd[category])
        )
        price = np.maximum(np.round(np.exp(log_price), 2), 0.5)
        self._item_category = category
        self._item_department = department
        self._item_brand = brand
        self._item_price = price
        self._item_z = (np.log(price) - category_log_median[category]) / category_sd[category]
        self._item_appeal = self._brand_quality[brand] + rng.normal(
            0.0, model.item_appeal_sd, total
        )
        self._category_surge = np.zeros(n_cat)
        self._item_ids = [f"{self._id_prefix('i')}{k}" for k in range(total)]
        self._contents = [
            ItemContent(self._category_names[c], self._brand_names[b], p)
            for c, b, p in zip(category.tolist(), brand.tolist(), price.tolist(), strict=True)
        ]
        self._clicks = np.zeros(total)
        self._clicks[: cfg.initial_items] = _PRIOR_CLICKS * np.exp(
            self._item_appeal[: cfg.initial_items]
        )
        self._recent_clicks: list[int] = []

    def _build_segments(self, rng: np.random.Generator) -> None:
        """The segments' tastes and the global trends: every shop of a seed shares them."""
        cfg, model = self.config, self._model
        n_seg, n_dept, n_cat = model.segments, self._departments, len(cfg.categories)
        self._segment_department = rng.normal(0.0, model.segment_department_sd, (n_seg, n_dept))
        self._segment_category = rng.normal(0.0, model.segment_category_sd, (n_seg, n_cat))
        self._segment_brand = rng.normal(0.0, model.segment_brand_sd, (n_seg, cfg.brands))
        self._segment_beta = rng.normal(
            model.price_sensitivity_mean, model.price_sensitivity_segment_sd, n_seg
        )
        self._draw_trends(rng)

    def _draw_users(self, rng: np.random.Generator) -> None:
        """The shop's own users: segment, individual tastes, device and activity."""
        cfg, model = self.config, self._model
        n_user, n_seg = cfg.users, model.segments
        n_dept, n_cat, n_brand = self._departments, len(cfg.categories), cfg.brands
        self._user_segment = rng.integers(0, n_seg, n_user)
        self._user_department = np.empty((n_user, n_dept))
        self._user_category = np.empty((n_user, n_cat))
        self._user_brand = np.empty((n_user, n_brand))
        self._user_beta = np.empty(n_user)
        self._individual_department = np.empty((n_user, n_dept))
        self._individual_category = np.empty((n_user, n_cat))
        self._individual_brand = np.empty((n_user, n_brand))
        self._individual_beta = np.empty(n_user)
        self._redraw_individuals(rng, np.arange(n_user))
        self._compose_tastes()
        self._user_device = rng.choice(len(DEVICES), n_user, p=model.device_mix)
        self._user_ids = [f"{self._id_prefix('u')}{k}" for k in range(n_user)]
        rank_weight = (np.arange(n_user) + cfg.activity_offset) ** -cfg.activity_exponent
        self._activity_users = rng.permutation(n_user)
        self._activity_cdf = np.cumsum(rank_weight) / rank_weight.sum()

    def _id_prefix(self, kind: str) -> str:
        """``u``/``i`` for shop 0's users/items (``u17``), ``u2_``/``i2_`` for shop 2's."""
        return f"{kind}{self.config.shop}_" if self.config.shop else kind

    def _draw_trends(self, rng: np.random.Generator) -> None:
        model = self._model
        self._global_department = rng.normal(0.0, model.global_department_sd, self._departments)
        self._global_category = rng.normal(
            0.0, model.global_category_sd, len(self.config.categories)
        )

    def _turn_trends(self, rng: np.random.Generator, correlation: float) -> None:
        """New trends with the given correlation to the old ones and the same spread."""
        old_department, old_category = self._global_department, self._global_category
        self._draw_trends(rng)
        fresh = math.sqrt(1.0 - correlation**2)
        self._global_department = correlation * old_department + fresh * self._global_department
        self._global_category = correlation * old_category + fresh * self._global_category

    def _redraw_individuals(self, rng: np.random.Generator, users: np.ndarray) -> None:
        model, n = self._model, len(users)
        self._individual_department[users] = rng.normal(
            0.0, model.individual_department_sd, (n, self._departments)
        )
        self._individual_category[users] = rng.normal(
            0.0, model.individual_category_sd, (n, len(self.config.categories))
        )
        self._individual_brand[users] = rng.normal(
            0.0, model.individual_brand_sd, (n, self.config.brands)
        )
        self._individual_beta[users] = rng.normal(0.0, model.price_sensitivity_individual_sd, n)

    def _compose_tastes(self) -> None:
        segment = self._user_segment
        self._user_department = (
            self._global_department
            + self._segment_department[segment]
            + self._individual_department
        )
        self._user_category = (
            self._global_category + self._segment_category[segment] + self._individual_category
        )
        self._user_brand = self._segment_brand[segment] + self._individual_brand
        self._user_beta = self._segment_beta[segment] + self._individual_beta

    def _build_schedule(self, rng: np.random.Generator) -> None:
        cfg = self.config
        span = max(cfg.events, 1)
        uploads = np.sort(rng.integers(0, span, -(-cfg.new_items // cfg.new_item_batch)))
        self._arrival_at = [int(uploads[k // cfg.new_item_batch]) for k in range(cfg.new_items)]
        self._next_arrival = 0
        self._pending_drifts = sorted(
            (d for d in cfg.drifts if d.at_event < cfg.events), key=lambda d: d.at_event
        )
        self._drifts_applied = 0
        self._block: _Block | None = None
        self._clock_ms = cfg.start_ms

    def _next_change_at(self) -> int:
        candidates = [self.config.events]
        if self._next_arrival < len(self._arrival_at):
            candidates.append(self._arrival_at[self._next_arrival])
        if self._drifts_applied < len(self._pending_drifts):
            candidates.append(self._pending_drifts[self._drifts_applied].at_event)
        return min(candidates)

    def _apply_changes(self, emitted: int, ts: int) -> Iterator[CatalogItem]:
        """Apply every change scheduled at ``emitted``; yield the items it publishes."""
        while (
            self._next_arrival < len(self._arrival_at)
            and self._arrival_at[self._next_arrival] <= emitted
        ):
            index = self._available
            self._available += 1
            self._next_arrival += 1
            yield self._publish(index, ts)
        while (
            self._drifts_applied < len(self._pending_drifts)
            and self._pending_drifts[self._drifts_applied].at_event <= emitted
        ):
            self._apply_drift(self._drifts_applied, self._pending_drifts[self._drifts_applied])
            self._drifts_applied += 1
            self._drift_points.append(emitted)
        self._stale = True

    def _apply_drift(self, number: int, drift: Drift) -> None:
        # The world's part (new trends, the surging category) is the same in every shop of the
        # seed; which users change is the shop's own (one generator for both in shop 0).
        world = np.random.default_rng([self.config.seed, 2, number])
        own = np.random.default_rng(self._seeds(2, number)) if self.config.shop else world
        if drift.kind == "taste_shift":
            users, items, devices = self._exposure
            before = _sigmoid(self._logits(users, items, devices)[:, 0]).mean()
            # What was in fashion goes out of it (the season turns), and some users
            # change their habits.
            self._turn_trends(world, drift.trend_correlation)
            movers = np.flatnonzero(own.random(self.config.users) < drift.fraction)
            self._user_segment[movers] = own.integers(0, self._model.segments, len(movers))
            self._redraw_individuals(own, movers)
            self._compose_tastes()
            # What the shop shows stays as attractive as before: only what is liked changes.
            after = self._logits(users, items, devices)[:, 0]
            self._task_offsets[:, 0] += _solve_shift(after, np.ones(len(after)), before)
        else:
            name = drift.category or self._category_names[world.integers(len(self._category_names))]
            self._category_surge[self._category_names.index(name)] += drift.strength

    def _calibrate(self, rng: np.random.Generator) -> None:
        """Solve the task biases so that random pairs meet the model's base rates.

        Users are drawn by activity, items uniformly from the initial catalog;
        the cart rate is weighted by p_click and the purchase rate by p_cart.
        """
        model = self._model
        ranks = np.searchsorted(self._activity_cdf, rng.random(_CALIBRATION_PAIRS), side="right")
        users = self._activity_users[np.minimum(ranks, self.config.users - 1)]
        items = rng.integers(0, self._available, _CALIBRATION_PAIRS)
        logits = self._logits(users, items, self._user_device[users])
        reach = np.ones(_CALIBRATION_PAIRS)
        for task, rate in enumerate((model.click_rate, model.cart_rate, model.purchase_rate)):
            bias = _solve_shift(logits[:, task], reach, rate)
            self._task_offsets[:, task] += bias
            reach = reach * _sigmoid(logits[:, task] + bias)

    def _publish(self, index: int, ts: int) -> CatalogItem:
        content = self._contents[index]
        item = CatalogItem(
            self._item_ids[index], ts, content.category, content.brand, content.price
        )
        self._catalog[item.item_id] = item
        return item

    # ------------------------------------------------------------ the truth

    def _logits(self, users: np.ndarray, items: np.ndarray, devices: np.ndarray) -> np.ndarray:
        """Logits of (click, cart|click, purchase|cart) for broadcastable index arrays."""
        category = self._item_category[items]
        affinity = (
            self._user_department[users, self._item_department[items]]
            + self._user_category[users, category]
        )
        brand = self._user_brand[users, self._item_brand[items]]
        quality = self._item_appeal[items] + self._category_surge[category]
        price = -self._user_beta[users] * self._item_z[items]
        parts = np.stack([affinity, brand, quality, price], axis=-1)
        return parts @ self._task_weights + self._task_offsets[devices]

    def _build_quantities(self, rng: np.random.Generator) -> None:
        """Each user's and each department's buying volume, and the draws of quantities."""
        model = self._model
        self._user_volume = rng.lognormal(0.0, model.quantity_user_sd, self.config.users)
        low, high = model.quantity_department_range
        self._department_volume = rng.uniform(low, high, self._departments)
        self._quantity_rng = rng

    def _quantity(self, user: int, item: int) -> int:
        """A purchase's quantity: ``1 + Poisson(a_user * b_department)``, at most 10,000."""
        mean = self._user_volume[user] * self._department_volume[self._item_department[item]]
        return min(1 + int(self._quantity_rng.poisson(mean)), 10_000)

    def _user_indices(self, user_ids: Sequence[str]) -> np.ndarray:
        indices = _parsed(user_ids, self._id_prefix("u"), self._user_numbers)
        _check_below(indices, self.config.users, user_ids, "user")
        return indices

    def _item_indices(self, item_ids: Sequence[str]) -> np.ndarray:
        indices = _parsed(item_ids, self._id_prefix("i"), self._item_numbers)
        _check_below(indices, self._available, item_ids, "published item")
        return indices

    # ------------------------------------------------------------ sessions

    def _draw_block(self, index: int) -> _Block:
        """Random draws for sessions of block ``index``, independent of the shop's state.

        Keeping them per block (not per plan) makes a session's draws the same
        however plans are cut, so ``impressions=False`` replays the same funnel.
        """
        cfg = self.config
        rng = np.random.default_rng(self._seeds(3, index))
        n, width = _BLOCK_STEPS, cfg.slate_size[1]
        gaps = rng.exponential(1000.0 / cfg.sessions_per_second, n).round().astype(np.int64)
        ends = self._clock_ms + np.cumsum(gaps)
        times = ends - gaps  # the first session of the stream starts at start_ms
        self._clock_ms = int(ends[-1])
        return _Block(
            index=index,
            times=times,
            user=rng.random(n),
            own_device=rng.random(n),
            device=rng.choice(len(DEVICES), n, p=self._model.device_mix),
            size=rng.integers(cfg.slate_size[0], width + 1, n),
            source=rng.random((n, width)),
            pick=rng.random((n, width)),
            department=rng.random((n, width)),
            click=rng.random((n, width)),
            cart=rng.random((n, width)),
            purchase=rng.random((n, width)),
            click_delay=_scaled(rng.integers(2_000, 30_000, (n, width)), cfg.delay_scale),
            cart_delay=_scaled(rng.integers(60_000, 1_800_000, (n, width)), cfg.delay_scale),
            purchase_delay=_scaled(rng.integers(60_000, 1_800_000, (n, width)), cfg.delay_scale),
        )

    def _refresh_popular(self) -> None:
        self._clicks *= _POPULARITY_DECAY
        np.add.at(self._clicks, np.asarray(self._recent_clicks, np.int64), 1.0)
        self._recent_clicks.clear()
        # Stable sorts only: ties (new items have no clicks) must break the same way everywhere.
        bestsellers = np.argsort(-self._clicks[: self._available], kind="stable")
        self._popular = bestsellers[: self.config.popular_pool]
        department = self._item_department[: self._available]
        by_department = np.argsort(department[bestsellers], kind="stable")
        self._department_items = bestsellers[by_department]  # bestsellers first in each
        self._department_count = np.bincount(department, minlength=self._departments)
        self._department_start = np.cumsum(self._department_count) - self._department_count

    def _plan(self, step: int, sessions: int) -> _Plan:
        """Work out about ``sessions`` sessions from ``step`` under the current state.

        A plan never crosses its block's end, and is cut short (then made
        anew) when a scheduled change makes the state stale.
        """
        cfg = self.config
        block_index, first = divmod(step, _BLOCK_STEPS)
        if self._block is None or self._block.index != block_index:
            self._block = self._draw_block(block_index)
            self._refresh_popular()
        self._stale = False
        b = self._block
        last = _BLOCK_STEPS if first == 0 else min(_BLOCK_STEPS, first + max(sessions, 4))
        rows = slice(first, last)
        activity = np.searchsorted(self._activity_cdf, b.user[rows], side="right")
        users = self._activity_users[np.minimum(activity, cfg.users - 1)]
        devices = np.where(
            b.own_device[rows] < _SESSION_OWN_DEVICE, self._user_device[users], b.device[rows]
        )
        items = self._slate_items(users, b.source[rows], b.pick[rows], b.department[rows])
        shown = np.arange(items.shape[1]) < b.size[rows, None]
        same = items[:, :, None] == items[:, None, :]
        shown &= ~np.any(np.tril(same, -1) & shown[:, None, :], axis=2)  # no repeats in a slate
        if first == 0:  # a whole block's slates: what the shop currently shows
            self._exposure = (
                np.broadcast_to(users[:, None], shown.shape)[shown],
                items[shown],
                np.broadcast_to(devices[:, None], shown.shape)[shown],
            )
        p = _sigmoid(self._logits(users[:, None], items, devices[:, None]))
        clicked = shown & (b.click[rows] < p[..., 0])
        carted = clicked & (b.cart[rows] < p[..., 1])
        bought = carted & (b.purchase[rows] < p[..., 2])
        times = b.times[rows]
        click_ts = times[:, None] + b.click_delay[rows]
        cart_ts = np.where(carted, click_ts + b.cart_delay[rows], 0)
        purchase_ts = np.where(bought, cart_ts + b.purchase_delay[rows], 0)
        return _Plan(
            start=step,
            stop=block_index * _BLOCK_STEPS + last,
            times=times.tolist(),
            users=users.tolist(),
            devices=devices.tolist(),
            shown=items[shown].tolist(),
            shown_from=[0, *np.cumsum(shown.sum(axis=1)).tolist()],
            clicks=list(
                zip(
                    items[clicked].tolist(),
                    click_ts[clicked].tolist(),
                    cart_ts[clicked].tolist(),
                    purchase_ts[clicked].tolist(),
                    strict=True,
                )
            ),
            clicks_from=[0, *np.cumsum(clicked.sum(axis=1)).tolist()],
        )

    def _slate_items(
        self, users: np.ndarray, source: np.ndarray, pick: np.ndarray, draw: np.ndarray
    ) -> np.ndarray:
        """Items for every slot: popular, liked department, random or newest, by ``source``."""
        cfg = self.config
        available = self._available
        random_items = (pick * available).astype(np.int64)
        popular = self._popular[(pick**1.5 * len(self._popular)).astype(np.int64)]
        taste = self._user_department[users]
        odds = np.cumsum(np.exp(taste - taste.max(axis=1, keepdims=True)), axis=1)
        liking = odds / odds[:, -1:]  # per user, the CDF of softmax(department taste)
        department = (liking[:, None, :] < draw[..., None]).sum(axis=2)
        department = np.minimum(department, self._departments - 1)
        in_department = self._department_count[department]
        rank = self._department_start[department] + (pick**2 * in_department).astype(np.int64)
        liked = self._department_items[np.minimum(rank, len(self._department_items) - 1)]
        liked = np.where(in_department > 0, liked, random_items)
        window = min(cfg.new_window, available - cfg.initial_items)
        newest = available - 1 - (pick**2 * window).astype(np.int64) if window else random_items
        bounds = np.cumsum(cfg.exposure)[:-1]
        kind = np.searchsorted(bounds, source, side="right")
        return np.choose(kind, [popular, liked, random_items, newest])


def on_wall_clock(records: Iterable[Event | CatalogItem]) -> Iterator[Event | CatalogItem]:
    """The records, each stamped with the wall-clock time at which it is taken: a live shop.

    >>> import time
    >>> shop = Shop(ShopConfig(events=3, users=5, initial_items=5, new_items=0, drifts=()))
    >>> stamped = list(on_wall_clock(shop.records()))
    >>> all(abs(r.ts - time.time() * 1000) < 60_000 for r in stamped)
    True
    """
    for record in records:
        yield dataclasses.replace(record, ts=int(time.time() * 1000))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_shift(logits: np.ndarray, weights: np.ndarray, target: float) -> float:
    """The shift of ``logits`` whose weighted mean sigmoid is ``target`` (bisection)."""
    low, high = -20.0, 20.0
    for _ in range(50):
        mid = (low + high) / 2
        if np.average(_sigmoid(logits + mid), weights=weights) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _parsed(ids: Sequence[str], prefix: str, numbers: dict[str, int]) -> np.ndarray:
    """The numbers in ``ids`` (``u17`` -> 17), each parsed once into ``numbers``: the oracle
    asks about the whole catalog for every user it ranks for."""
    try:
        return np.fromiter(map(numbers.__getitem__, ids), np.int64, len(ids))
    except KeyError:
        for value in ids:
            if value not in numbers:
                numbers[value] = _parse_id(value, prefix)
        return np.fromiter(map(numbers.__getitem__, ids), np.int64, len(ids))


def _check_below(indices: np.ndarray, limit: int, ids: Sequence[str], kind: str) -> None:
    outside = (indices < 0) | (indices >= limit)
    if outside.any():
        raise KeyError(f"no {kind} {ids[int(np.argmax(outside))]!r}")


def _parse_id(value: str, prefix: str) -> int:
    number = value[len(prefix) :]
    if not value.startswith(prefix) or not number.isdigit():
        raise KeyError(f"not a simulated id of this shop: {value!r}")
    return int(number)


def _brand_name(index: int) -> str:
    stems, ends = len(_BRAND_STEMS), len(_BRAND_ENDS)
    name = _BRAND_STEMS[(index // ends) % stems] + _BRAND_ENDS[index % ends]
    return name if index < stems * ends else f"{name}{index // (stems * ends) + 1}"


def _scaled(delays_ms: np.ndarray, scale: float) -> np.ndarray:
    """Delays multiplied by ``scale`` (the same draws, so streams stay comparable)."""
    return delays_ms if scale == 1.0 else (delays_ms * scale).astype(np.int64)
