"""Samples to tensors: the learner's hot path.

:class:`FeatureEncoder` owns the feature state (the ID tables of
:mod:`online_models.tables` and the per-user histories) and turns a batch of
:class:`~online_models.base.Sample` into a :class:`FeatureBatch` of index and
value tensors with a handful of list comprehensions and numpy operations per
batch, never a Python-level model call per sample.

Features of one sample:

- ``user``, ``item``, ``brand``, ``device``: table rows (0 = unknown/missing);
- ``tokens``: the category path as rows of the token table, the full path
  first, then its prefixes from the top: ``"electronics.phone"`` ->
  ``("electronics.phone", "electronics")``; a new leaf under a known parent
  shares the parent's token;
- ``price``: a log-scale bucket, two per doubling (:func:`price_buckets`;
  a missing price has a bucket of its own);
- ``history``: the user's last interacted items as (item, category, top-level
  category, brand, price bucket) rows, as the history stood at the sample's
  own time: an entry added (at the tables' event-time clock) at or after
  ``sample.ts`` is hidden, so a delayed label is learned with the features it
  was scored with, not with its own click already in the history;
- ``dense``: the log price, how much of the user's history shares the
  candidate's item, category, top-level category and brand, how recently
  the user last met the candidate's item and its category (``1 / (1 + n)``,
  ``n`` the history entries since: users come back to what they just looked
  at, and a share of a long history hides that), the gap between
  the candidate's price bucket and the history's mean, how full the history
  is, log interaction counts of the item and the user, the price relative
  to its category's, and the funnel rates
  (click, cart given click, purchase given cart) of the item, the user, the
  brand and the category, as decayed counts smoothed towards the shop's rate
  and given as log-odds against it: what an ID embedding learns slowly, a
  count knows after a few samples.

Prediction looks ids up without inserting them (an unseen item is row 0, so
scored from content alone); learning inserts them, and :meth:`FeatureEncoder.record`
then counts the interactions and appends the items of positive labels to the users' histories.

Point-in-time features: a sample carrying a ``key`` (the label resolver's
``TrackedSample``) is learned with the history and counts it was *scored*
with, kept since then in :class:`~online_models.tables.ScoringSnapshots`;
otherwise delayed negatives (resolved minutes after the positives) would be
learned with fuller histories and larger counts than they were scored with,
and the model would learn that skew instead of the shop (measured on the
simulated shop: click AUC 0.62 with the skew).

Example
-------
>>> from online_models.base import TASKS, Sample
>>> encoder = FeatureEncoder(TableCapacities(user=8, item=8, token=8, brand=8, device=4))
>>> s = Sample("u1", "i9", ts=1, category="electronics.phone", brand="acme", price=199.0,
...            click=1.0)
>>> batch = encoder.encode([s], learning=True)
>>> batch.item.tolist(), batch.tokens.tolist(), batch.price.tolist()
([1], [[1, 2, 0, 0]], [17])
>>> encoder.record(batch, label_matrix([s]))
>>> later = Sample("u1", "i2", ts=5, category="electronics.tv")
>>> encoder.encode([later], learning=False).history[0, :, 0].tolist()  # item, category, top, ...
[1, 1, 2, 1, 17]
>>> encoder.encode([Sample("u1", "new", ts=2)], learning=False).item.tolist()
[0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import is_not
from typing import Any

import numpy as np
import torch

from online_models.base import CandidateBlock, Sample
from online_models.content import ContentRows
from online_models.layout import (
    BRAND,
    DEVICE,
    ENTRY,
    HISTORY_DENSE_FEATURES,
    HISTORY_FIELDS,
    HISTORY_FILL,
    HISTORY_ITEM,
    LOG_PRICE,
    LOG_PRICE_SCALE,
    MATCHED_FIELDS,
    PATH_TOKENS,
    PRICE,
    RATE_ENTITIES,
    RECENCY_FIELDS,
    TOKENS,
    FeatureBatch,
    TableCapacities,
    label_matrix,
)
from online_models.order_value import ValueStats
from online_models.tables import DecayedSums, IdTable, ScoringSnapshots, UserHistory

LABEL_COLUMNS = 6
"""Click trials, clicks, cart trials, carts, purchase trials, purchases."""
RATE_PRIOR_STRENGTH = 5.0
"""Pseudo-trials at the shop's rate that every entity's rate is smoothed with."""

_FEATURES = ("history", "dense", "user_count", "item_count", "item_interactions")
"""The features :meth:`FeatureEncoder._features` works out (and snapshots keep)."""


@dataclass(slots=True)
class _Rows:
    """Per-sample table rows of a batch, as looked up (or kept since scoring)."""

    users: np.ndarray  # (B,) int64
    items: np.ndarray  # (B,)
    content: np.ndarray  # (B, PATH_TOKENS + 3): tokens, brand, price bucket, device
    log_prices: np.ndarray  # (B,) float64, NaN if missing
    times: np.ndarray  # (B,) int64 event times
    complete: np.ndarray  # (B,) every named id held a row

    def arrays(self) -> dict[str, np.ndarray]:
        """The rows as named arrays (what snapshots keep)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> _Rows:
        """Inverse of :meth:`arrays` (empty rows if ``arrays`` lacks them)."""
        if not arrays:
            return cls._empty(0)
        return cls(**{name: arrays[name] for name in cls.__slots__})

    @classmethod
    def _empty(cls, size: int) -> _Rows:
        return cls(
            users=np.zeros(size, np.int64),
            items=np.zeros(size, np.int64),
            content=np.zeros((size, PATH_TOKENS + 3), np.int64),
            log_prices=np.zeros(size),
            times=np.zeros(size, np.int64),
            complete=np.zeros(size, bool),
        )

    def subset(self, mask: np.ndarray) -> _Rows:
        """The rows where ``mask`` is true."""
        return _Rows(**{name: getattr(self, name)[mask] for name in self.__slots__})

    @classmethod
    def merge(cls, first: np.ndarray, ones: _Rows, others: _Rows) -> _Rows:
        """``ones`` where ``first`` is true, ``others`` elsewhere, in order."""
        return cls(**_scatter(first, ones.arrays(), others.arrays()))


def _scatter(
    where: np.ndarray, ones: dict[str, np.ndarray], others: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Each named array of ``ones`` at ``where``, of ``others`` elsewhere."""
    if where.all():
        return ones
    if not where.any():
        return others
    merged = {}
    for name, other in others.items():
        array = np.empty((len(where), *other.shape[1:]), dtype=other.dtype)
        array[where], array[~where] = ones[name], other
        merged[name] = array
    return merged


def _entry(items: np.ndarray, content: np.ndarray) -> np.ndarray:
    """``(B, 5)`` int32 history entries: item, category, top-level category, brand, price."""
    tokens = content[:, TOKENS]
    tops = np.where(tokens[:, 1] > 0, tokens[:, 1], tokens[:, 0])
    columns = [items, tokens[:, 0], tops, content[:, BRAND], content[:, PRICE]]
    return np.stack(columns, axis=1).astype(np.int32)


class FeatureEncoder:
    """Owns the ID tables, label statistics and user histories; encodes batches.

    Parameters
    ----------
    capacities
        Rows per table.
    history_length
        Interacted items remembered per user.
    snapshot_capacity
        Scored samples whose features are kept for learning their labels
        later (see :class:`~online_models.tables.ScoringSnapshots`).
    stats_half_life
        Learned samples over which label statistics halve.
    """

    def __init__(
        self,
        capacities: TableCapacities,
        history_length: int = 16,
        snapshot_capacity: int = 200_000,
        stats_half_life: float = 100_000.0,
    ) -> None:
        self.tables = {
            name: IdTable(name, getattr(capacities, name))
            for name in ("user", "item", "token", "brand", "device")
        }
        self.stats = {
            name: DecayedSums(getattr(capacities, table), LABEL_COLUMNS, stats_half_life)
            for name, table in RATE_ENTITIES.items()
        }
        self.shop_stats = DecayedSums(1, LABEL_COLUMNS, stats_half_life)
        self.category_prices = DecayedSums(capacities.token, 3, stats_half_life)
        self.history = UserHistory(capacities.user, history_length, len(HISTORY_FIELDS))
        self.values = ValueStats(capacities.user, capacities.token)
        self.snapshots = ScoringSnapshots(snapshot_capacity)
        self.user_snapshots = ScoringSnapshots(snapshot_capacity)  # histories, per user state
        self._user_states_kept = 0
        self.content = ContentRows(self.tables["token"], self.tables["brand"], capacities.item)

    def encode(
        self,
        samples: Sequence[Sample],
        learning: bool,
        labels: np.ndarray | None = None,
        keep: bool = False,
    ) -> FeatureBatch:
        """Features of ``samples``; ``learning`` inserts new ids into the tables.

        Scoring with ``keep`` keeps what keyed samples are scored with;
        learning takes it back (``labels``, ``(B, 3)`` NaN where unknown, tell
        which label is a sample's last; computed from the samples when not
        given). Scoring without ``keep`` changes nothing.
        """
        keys = np.fromiter(map(getattr, samples, repeat("key"), repeat(-1)), np.int64, len(samples))
        if not learning:
            rows = self._look_up(samples, insert=False)
            features = self._features(rows)
            states = _user_states(features["history"], rows.users, features["user_count"])
            if keep and (keys >= 0).any():
                self._keep(keys, rows, features, states)
            return self._batch(rows, features, {}, states)
        if labels is None:
            labels = label_matrix(samples)
        found, kept = self.snapshots.take(keys, final=~np.isnan(labels[:, 2]))
        rows = self._learned_rows(samples, found, kept)
        released = self.take_released()
        features = self._features(rows.subset(~found))
        if found.any():
            features = _scatter(found, self._scored_features(kept), features)
        return self._batch(rows, features, released)

    def encode_block(self, block: CandidateBlock) -> FeatureBatch:
        """Features of a block's pairs for scoring, as :meth:`encode` of its samples.

        Ids and contents are looked up once per user and item (nothing is
        inserted), the users' histories gathered once per user; each user
        is a user state, each item an item state (one without pairs too, unused).
        """
        times = np.asarray(block.times, dtype=np.int64)
        now_ms = int(times.max())
        users = self.tables["user"].rows(block.user_ids, now_ms, insert=False)
        items = self.tables["item"].rows(block.item_ids, now_ms, insert=False)
        content, log_prices, complete = self.content.rows(
            block.categories, block.brands, block.prices, items, now_ms, insert=False
        )
        history = self.history.gather(users, before_ms=times)
        pair_user, pair_item = block.pair_user, block.pair_item
        no_device = np.zeros((len(items), 1), dtype=np.int64)
        rows = _Rows(
            users=users[pair_user],
            items=items[pair_item],
            content=np.column_stack([content, no_device])[pair_item],
            log_prices=log_prices[pair_item],
            times=times[pair_user],
            complete=(users > 0)[pair_user] & (complete & (items > 0))[pair_item],
        )
        by_entity = self._entity_features(
            users, items, _entry(items, content), log_prices, pair_user, pair_item
        )
        features = self._features(rows, history=history[pair_user], by_entity=by_entity)
        user_states, item_states = (
            _any_pair(pair_user, len(users)),
            _any_pair(pair_item, len(items)),
        )
        return self._batch(rows, features, {}, (user_states, pair_user), (item_states, pair_item))

    def _keep(
        self,
        keys: np.ndarray,
        rows: _Rows,
        features: dict[str, np.ndarray],
        states: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """Snapshot what keyed samples are scored with; histories once per user state."""
        first, user_state = states
        serials = self._user_states_kept + np.arange(len(first))
        self._user_states_kept += len(first)
        self.user_snapshots.keep(
            serials, history=features["history"][first], users=rows.users[first]
        )
        per_sample = {name: features[name] for name in _FEATURES if name != "history"}
        generation = np.full(len(keys), self._generation())
        state = serials[user_state]
        self.snapshots.keep(keys, generation=generation, state=state, **rows.arrays(), **per_sample)

    def _scored_features(self, kept: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The features kept samples were scored with (a user state's history, if still kept)."""
        found, states = self.user_snapshots.take(
            kept["state"], final=np.zeros(len(kept["state"]), bool)
        )
        history = self.history.gather(kept["users"], kept["times"]) if not found.all() else None
        if history is None:
            history = states["history"]
        elif found.any():
            history[found] = states["history"]
        return {"history": history, **{n: kept[n] for n in _FEATURES if n != "history"}}

    def _generation(self) -> int:
        """Changes whenever a table releases rows (then rows kept since scoring may be stale)."""
        return sum(table.releases for table in self.tables.values())

    def _look_up(self, samples: Sequence[Sample], insert: bool, now_ms: int | None = None) -> _Rows:
        """Rows of the samples' ids (inserted if ``insert``, at the latest sample time)."""
        tables = self.tables
        user_ids = [s.user_id for s in samples]  # a comprehension per field: ~2x zip(*rows)
        item_ids = [s.item_id for s in samples]
        times = [s.ts for s in samples]
        categories = [s.category for s in samples]
        brand_ids = [s.brand for s in samples]
        prices = [s.price for s in samples]
        device_ids = [s.device for s in samples]
        now_ms = max(max(times), now_ms or 0)  # the tables' clock: largest event time learned
        users = tables["user"].rows(user_ids, now_ms, insert)
        items = tables["item"].rows(item_ids, now_ms, insert)
        devices = tables["device"].rows(device_ids, now_ms, insert)
        content, log_prices, complete = self.content.rows(
            categories, brand_ids, prices, items, now_ms, insert
        )
        named_device = np.fromiter(map(is_not, device_ids, repeat(None)), bool, len(samples))
        complete &= (users > 0) & (items > 0) & ((devices > 0) | ~named_device)
        return _Rows(
            users=users,
            items=items,
            content=np.column_stack([content, devices]),
            log_prices=log_prices,
            times=np.array(times, dtype=np.int64),
            complete=complete,
        )

    def _learned_rows(
        self, samples: Sequence[Sample], found: np.ndarray, kept: dict[str, np.ndarray]
    ) -> _Rows:
        """Rows of samples to learn: kept since scoring when still valid, else looked up.

        Kept rows are valid when every id held a row when scored and no table
        has released a row since; their ids are then only marked as seen.
        """
        reuse = np.zeros(len(samples), dtype=bool)
        generation = self._generation()
        if found.any():
            reuse[found] = kept["complete"] & (kept["generation"] == generation)
        kept_rows = _Rows.from_arrays(kept)
        if not reuse[found].all():
            kept_rows = kept_rows.subset(reuse[found])
        latest = int(kept_rows.times.max()) if reuse.any() else None
        if reuse.all():
            rows = kept_rows
        else:
            fresh = np.flatnonzero(~reuse).tolist()
            looked_up = self._look_up([samples[i] for i in fresh], insert=True, now_ms=latest)
            if reuse.any() and self._generation() != generation:  # kept rows may be gone
                return self._look_up(samples, insert=True)
            rows = _Rows.merge(reuse, kept_rows, looked_up)
        if reuse.any():
            now_ms = int(rows.times.max())
            for name, table_rows in (
                ("user", kept_rows.users),
                ("item", kept_rows.items),
                ("device", kept_rows.content[:, DEVICE]),
            ):
                self.tables[name].touch(table_rows, now_ms)
            self.content.touch(kept_rows.content[:, :-1], now_ms)
        return rows

    def _features(
        self,
        rows: _Rows,
        history: np.ndarray | None = None,
        by_entity: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """History, dense features and counts of ``rows``, as the tables stand now.

        ``history`` is the rows' history if already gathered; ``by_entity``
        their relative price and rate columns (:meth:`_entity_features`) if
        already worked out.
        """
        tables = self.tables
        users, items, content = rows.users, rows.items, rows.content
        entry = _entry(items, content)
        if history is None:
            history = self.history.gather(users, before_ms=rows.times)
        if by_entity is None:
            by_entity = self._entity_features(users, items, entry, rows.log_prices)
        user_count = tables["user"].counts[users]
        item_count = tables["item"].counts[items]
        dense = np.concatenate(
            [_history_features(rows.log_prices, entry, history, user_count, item_count), by_entity],
            axis=1,
        )
        counts = {
            "user_count": user_count,
            "item_count": item_count,
            "item_interactions": tables["item"].interactions[items],
        }
        return {"history": history, "dense": dense, **counts}

    def _batch(
        self,
        rows: _Rows,
        features: dict[str, np.ndarray],
        released: dict[str, np.ndarray],
        states: tuple[np.ndarray, np.ndarray] | None = None,
        item_states: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FeatureBatch:
        """The batch of ``rows``; ``(first, inverse)`` of the user and item states if known.

        User states are told apart by :func:`_user_states` when not given; without
        ``item_states`` every sample is an item state of its own.
        """
        history, dense, user_count = features["history"], features["dense"], features["user_count"]
        first, user_state = states or _user_states(history, rows.users, user_count)
        item_first, item_state = item_states or (slice(None), None)
        entry = _entry(rows.items, rows.content)
        log_quantity, value_dense = self.values.features(rows.users, entry[:, ENTRY["top"]])
        typical_value = np.log1p(np.expm1(rows.log_prices) * np.exp(log_quantity))
        return FeatureBatch(
            user=torch.from_numpy(rows.users),
            item=torch.from_numpy(rows.items[item_first]),
            content=torch.from_numpy(rows.content[item_first]),
            dense=torch.from_numpy(dense),
            item_interactions=torch.from_numpy(
                features["item_interactions"][item_first].astype(np.float32)
            ),
            item_log_price=torch.from_numpy(dense[item_first, LOG_PRICE : LOG_PRICE + 1]),
            item_state=None if item_state is None else torch.from_numpy(item_state),
            user_state=torch.from_numpy(user_state),
            state_user=torch.from_numpy(rows.users[first]),
            state_user_count=torch.from_numpy(user_count[first].astype(np.float32)),
            history=torch.from_numpy(history[first].astype(np.int64)),
            history_fill=torch.from_numpy(dense[first, HISTORY_FILL]),
            base_logits=torch.from_numpy(_logit(self.shop_rates()).astype(np.float32)),
            value_base=torch.from_numpy(np.nan_to_num(typical_value).astype(np.float32)),
            value_dense=torch.from_numpy(value_dense),
            entry=entry,
            released=released,
        )

    def shop_rates(self) -> np.ndarray:
        """The shop's decayed (click, cart given click, purchase given cart) rates."""
        shop = self.shop_stats.get(np.zeros(1, np.int64))[0]
        return (shop[1::2] + 1.0) / (shop[0::2] + 2.0)

    def _entity_features(
        self,
        users: np.ndarray,
        items: np.ndarray,
        entry: np.ndarray,
        log_prices: np.ndarray,
        pair_user: np.ndarray | None = None,
        pair_item: np.ndarray | None = None,
    ) -> np.ndarray:
        """The :data:`~online_models.layout.ENTITY_DENSE_FEATURES` columns, per pair.

        They depend on the user alone or the item alone: given ``pair_user``
        and ``pair_item``, ``users`` and ``items`` (with their ``entry`` and
        ``log_prices``) are distinct ones, worked out once each and gathered
        per pair; without, one per pair already.
        """
        categories = entry[:, ENTRY["category"]]
        item_side = {"item": items, "brand": entry[:, ENTRY["brand"]], "category": categories}
        columns = [self._relative_price(categories, log_prices)]
        columns += [
            self._rate_odds(name, users if name == "user" else item_side[name])
            for name in RATE_ENTITIES
        ]
        if pair_user is None:
            return np.concatenate(columns, axis=1)
        per_pair = [
            part[pair_user if name == "user" else pair_item]
            for name, part in zip(["price", *RATE_ENTITIES], columns, strict=True)
        ]
        return np.concatenate(per_pair, axis=1)

    def _rate_odds(self, entity: str, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), tasks)``: smoothed log-odds of the entity's funnel rates against the
        shop's."""
        prior = self.shop_rates()
        counts = self.stats[entity].get(rows)
        rate = (counts[:, 1::2] + RATE_PRIOR_STRENGTH * prior) / (
            counts[:, 0::2] + RATE_PRIOR_STRENGTH
        )
        return ((_logit(rate) - _logit(prior)) / 2.0).astype(np.float32)

    def _relative_price(self, categories: np.ndarray, log_prices: np.ndarray) -> np.ndarray:
        """``(B, 1)``: log price standardised within its category, clipped, over 3."""
        weight, total, squares = self.category_prices.get(categories).T
        mean = total / np.maximum(weight, 1e-9)
        variance = np.maximum(squares / np.maximum(weight, 1e-9) - mean**2, 0.0)
        z = (log_prices - mean) / np.sqrt(variance + 0.05)
        usable = (weight >= 2.0) & ~np.isnan(log_prices)
        return (np.where(usable, np.clip(z, -3.0, 3.0), 0.0) / 3.0)[:, None].astype(np.float32)

    def take_released(self) -> dict[str, np.ndarray]:
        """Rows released (evicted or expired) per table since the last call.

        Released users' histories and order statistics and released rows'
        label statistics are cleared here; the caller reinitialises the
        embedding rows.
        """
        released = {name: table.take_released() for name, table in self.tables.items()}
        if not any(len(rows) for rows in released.values()):  # the usual step
            return released
        self.history.clear(released["user"])
        self.values.forget(released["user"], released["token"])
        self.content.forget_items(released["item"])
        for name, table in RATE_ENTITIES.items():
            self.stats[name].clear(released[table])
        self.category_prices.clear(released["token"])
        return released

    def forget_user(self, user_id: str) -> dict[str, np.ndarray]:
        """Erase ``user_id``: its row, history, label statistics and the features its samples
        were scored with; return :meth:`take_released` (the caller resets the rows)."""
        row = self.tables["user"].row(user_id)
        if row:
            self.snapshots.forget("users", row)
            self.user_snapshots.forget("users", row)
            self.tables["user"].forget(user_id)
        return self.take_released()

    def expire(self, max_idle_ms: int) -> dict[str, np.ndarray]:
        """Expire ids idle for ``max_idle_ms`` of event time; return :meth:`take_released`."""
        for table in self.tables.values():
            table.expire(table.now_ms, max_idle_ms)
        return self.take_released()

    def record(
        self, batch: FeatureBatch, labels: np.ndarray, values: np.ndarray | None = None
    ) -> None:
        """After learning ``batch`` with ``labels`` (``(B, 3)``, NaN unknown) and order
        ``values`` (``(B,)`` log1p values, NaN where the sample is no order).

        An order adds its log quantity (``log(expm1(value) / price)``) to the value statistics
        (:class:`~online_models.order_value.ValueStats`) of its user and department.

        A sample with a known click label (or any positive) counts as one
        sample of its user and its item, and each positive label (click, cart,
        purchase) as one interaction; each positive label appends the item to
        the user's history (a cart or a purchase again, so the item is the
        user's latest and weighs more in its history: a click alone could not
        tell a carted item from a glanced one, and on the bundled REES46 log
        the user's own carted items are what they buy);
        every label updates the label statistics of the item, user, brand and
        category. An unknown earlier stage means "1" (the label resolver
        emits a stage's label only after its predecessor was 1).
        """
        known, positive = ~np.isnan(labels), labels == 1.0
        passed = ~known | positive  # stage passed (or passed earlier)
        increments = np.stack(
            [
                known[:, 0],
                positive[:, 0],
                known[:, 1] & passed[:, 0],
                positive[:, 1],
                known[:, 2] & passed[:, 0] & passed[:, 1],
                positive[:, 2],
            ],
            axis=1,
        ).astype(np.float64)
        users, items = batch.user.numpy(), batch.item.numpy()
        entity_rows = {
            "item": items,
            "user": users,
            "brand": batch.entry[:, ENTRY["brand"]],
            "category": batch.entry[:, ENTRY["category"]],
        }
        for name, stats in self.stats.items():
            stats.add(entity_rows[name], increments)
        self.shop_stats.add(np.zeros(len(labels), np.int64), increments)
        log_prices = batch.dense[:, LOG_PRICE].numpy().astype(np.float64) * LOG_PRICE_SCALE
        priced = known[:, 0] & (batch.entry[:, ENTRY["price"]] > 1)  # shown, with a price
        moments = np.stack([np.ones_like(log_prices), log_prices, log_prices**2], axis=1)
        self.category_prices.add(batch.entry[:, ENTRY["category"]], moments * priced[:, None])
        interactions = positive.sum(axis=1)
        seen = known[:, 0] | (interactions > 0)
        self.tables["user"].count(users[seen], interactions[seen])
        self.tables["item"].count(items[seen], interactions[seen])
        reached = positive.any(axis=1)
        self.history.append(users[reached], batch.entry[reached], self.tables["user"].now_ms)
        if values is not None:
            ordered = ~np.isnan(values) & (batch.entry[:, ENTRY["price"]] > 1)  # a known price
            quantities = np.expm1(values[ordered]) / np.expm1(log_prices[ordered])
            log_quantities = np.log(np.maximum(quantities, 1.0))
            self.values.add(users[ordered], batch.entry[ordered, ENTRY["top"]], log_quantities)

    def table_stats(self) -> dict[str, int]:
        """Rows in use per table."""
        return {name: len(table) for name, table in self.tables.items()}

    def state_dict(self) -> dict[str, Any]:
        """Tables, statistics and histories as tensors, strings and numbers."""
        return {
            "tables": {name: table.state_dict() for name, table in self.tables.items()},
            "stats": {name: stats.state_dict() for name, stats in self.stats.items()},
            "shop_stats": self.shop_stats.state_dict(),
            "category_prices": self.category_prices.state_dict(),
            "history": self.history.state_dict(),
            "values": self.values.state_dict(),
            "snapshots": self.snapshots.state_dict(),
            "user_snapshots": self.user_snapshots.state_dict(),
            "user_states_kept": self._user_states_kept,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what :meth:`state_dict` saved."""
        for name, table in self.tables.items():
            table.load_state_dict(state["tables"][name])
        for name, stats in self.stats.items():
            stats.load_state_dict(state["stats"][name])
        self.shop_stats.load_state_dict(state["shop_stats"])
        self.category_prices.load_state_dict(state["category_prices"])
        self.history.load_state_dict(state["history"])
        if "values" in state:  # older checkpoints: no orders learned yet
            self.values.load_state_dict(state["values"])
        self.snapshots.load_state_dict(state["snapshots"])
        self.user_snapshots.load_state_dict(state["user_snapshots"])
        self._user_states_kept = int(state["user_states_kept"])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


_STATE_WEIGHTS = np.random.default_rng(0).random(4096)
"""Random weights of the fingerprint that tells user states apart (:func:`_user_states`)."""


def _user_states(
    history: np.ndarray, users: np.ndarray, user_count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)``: one sample per distinct (history, user, count), and each one's.

    The key is a random projection of the three, so equal ones share a key,
    and different ones share one with probability nil.
    """
    flat = history.reshape(len(users), -1)
    key = flat @ _STATE_WEIGHTS[: flat.shape[1]] + users * math.pi + user_count * math.e
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _any_pair(index: np.ndarray, size: int) -> np.ndarray:
    """For each of ``size`` values, a position where ``index`` holds it (0 where none does).

    >>> index = np.array([2, 0, 2, 2])
    >>> position = _any_pair(index, 4)
    >>> index[position[[0, 2]]].tolist(), position[[1, 3]].tolist()  # 1 and 3 are nowhere
    ([0, 2], [0, 0])
    """
    position = np.zeros(size, dtype=np.int64)
    position[index] = np.arange(len(index))
    return position


def _history_features(
    log_prices: np.ndarray,
    entry: np.ndarray,
    history: np.ndarray,
    user_count: np.ndarray,
    item_count: np.ndarray,
) -> np.ndarray:
    """The :data:`~online_models.layout.HISTORY_DENSE_FEATURES` columns, roughly in [0, 1].

    ``history`` is ``(B, fields, slots)``, ``entry`` the candidate as a history entry.
    """
    matched = [ENTRY[name] for name in MATCHED_FIELDS]
    n_filled = _count_true(history[:, ENTRY["item"]] != 0)
    denominator = np.maximum(n_filled, 1)
    wanted = entry[:, matched]
    wanted = np.where(wanted > 0, wanted, -1)  # an unknown id matches no slot
    shares = _count_true(history[:, matched] == wanted[:, :, None]) / denominator[:, None]
    slots = np.ones(history.shape[2], dtype=history.dtype)
    history_price = (history[:, ENTRY["price"]] @ slots) / denominator  # empty slots are 0
    price_gap = np.abs(entry[:, ENTRY["price"]] - history_price) / 10.0  # buckets: 2 per doubling
    named = {
        "log_price": np.nan_to_num(log_prices) / LOG_PRICE_SCALE,
        **{f"history_same_{name}": shares[:, k] for k, name in enumerate(MATCHED_FIELDS)},
        **{
            f"history_last_{name}": _recency(history, entry, ENTRY[name]) for name in RECENCY_FIELDS
        },
        "history_price_gap": np.where(n_filled > 0, price_gap, 0.0),
        "history_fill": n_filled / history.shape[2],
        "log_item_count": np.log1p(item_count) / 5.0,
        "log_user_count": np.log1p(user_count) / 5.0,
    }
    columns = np.empty((len(entry), len(HISTORY_DENSE_FEATURES)), dtype=np.float32)
    for column, name in enumerate(HISTORY_DENSE_FEATURES):
        columns[:, column] = named[name]
    return columns


def _recency(history: np.ndarray, entry: np.ndarray, field: int) -> np.ndarray:
    """``1 / (1 + n)``: ``n`` the filled entries newer than the newest whose ``field`` is the
    candidate's; 0 if none is (``history`` newest first, with hidden entries as empty ones).

    >>> history = np.array([[[0, 4, 5, 4]], [[3, 0, 0, 0]]])  # one field; a hidden newest entry
    >>> _recency(history, np.array([[5], [4]]), 0).tolist()
    [0.5, 0.0]
    """
    filled = history[:, HISTORY_ITEM] != 0
    same = (history[:, field] == entry[:, field, None]) & filled & (entry[:, field, None] > 0)
    newer = np.cumsum(filled, axis=1) - filled  # filled entries before each slot
    first = same.argmax(axis=1)
    newer_than_first = np.take_along_axis(newer, first[:, None], axis=1)[:, 0]
    return np.where(same.any(axis=1), 1.0 / (1.0 + newer_than_first), 0.0)


def _count_true(mask: np.ndarray) -> np.ndarray:
    """Trues along the last axis, as a product of bytes with ones: ~2x faster than ``sum``.

    >>> _count_true(np.array([[True, False, True], [False, False, False]])).tolist()
    [2, 0]
    """
    ones = np.ones(mask.shape[-1], dtype=np.uint8 if mask.shape[-1] < 256 else np.int64)
    return mask.view(np.uint8) @ ones
