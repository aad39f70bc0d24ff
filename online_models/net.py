"""The multi-task net: shared embeddings, content towers, towers, funnel heads.

Item vector (cold start)
    ``v = g(n) * id_embedding + (1 - g(n)) * content``, with ``g(n) = n / (n + k)``
    growing with the item's interaction count ``n`` (its clicks, carts and
    purchases: not its sampled negatives nor its impressions; gating on every
    sample seen instead opened the gate too early and cost 0.005 of cold-item
    click AUC without impressions). ``content`` comes from a
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
    The dense features have such weights too (one per feature and task,
    starting at 0, stepped at the tables' learning rate): "the user came back
    to this item" is worth a large logit from the first few hundred samples
    on, long before the towers find it (on the bundled REES46 sample, the
    top-10 lists' click hit rate went from 0.189 to 0.197 with it, at the
    bench's batches of 2,048).
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
Embedding tables
    Each table (:class:`EmbeddingTable`) learns its rows with its own Adagrad
    (Duchi, Hazan, Singer, JMLR 2011): a training lookup reads the distinct
    rows of the batch once, as one small dense leaf tensor, and
    :meth:`EmbeddingTable.step` writes back only those rows (and their
    squared-gradient sums). That is the sparse update of ``torch.optim.Adagrad``
    on a ``sparse=True`` embedding, without building, coalescing and masking
    sparse gradient tensors at every step.
Order value
    A fourth head on the same input as the towers (the user and item
    vectors, their product, the device and the dense features) plus the
    order statistics of :mod:`online_models.order_value` predicts an order's
    ``log1p`` value as a correction to ``log1p(price * q)``, ``q`` the
    typical quantity of the user and department: it learns, by absolute error weighted
    :data:`VALUE_LOSS_WEIGHT`, only from order samples, and its gradients
    reach the shared embeddings and content towers like the funnel heads'.
    Its last layer starts at zero, so it predicts the statistics' estimate
    until it has learned.
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
>>> from online_models.config import MultiTaskConfig
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

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from online_models.base import TASKS
from online_models.config import MultiTaskConfig
from online_models.demand import DemandHead
from online_models.layout import (
    BRAND,
    CONTENT_DENSE_FEATURES,
    CONTENT_SECTIONS,
    DENSE_FEATURES,
    DEVICE,
    HISTORY_CONTENT,
    HISTORY_FIELDS,
    HISTORY_ITEM,
    HISTORY_SECTIONS,
    PRICE,
    PRICE_BUCKETS,
    TOKENS,
    FeatureBatch,
)
from online_models.order_value import VALUE_FEATURES
from online_models.towers import build_towers
from online_models.towers.mlp import mlp

PROBABILITY_FLOOR = 1e-9
"""Predictions are clipped into ``[floor, 1 - floor]``: strictly inside (0, 1)."""
LOSS_SAMPLES = 1024
"""Samples whose summed losses make one unit of loss (see :meth:`MultiTaskNet.loss`)."""
VALUE_LOSS_WEIGHT = 0.1
"""Weight of the order-value head's error beside the funnel's losses. At 1 (squared error) it
moved the shared layers enough to cost seed 7's click AUC 0.0011 (paired DeLong SE
0.0002, mtl with against without order samples); at 0.1 every funnel task is within
two SEs on seeds 7 and 11 and the value error is the same (MAE of log1p value 0.394
and 0.415): most of the value is in the order statistics, the head corrects them."""
ADAGRAD_EPS = 1e-10
"""Added to Adagrad's root of summed squares (``torch.optim.Adagrad``'s default)."""


class EmbeddingTable(nn.Module):
    """A table of rows, each learned by Adagrad from the batches that use it.

    Row 0 is padding: always zero, never learned. Outside of autograd (scoring)
    a lookup is a plain gather; with autograd on, the batch's distinct rows
    become one leaf tensor whose gradient :meth:`step` applies.

    Example
    -------
    >>> table = EmbeddingTable(rows=4, width=2, lr=0.5)
    >>> table.weight[1:] = 1.0
    >>> table(torch.tensor([[1, 1], [0, 2]])).sum().backward()
    >>> table.step()
    >>> table.weight.tolist()   # row 1 used twice: gradient 2, step lr * 2 / sqrt(4)
    [[0.0, 0.0], [0.5, 0.5], [0.5, 0.5], [1.0, 1.0]]
    """

    def __init__(self, rows: int, width: int, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.register_buffer("weight", torch.zeros(rows, width))
        self.register_buffer("squared_gradients", torch.zeros(rows, width))
        self._used: tuple[torch.Tensor, torch.Tensor] | None = None
        self._position = np.zeros(rows, dtype=np.int64)  # scratch of distinct_rows

    @property
    def num_embeddings(self) -> int:
        """Rows, padding included."""
        return self.weight.shape[0]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        rows, positions = self.lookup(index)
        return gather(rows, positions)

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, positions)``: ``rows[positions]`` are the rows at ``index``.

        Scoring: the table itself and ``index``. Training: the distinct rows
        of ``index`` as one leaf tensor (stepped by :meth:`step`) and where
        each of ``index`` is in it. Callers gather column slices of ``rows``
        (:func:`gather`), so each part of a row gets its gradient from the
        parts of the batch that use it, without a full-width gradient per
        lookup.
        """
        if not torch.is_grad_enabled():
            return self.weight, index
        unique, inverse = distinct_rows(index.numpy().ravel(), self._position)
        unique = torch.from_numpy(unique)
        rows = self.weight.index_select(0, unique).requires_grad_()
        self._used = (unique, rows)
        return rows, torch.from_numpy(inverse).view(index.shape)

    @torch.no_grad()
    def step(self) -> None:
        """Adagrad on the rows of the last training lookup (then forget it)."""
        if self._used is None:
            return
        unique, rows = self._used
        self._used = None
        if rows.grad is None:
            return
        grad = rows.grad
        squares = self.squared_gradients.index_select(0, unique).addcmul_(grad, grad)
        self.squared_gradients.index_copy_(0, unique, squares)
        step = grad.div_(squares.sqrt_().add_(ADAGRAD_EPS))
        self.weight.index_copy_(0, unique, rows.detach().sub_(step, alpha=self.lr))
        self.weight[0] = 0.0
        self.squared_gradients[0] = 0.0


def gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[index]`` as ``(*index.shape, width)`` (backward: an ``index_add_``).

    >>> gather(torch.eye(3), torch.tensor([[2, 0]])).tolist()
    [[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]
    """
    return rows.index_select(0, index.reshape(-1)).view(*index.shape, rows.shape[1])


def distinct_rows(index: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique, inverse)`` of ``index`` in linear time, ``unique[inverse] == index``.

    ``position`` is scratch space with a slot per possible row. Each row
    value gets one of its occurrences written into its slot (whichever
    assignment lands last), which makes that occurrence its representative:
    no sort, unlike ``np.unique``, at a batch's few thousand lookups.

    >>> unique, inverse = distinct_rows(np.array([5, 2, 5, 0]), np.zeros(8, np.int64))
    >>> sorted(unique.tolist()), unique[inverse].tolist()
    ([0, 2, 5], [5, 2, 5, 0])
    """
    order = np.arange(len(index))
    position[index] = order
    unique = index[position[index] == order]
    position[unique] = np.arange(len(unique))
    return unique, position[index]


class TaskHeads(nn.Module):
    """One logit per task from its own hidden vector: ``w_t . h_t + b_t``.

    >>> heads = TaskHeads(tasks=3, width=4)
    >>> heads(torch.ones(2, 3, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, tasks: int, width: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(width)  # nn.Linear's default init, per task
        self.weight = nn.Parameter(torch.empty(tasks, width).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(tasks).uniform_(-bound, bound))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        block = torch.block_diag(*self.weight.unsqueeze(2))  # (tasks * width, tasks)
        return torch.addmm(self.bias, hidden.flatten(1), block)


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
        self.sections: dict[str, tuple[str, int, int]] = {}  # table, first row, end
        for table, sections in (("ids", id_sections), ("content", content_sections)):
            offset = 0
            for name, rows in sections.items():
                self.sections[name] = (table, offset, offset + rows)
                offset += rows
            width = d if table == "ids" else c
            if offset:
                self.add_module(table, EmbeddingTable(offset, width + tasks, config.sparse_lr))
        columns = CONTENT_SECTIONS if config.use_content else CONTENT_SECTIONS[DEVICE:]
        self.register_buffer("content_offsets", self._offsets(columns), persistent=False)
        if config.use_content:  # where the content fields of a history entry start
            sections = [HISTORY_SECTIONS[f] for f in HISTORY_FIELDS[HISTORY_CONTENT]]
            self.register_buffer("history_offsets", self._offsets(sections), persistent=False)
        behaviour_in = 1 + (d if config.use_ids else 0) + (4 * c if config.use_content else 0)
        if config.use_content:
            self.content_tower = nn.Sequential(
                *mlp(3 * c + 1, config.hidden), nn.Linear(config.hidden, d)
            )
        self.behaviour_tower = nn.Sequential(
            *mlp(behaviour_in, config.hidden), nn.Linear(config.hidden, d)
        )
        dense_columns = [
            i
            for i, name in enumerate(DENSE_FEATURES)
            if config.use_content or name not in CONTENT_DENSE_FEATURES
        ]
        self.dense_columns = None if len(dense_columns) == len(DENSE_FEATURES) else dense_columns
        in_dim = 3 * d + c + len(dense_columns)
        self.towers = build_towers(
            config.architecture,
            in_dim=in_dim,
            n_tasks=tasks,
            hidden=config.hidden,
            experts=config.experts,
            tower_hidden=config.tower_hidden,
        )
        self.heads = TaskHeads(tasks, self.towers.out_dim)
        self.dense_wide = nn.Linear(len(dense_columns), tasks, bias=False)
        self.value_head = nn.Sequential(
            *mlp(in_dim + len(VALUE_FEATURES), config.tower_hidden),
            nn.Linear(config.tower_hidden, 1),
        )
        self.task_log_variance = nn.Parameter(torch.zeros(tasks))
        self.reset_parameters()
        self.demand = DemandHead(d)  # drawn last: the funnel's initial weights stay as they were

    @property
    def tables(self) -> list[EmbeddingTable]:
        """The embedding tables (each steps its own rows: :meth:`EmbeddingTable.step`)."""
        return [m for m in self.modules() if isinstance(m, EmbeddingTable)]

    def _offsets(self, fields: Iterable[str]) -> torch.Tensor:
        """First row of each field's section in its table (0 for sections the net lacks)."""
        starts = [self.sections[f][1] if f in self.sections else 0 for f in fields]
        return torch.tensor(starts, dtype=torch.int64)

    def reset_parameters(self) -> None:
        """ID vectors and wide weights start at zero (a new id adds nothing); content small."""
        for section, (_, start, end) in self.sections.items():
            self.reset_rows(section, torch.arange(1, end - start))
        nn.init.zeros_(self.dense_wide.weight)
        nn.init.zeros_(self.value_head[-1].weight)  # the statistics' estimate until it learns
        nn.init.zeros_(self.value_head[-1].bias)

    def reset_rows(
        self, section: str, rows: torch.Tensor, generator: torch.Generator | None = None
    ) -> None:
        """Reinitialise ``rows`` of ``section`` for new owners (rows past it are ignored).

        Their Adagrad sums restart too; a section the net lacks is ignored.
        """
        if section not in self.sections:
            return
        table_name, offset, end = self.sections[section]
        table = self.get_submodule(table_name)
        index = rows + offset
        index = index[(rows > 0) & (index < end)]
        table.weight[index] = 0.0
        table.squared_gradients[index] = 0.0
        if table_name == "content":
            width = self.config.content_dim
            init = torch.randn(len(index), width, generator=generator)
            table.weight[index, :width] = init * self.config.init_std

    def _rows(self, section: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows of ``section`` as rows of its table (0, unknown, stays 0)."""
        offset = self.sections[section][1]
        return torch.where(rows > 0, rows + offset, 0) if offset else rows

    def forward(self, batch: FeatureBatch, with_value: bool = False) -> torch.Tensor | tuple:
        """``(B, 3)`` funnel logits; with ``with_value``, also ``(B,)`` predicted order values
        (``log1p``: the batch's ``value_base`` plus the value head's correction)."""
        config, d, c = self.config, self.config.embedding_dim, self.config.content_dim
        columns = slice(None) if config.use_content else slice(DEVICE, DEVICE + 1)
        rows = batch.content[:, columns]
        table, fields = self.content.lookup(torch.where(rows > 0, rows + self.content_offsets, 0))
        vectors, wides = table[:, :c], table[:, c:]
        wide = gather(wides, fields).sum(dim=1)  # per item state, as everything item-side
        device = vectors.index_select(0, fields[:, DEVICE if config.use_content else 0])
        item_content = user_offset = item_offset = None
        if config.use_content:
            tokens = gather(vectors, fields[:, TOKENS]).sum(dim=1)
            brand_price = gather(vectors, fields[:, BRAND : PRICE + 1]).flatten(1)
            content_in = torch.cat([tokens, brand_price, batch.item_log_price], dim=1)
            item_content = self.content_tower(content_in)
        states = len(batch.state_user)
        if config.use_ids:
            users, items = self._rows("user", batch.state_user), self._rows("item", batch.item)
            table, ids = self.ids.lookup(torch.cat([users, items]))
            offsets, wides = table[:, :d], table[:, d:]
            user_rows, item_rows = ids[:states], ids[states:]
            user_offset = offsets.index_select(0, user_rows)
            user_wide = wides.index_select(0, user_rows)
            item_offset = offsets.index_select(0, item_rows)
            wide = wide + wides.index_select(0, item_rows)
        user = self.user_vector(batch, user_offset).index_select(0, batch.user_state)  # (B, d)
        wide = batch.per_sample(wide)
        if config.use_ids:
            wide = wide + user_wide.index_select(0, batch.user_state)
        v = batch.per_sample(self.item_vector(batch, item_content, item_offset))
        dense = batch.dense if self.dense_columns is None else batch.dense[:, self.dense_columns]
        x = torch.cat([user, v, user * v, batch.per_sample(device), dense], dim=1)
        deep = self.heads(self.towers(x))
        logits = batch.base_logits + deep + wide + self.dense_wide(dense)
        if not with_value:
            return logits
        correction = self.value_head(torch.cat([x, batch.value_dense], dim=1)).squeeze(1)
        return logits, batch.value_base + correction

    def item_representation(
        self,
        items: torch.Tensor,
        content: torch.Tensor,
        log_price: torch.Tensor,
        interactions: torch.Tensor,
    ) -> torch.Tensor:
        """``(H, d)`` item vectors (:meth:`item_vector`) of items alone, for the item-side heads.

        ``items`` are item rows, ``content`` the ``(H, PATH_TOKENS + 2)``
        token, brand and price-bucket rows, ``log_price`` the ``(H, 1)``
        log-price column, ``interactions`` the ``(H,)`` gate counts, as a
        :class:`FeatureBatch` holds them. The demand head
        (:class:`~online_models.demand.DemandHead`) reads them without
        gradient: the funnel's labels train the item side.
        """
        c, d = self.config.content_dim, self.config.embedding_dim
        item_content = offset = None
        if self.config.use_content:
            rows = torch.where(content > 0, content + self.content_offsets[:DEVICE], 0)
            table, fields = self.content.lookup(rows)
            vectors = table[:, :c]
            tokens = gather(vectors, fields[:, TOKENS]).sum(dim=1)
            brand_price = gather(vectors, fields[:, BRAND : PRICE + 1]).flatten(1)
            item_content = self.content_tower(torch.cat([tokens, brand_price, log_price], dim=1))
        if self.config.use_ids:
            table, ids = self.ids.lookup(self._rows("item", items))
            offset = table[:, :d].index_select(0, ids)
        gate = interactions / (interactions + self.config.item_gate_k)
        if item_content is None:
            return offset
        return item_content if offset is None else item_content + gate.unsqueeze(1) * offset

    def item_vector(
        self, batch: FeatureBatch, content: torch.Tensor | None, offset: torch.Tensor | None
    ) -> torch.Tensor:
        """``content + g(n) * offset`` (content only, or offset only, per config)."""
        if content is None:
            return offset
        if offset is None:
            return content
        interactions = batch.item_interactions
        gate = interactions / (interactions + self.config.item_gate_k)
        return content + gate.unsqueeze(1) * offset

    def user_vector(self, batch: FeatureBatch, offset: torch.Tensor | None) -> torch.Tensor:
        """``behaviour(history) + g_u(n_u) * offset``, one per user state."""
        behaviour = self.behaviour_tower(self.history_summary(batch.history, batch.history_fill))
        if offset is None:
            return behaviour
        count = batch.state_user_count
        gate = count / (count + self.config.user_gate_k)
        return behaviour + gate.unsqueeze(1) * offset

    @torch.no_grad()
    def history_summary(self, history: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """How full the history is, and the mean embedding of each of its fields.

        ``history`` is ``(G, 5, N)``: item, category, top-level category,
        brand and price-bucket rows per slot, 0 for an empty slot; ``fill``
        the ``(G,)`` share of filled slots. Each field is summed over the rows
        of its own section (row 0 of a section, never handed out nor learned,
        stays zero: an empty slot adds nothing), divided by the filled
        slots. The embeddings are read, not trained, here (the candidate
        side trains them): on the simulated shop that is as good and the step
        about a fifth faster.
        """
        config, d, c = self.config, self.config.embedding_dim, self.config.content_dim
        groups, _, slots = history.shape
        parts = [fill.unsqueeze(1)]
        if config.use_ids:
            items = history[:, HISTORY_ITEM] + self.sections["item"][1]  # row 0 -> a zero row
            parts.append(F.embedding_bag(items, self.ids.weight, mode="sum")[:, :d])
        if config.use_content:
            content = history[:, HISTORY_CONTENT] + self.history_offsets.unsqueeze(1)
            content = content.reshape(-1, slots)
            sums = F.embedding_bag(content, self.content.weight, mode="sum")
            parts.append(sums.view(groups, -1, c + len(TASKS))[:, :, :c].flatten(1))
        summary = torch.cat(parts, dim=1)
        summary[:, 1:] /= (fill * slots).clamp(min=1).unsqueeze(1)  # sums to means
        return summary

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted total loss and the per-task losses (detached).

        ``labels`` is ``(B, 3)`` with NaN where unknown; ``weights`` ``(B,)``;
        ``offsets`` ``(B,)``, added to the click logit (the sampling
        correction of sampled pairs, :mod:`online_models.labels`).
        Per-sample losses are summed and divided by :data:`LOSS_SAMPLES`, a
        constant, not by ``B``: a sample weighs the same in a batch of three
        as in a batch of two thousand. A mean over the batch gave a batch of
        three clicks the pull of a batch of sixty negatives; the live worker,
        whose batches hold what arrived in the last few tens of ms, then
        over-predicted clicks 3.5 times over (measured on the demo's shop).
        """
        if offsets is not None and bool(offsets.any()):
            logits = torch.cat([logits[:, :1] + offsets.unsqueeze(1), logits[:, 1:]], dim=1)
        known = ~torch.isnan(labels)
        targets = torch.nan_to_num(labels)
        log_p = torch.cumsum(F.logsigmoid(logits), dim=1)  # entire-space log p_click/cart/purchase
        log_p = log_p.clamp(max=-1e-7)
        log_not_p = torch.log(-torch.expm1(log_p))
        bce = -(log_not_p + targets * (log_p - log_not_p))
        per_task = (bce * (known * weights.unsqueeze(1))).sum(dim=0) / LOSS_SAMPLES
        fixed = torch.tensor(self.config.task_weights, dtype=per_task.dtype)
        if self.config.task_weighting == "uncertainty":
            s = self.task_log_variance
            total = (fixed * (torch.exp(-s) * per_task + s)).sum()
        else:
            total = (fixed * per_task).sum()
        return total, per_task.detach()


def funnel_probabilities(logits: torch.Tensor) -> np.ndarray:
    """``(B, 3)`` entire-space ``p_click, p_cart, p_purchase`` in float64."""
    p = torch.sigmoid(logits.detach().double()).cumprod(dim=1).numpy()
    return np.clip(p, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
