"""The multi-task net: shared embeddings, content towers, towers, funnel heads.

Item vector (cold start)
    ``v = g(n) * id_embedding + (1 - g(n)) * content``, with ``g(n) = n / (n + k)``
    growing with the item's interaction count ``n``. ``content`` comes from a
    content tower shared by every item (category path tokens, brand, price
    bucket, log price), so a never-seen item (``n = 0``, row 0) is scored from
    its content alone. The item's ID embedding is parametrised as its content
    plus a learned per-item offset (initialised at zero), so the blend is
    ``v = content + g(n) * offset``: as evidence accumulates the item moves
    away from what its content predicts, and never loses what the content
    towers keep learning from every other item.
User vector
    Likewise ``u = behaviour + g_u(n_u) * user_offset``, where ``behaviour`` is
    a tower over the mean embeddings (category, top-level category, brand,
    price, item) of the user's last interacted items (read without gradient:
    the candidate side trains the embeddings).
Wide part
    Each id (user, item, category path tokens, brand, price bucket, device)
    also has one weight per task added straight to the logits, as in Wide &
    Deep (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS
    2016, https://arxiv.org/abs/1606.07792): main effects such as an item's
    own appeal are learned in a few samples, as a logistic regression would,
    while the towers learn the interactions. A new id's weights start at 0.
Base rates
    The logits start from the log-odds of the shop's current funnel rates
    (decayed label counts, :meth:`~online_models.features.FeatureEncoder.shop_rates`),
    so no early steps go into finding intercepts: the net learns deviations.
Towers and heads
    ``[u, v, u * v, device, dense features]`` (without the content ones when
    content is off) feed the shared-bottom, MMoE or
    PLE towers (:mod:`online_models.towers`); each task tower ends in one logit.
Entire-space funnel (ESMM)
    Ma et al., "Entire Space Multi-Task Model: An Effective Approach for
    Estimating Post-Click Conversion Rate", SIGIR 2018,
    https://doi.org/10.1145/3209978.3210104. The logits are ``h_click``,
    ``h_cart|click``, ``h_purchase|cart``; ``p_click = s(h_click)``,
    ``p_cart = p_click * s(h_cart|click)``, ``p_purchase = p_cart * s(h_purchase|cart)``,
    so ``p_purchase <= p_cart <= p_click`` by construction. Losses are
    binary cross-entropies of the three entire-space probabilities, each
    masked where its label is unknown and weighted by the sample weight.
Task weighting
    Fixed weights, or uncertainty weighting (Kendall, Gal, Cipolla, "Multi-Task
    Learning Using Uncertainty to Weigh Losses", CVPR 2018,
    https://arxiv.org/abs/1705.07115): ``sum_t exp(-s_t) * L_t + s_t`` with
    learned ``s_t``.

Example
-------
>>> import torch
>>> from online_models.base import Sample
>>> from online_models.features import FeatureEncoder
>>> from online_models.learner import MultiTaskConfig
>>> config = MultiTaskConfig(architecture="mmoe").with_capacity(64)
>>> encoder, net = FeatureEncoder(config.capacities), MultiTaskNet(config)
>>> batch = encoder.encode([Sample("u1", "i9", ts=1, category="a.b", price=3.0)], learning=True)
>>> logits = net(batch)
>>> logits.shape
torch.Size([1, 3])
>>> p = funnel_probabilities(logits)
>>> bool(0 < p[0, 2] <= p[0, 1] <= p[0, 0] < 1)
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from online_models.base import TASKS
from online_models.features import (
    CONTENT_DENSE_FEATURES,
    DENSE_FEATURES,
    LOG_PRICE,
    PATH_TOKENS,
    PRICE_BUCKETS,
    FeatureBatch,
)
from online_models.towers import build_towers

if TYPE_CHECKING:
    from online_models.learner import MultiTaskConfig

HISTORY_SECTIONS = ("item", "token", "token", "brand", "price")
"""The section each history field's rows belong to (item, category, top, brand, price)."""
PROBABILITY_FLOOR = 1e-9
"""Predictions are clipped into ``[floor, 1 - floor]``: strictly inside (0, 1)."""


class MultiTaskNet(nn.Module):
    """Embeddings, content and behaviour towers, multi-task towers, funnel logits.

    ``forward`` returns ``(B, 3)`` logits ``h_click, h_cart|click,
    h_purchase|cart`` (base rates plus towers plus wide part).

    Two embedding tables hold every id, in sections: ``ids`` (users, then
    items; width ``embedding_dim``) and ``content`` (category tokens, brands,
    price buckets, devices; width ``content_dim``). Each row is the id's
    vector followed by its three wide weights, so one lookup serves both, and
    all of a sample's content ids are looked up (and their sparse gradients
    applied) at once. Row 0 of each section, "unknown", maps to the table's
    padding row 0: always zero, never trained.
    """

    def __init__(self, config: MultiTaskConfig) -> None:
        super().__init__()
        self.config = config
        caps, d, c, tasks = config.capacities, config.embedding_dim, config.content_dim, len(TASKS)
        id_sections = {"user": caps.user, "item": caps.item} if config.use_ids else {}
        content_sections = {"device": caps.device}
        if config.use_content:
            content_sections = {
                "token": caps.token,
                "brand": caps.brand,
                "price": PRICE_BUCKETS,
                **content_sections,
            }
        self.sections: dict[str, tuple[str, int]] = {}
        for table, sections in (("ids", id_sections), ("content", content_sections)):
            offset = 0
            for name, rows in sections.items():
                self.sections[name] = (table, offset)
                offset += rows
            width = d if table == "ids" else c
            if offset:
                self.add_module(
                    table, nn.Embedding(offset, width + tasks, padding_idx=0, sparse=True)
                )
        content_fields = ("token",) * PATH_TOKENS + ("brand", "price") if config.use_content else ()
        self.register_buffer(
            "content_offsets", self._offsets((*content_fields, "device")), persistent=False
        )
        self.register_buffer("id_offsets", self._offsets(("user", "item")), persistent=False)
        self.register_buffer("history_offsets", self._offsets(HISTORY_SECTIONS), persistent=False)
        behaviour_in = 1 + (d if config.use_ids else 0) + (4 * c if config.use_content else 0)
        if config.use_content:
            self.content_tower = nn.Sequential(
                nn.Linear(3 * c + 1, config.hidden), nn.ReLU(), nn.Linear(config.hidden, d)
            )
        self.behaviour_tower = nn.Sequential(
            nn.Linear(behaviour_in, config.hidden), nn.ReLU(), nn.Linear(config.hidden, d)
        )
        self.dense_columns = [
            i
            for i, name in enumerate(DENSE_FEATURES)
            if (config.use_content or name not in CONTENT_DENSE_FEATURES)
            and (config.rate_features or not name.endswith("_rate"))
        ]
        self.towers = build_towers(
            config.architecture,
            in_dim=3 * d + c + len(self.dense_columns),
            n_tasks=tasks,
            hidden=config.hidden,
            experts=config.experts,
            tower_hidden=config.tower_hidden,
        )
        self.heads = nn.ModuleList(nn.Linear(self.towers.out_dim, 1) for _ in TASKS)
        self.task_log_variance = nn.Parameter(torch.zeros(tasks))
        self.reset_parameters()

    @property
    def sparse_names(self) -> tuple[str, ...]:
        """Names of the embedding tables (sparse gradients)."""
        return tuple(
            f"{name}.weight" for name, m in self.named_modules() if isinstance(m, nn.Embedding)
        )

    def _offsets(self, fields: Iterable[str]) -> torch.Tensor:
        """First row of each field's section in its table (0 for sections the net lacks)."""
        starts = [self.sections[f][1] if f in self.sections else 0 for f in fields]
        return torch.tensor(starts, dtype=torch.int64)

    def _global(self, section: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows of ``section`` as rows of its table (0, unknown, stays 0)."""
        offset = self.sections[section][1]
        return torch.where(rows > 0, rows + offset, 0) if offset else rows

    def embedding_rows(
        self, section: str, rows: torch.Tensor
    ) -> tuple[nn.Parameter, torch.Tensor] | None:
        """The weight holding ``section`` and ``rows`` as its rows (``None``: not in this net)."""
        if section not in self.sections:
            return None
        table = self.get_submodule(self.sections[section][0])
        return table.weight, self._global(section, rows)

    def reset_parameters(self) -> None:
        """ID vectors and wide weights start at zero (a new id adds nothing); content small."""
        for section, (table, _) in self.sections.items():
            rows = self.get_submodule(table).num_embeddings
            self.reset_rows(section, torch.arange(1, rows))

    def reset_rows(
        self, section: str, rows: torch.Tensor, generator: torch.Generator | None = None
    ) -> None:
        """Reinitialise ``rows`` of ``section`` for new owners (rows past it are ignored)."""
        weight, index = self.embedding_rows(section, rows)
        table = self.sections[section][0]
        end = self._section_end(section)
        index = index[(index > 0) & (index < end)]
        with torch.no_grad():
            weight[index] = 0.0
            if table == "content":
                width = self.config.content_dim
                init = torch.randn(len(index), width, generator=generator)
                weight[index, :width] = init * self.config.init_std
            weight[0] = 0.0

    def _section_end(self, section: str) -> int:
        table, offset = self.sections[section]
        later = [o for s, (t, o) in self.sections.items() if t == table and o > offset]
        return min(later) if later else self.get_submodule(table).num_embeddings

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        config, d, c = self.config, self.config.embedding_dim, self.config.content_dim
        fields = [batch.device.unsqueeze(1)]
        if config.use_content:
            fields = [batch.tokens, batch.brand.unsqueeze(1), batch.price.unsqueeze(1), *fields]
        rows = torch.cat(fields, dim=1)
        content = self.content(torch.where(rows > 0, rows + self.content_offsets, 0))
        wide = content[:, :, c:].sum(dim=1)  # (B, fields, c + 3) -> (B, 3)
        device = content[:, -1, :c]
        item_content = user_offset = item_offset = None
        if config.use_content:
            token = content[:, :PATH_TOKENS, :c].sum(dim=1)
            brand, price = content[:, PATH_TOKENS, :c], content[:, PATH_TOKENS + 1, :c]
            log_price = batch.dense[:, LOG_PRICE : LOG_PRICE + 1]
            item_content = self.content_tower(torch.cat([token, brand, price, log_price], dim=1))
        if config.use_ids:
            rows = torch.stack([batch.user, batch.item], dim=1)
            ids = self.ids(torch.where(rows > 0, rows + self.id_offsets, 0))
            wide = wide + ids[:, :, d:].sum(dim=1)
            user_offset, item_offset = ids[:, 0, :d], ids[:, 1, :d]
        u = self.user_vector(batch, user_offset)
        v = self.item_vector(batch, item_content, item_offset)
        dense = batch.dense[:, self.dense_columns]
        x = torch.cat([u, v, u * v, device, dense], dim=1)
        hidden = self.towers(x)
        deep = torch.cat([head(h) for head, h in zip(self.heads, hidden, strict=True)], dim=1)
        return batch.base_logits + deep + wide

    def item_vector(
        self, batch: FeatureBatch, content: torch.Tensor | None, offset: torch.Tensor | None
    ) -> torch.Tensor:
        """``content + g(n) * offset`` (content only, or offset only, per config)."""
        if content is None:
            return offset
        if offset is None:
            return content
        gate = batch.item_count / (batch.item_count + self.config.item_gate_k)
        return content + gate.unsqueeze(1) * offset

    def user_vector(self, batch: FeatureBatch, offset: torch.Tensor | None) -> torch.Tensor:
        """``behaviour(history) + g_u(n_u) * offset``."""
        behaviour = self.behaviour_tower(self.history_summary(batch.history))
        if offset is None:
            return behaviour
        gate = batch.user_count / (batch.user_count + self.config.user_gate_k)
        return behaviour + gate.unsqueeze(1) * offset

    @torch.no_grad()
    def history_summary(self, history: torch.Tensor) -> torch.Tensor:
        """How full the history is, and the mean embedding of each of its fields.

        ``history`` is ``(B, N, 5)``: item, category, top-level category, brand
        and price-bucket rows per slot, 0 for an empty slot. The embeddings are
        read, not trained, here (the candidate side trains them): on the
        simulated shop that is as good and the step about a fifth faster.
        """
        config, d, c = self.config, self.config.embedding_dim, self.config.content_dim
        batch_size, slots = history.shape[:2]
        filled = (history[:, :, 0] > 0).float().sum(dim=1, keepdim=True)
        rows = torch.where(history > 0, history + self.history_offsets, 0)
        summary = [filled / slots]
        if config.use_ids:
            summary.append(_sum_bags(self.ids.weight, rows[:, :, 0])[:, :d] / filled.clamp(min=1))
        if config.use_content:
            bags = rows[:, :, 1:].transpose(1, 2).reshape(-1, slots)  # one bag per field
            sums = _sum_bags(self.content.weight, bags).view(batch_size, -1, c + len(TASKS))
            summary.append(sums[:, :, :c].flatten(1) / filled.clamp(min=1))
        return torch.cat(summary, dim=1)

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted total loss and the per-task losses (detached).

        ``labels`` is ``(B, 3)`` with NaN where unknown; ``weights`` ``(B,)``.
        """
        known = ~torch.isnan(labels)
        targets = torch.where(known, labels, torch.zeros_like(labels))
        log_p = torch.cumsum(F.logsigmoid(logits), dim=1)  # entire-space log p_click/cart/purchase
        log_p = log_p.clamp(max=-1e-7)
        log_not_p = torch.log(-torch.expm1(log_p))
        bce = -(targets * log_p + (1 - targets) * log_not_p)
        per_task = (bce * known * weights.unsqueeze(1)).sum(dim=0) / logits.shape[0]
        if self.config.conditional_loss_weight > 0:
            passed = ~known | (labels > 0.5)  # stage passed (an unknown earlier stage was)
            reached = torch.cat(
                [passed[:, :1], passed[:, :1] & passed[:, 1:2]], dim=1
            )  # clicked; clicked and carted
            step = known[:, 1:] & reached
            step_bce = F.binary_cross_entropy_with_logits(
                logits[:, 1:], targets[:, 1:], reduction="none"
            )
            conditional = (step_bce * step * weights.unsqueeze(1)).sum(dim=0) / logits.shape[0]
            per_task = per_task + self.config.conditional_loss_weight * torch.cat(
                [torch.zeros(1), conditional]
            )
        fixed = torch.tensor(self.config.task_weights, dtype=per_task.dtype)
        if self.config.task_weighting == "uncertainty":
            s = self.task_log_variance
            total = (fixed * (torch.exp(-s) * per_task + s)).sum()
        else:
            total = (fixed * per_task).sum()
        return total, per_task.detach()


def _sum_bags(weight: torch.Tensor, bags: torch.Tensor) -> torch.Tensor:
    """Sum of the rows in each bag (a row of ``bags``); row 0, padding, is all zeros."""
    return F.embedding_bag(bags, weight, mode="sum")


def funnel_probabilities(logits: torch.Tensor) -> np.ndarray:
    """``(B, 3)`` entire-space ``p_click, p_cart, p_purchase`` in float64."""
    p = torch.sigmoid(logits.detach().double()).cumprod(dim=1).numpy()
    return np.clip(p, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
