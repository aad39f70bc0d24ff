"""The column layouts of a feature batch, named once: what every column of the model's input is.

:class:`FeatureBatch` is what :class:`~online_models.features.FeatureEncoder`
hands the net (:mod:`online_models.net`); its ``content``, ``history`` and
``dense`` arrays are laid out as the names here say, and code outside this
module reads their columns by these names, never by position.

Example
-------
>>> CONTENT_SECTIONS[TOKENS], CONTENT_SECTIONS[BRAND], CONTENT_SECTIONS[DEVICE]
(('token', 'token', 'token', 'token'), 'brand', 'device')
>>> [HISTORY_SECTIONS[f] for f in HISTORY_FIELDS[HISTORY_CONTENT]]
['token', 'token', 'brand', 'price']
>>> DENSE_FEATURES[LOG_PRICE], DENSE_FEATURES[-1]
('log_price', 'category_purchase_rate')
>>> label_matrix([Sample("u", "i", ts=0, click=1.0)]).tolist()
[[1.0, nan, nan]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from online_models.base import TASKS, Sample

PATH_TOKENS = 4
"""Tokens kept per category path: the full path and up to three prefixes."""
PRICE_BUCKETS = 64
"""Rows of the price-bucket embedding: 0 padding, 1 missing price, 2.. log buckets."""
CONTENT_SECTIONS = (*("token",) * PATH_TOKENS, "brand", "price", "device")
"""The columns of :attr:`FeatureBatch.content`: the embedding section each one's rows are in."""
TOKENS = slice(0, PATH_TOKENS)
BRAND, PRICE, DEVICE = PATH_TOKENS, PATH_TOKENS + 1, PATH_TOKENS + 2
"""Where the category tokens, the brand, the price bucket and the device are in ``content``."""
HISTORY_FIELDS = ("item", "category", "top", "brand", "price")
"""The fields of a history entry (:attr:`FeatureBatch.history`, :attr:`FeatureBatch.entry`)."""
HISTORY_SECTIONS = {
    "item": "item",
    "category": "token",
    "top": "token",
    "brand": "brand",
    "price": "price",
}
"""The embedding section each history field's rows are in."""
ENTRY = {name: column for column, name in enumerate(HISTORY_FIELDS)}
"""The column of each history field in an entry, and its row in a history's field axis."""
HISTORY_ITEM = ENTRY["item"]
HISTORY_CONTENT = slice(HISTORY_ITEM + 1, len(HISTORY_FIELDS))
"""The history fields after the item: its content, in :data:`HISTORY_FIELDS` order."""
MATCHED_FIELDS = ("item", "category", "top", "brand")
"""History fields a candidate is matched against (the ``history_same_*`` features)."""
RECENCY_FIELDS = ("item", "category")
"""History fields whose last match is a feature (``history_last_*``: 1 if the newest
entry matches the candidate, 1/2 if the one before, ..., 0 if none does)."""
LOG_PRICE_SCALE = 10.0
"""The ``log_price`` dense column holds ``log1p(price) / LOG_PRICE_SCALE``."""
HISTORY_DENSE_FEATURES = (
    "log_price",
    *(f"history_same_{field}" for field in MATCHED_FIELDS),
    *(f"history_last_{field}" for field in RECENCY_FIELDS),
    "history_price_gap",
    "history_fill",
    "log_item_count",
    "log_user_count",
)
"""The dense features of the candidate against the user's history, and the counts."""
RATE_ENTITIES = {"item": "item", "user": "user", "brand": "brand", "category": "token"}
"""Entities with funnel-rate features, and the ID table their rows come from."""
ENTITY_DENSE_FEATURES = (
    "category_relative_price",
    *(f"{entity}_{task}_rate" for entity in RATE_ENTITIES for task in TASKS),
)
"""The dense features of the user alone or the item alone (worked out once per side)."""
DENSE_FEATURES = HISTORY_DENSE_FEATURES + ENTITY_DENSE_FEATURES
"""The columns of :attr:`FeatureBatch.dense`."""
LOG_PRICE = DENSE_FEATURES.index("log_price")
HISTORY_FILL = DENSE_FEATURES.index("history_fill")
CONTENT_DENSE_FEATURES = (
    "log_price",
    "category_relative_price",
    "history_same_category",
    "history_last_category",
    "history_same_top",
    "history_same_brand",
    "history_price_gap",
    *(f"{entity}_{task}_rate" for entity in ("brand", "category") for task in TASKS),
)
"""The dense features that describe content (a net without content drops them)."""


@dataclass(frozen=True, slots=True)
class TableCapacities:
    """Rows per ID table (row 0 of each is reserved)."""

    user: int = 1 << 18
    item: int = 1 << 18
    token: int = 1 << 15
    brand: int = 1 << 15
    device: int = 1 << 8


@dataclass(slots=True)
class FeatureBatch:
    """One batch as tensors: ``B`` samples over ``G`` distinct user states and ``H`` item states.

    Samples of one user that see the same history and count (a slate, a
    clicked item and its sampled negatives, a user's candidates) share one
    user state, so the user side of the net is worked out once per state;
    ``user_state`` maps each sample to its state's row. Likewise the item
    side (``item``, ``content``, ``item_interactions``, ``item_log_price``)
    has a row per item state, ``item_state`` mapping samples to them: one
    per candidate item in a block (:meth:`FeatureEncoder.encode_block`), one
    per sample otherwise (``item_state`` is ``None``, ``H = B``).
    """

    user: torch.Tensor  # (B,) int64 user rows
    item: torch.Tensor  # (H,)
    content: torch.Tensor  # (H, PATH_TOKENS + 3): category tokens (0-padded), brand, price, device
    dense: torch.Tensor  # (B, len(DENSE_FEATURES)) float32
    item_interactions: torch.Tensor  # (H,) float32 clicks, carts and purchases so far
    item_log_price: torch.Tensor  # (H, 1) float32 the log_price column of dense
    item_state: torch.Tensor | None  # (B,) row of each sample's item state; None: H = B
    user_state: torch.Tensor  # (B,) row of each sample's user state
    state_user: torch.Tensor  # (G,) user row of each state
    state_user_count: torch.Tensor  # (G,) float32
    history: torch.Tensor  # (G, len(HISTORY_FIELDS), N): rows per field and slot, 0 = empty
    history_fill: torch.Tensor  # (G,) float32 share of filled slots
    base_logits: torch.Tensor  # (3,) log-odds of the shop's current funnel rates
    value_base: torch.Tensor  # (B,) log1p(price * the typical quantity) (order_value)
    value_dense: torch.Tensor  # (B, len(VALUE_FEATURES)) the value head's own inputs
    entry: np.ndarray  # (B, len(HISTORY_FIELDS)) what a click appends to the history
    released: dict[str, np.ndarray] = field(default_factory=dict)  # learning: rows to reset

    @property
    def tokens(self) -> torch.Tensor:
        """``(H, PATH_TOKENS)`` category token rows."""
        return self.content[:, TOKENS]

    @property
    def price(self) -> torch.Tensor:
        """``(H,)`` price buckets."""
        return self.content[:, PRICE]

    def per_sample(self, item_side: torch.Tensor) -> torch.Tensor:
        """Rows of the item side (one per item state) as rows per sample."""
        return item_side if self.item_state is None else item_side.index_select(0, self.item_state)


def label_matrix(samples: Sequence[Sample]) -> np.ndarray:
    """``(n, 3)`` float32 click, cart, purchase labels, NaN where unknown.

    >>> label_matrix([Sample("u", "i", ts=0, click=1.0)]).tolist()
    [[1.0, nan, nan]]
    """
    nan = math.nan
    flat = [nan if v is None else v for s in samples for v in (s.click, s.cart, s.purchase)]
    return np.array(flat, dtype=np.float32).reshape(-1, len(TASKS))
