"""The online multi-task learner and its two ablation baselines.

:class:`MultiTaskLearner` ("mtl") speaks the :class:`~online_models.base.Learner`
protocol: it scores a batch (:meth:`~MultiTaskLearner.predict`), learns a
micro-batch in one optimiser step per at most ``max_batch_size`` samples
(:meth:`~MultiTaskLearner.learn`), and saves and restores its whole state as
plain tensors, numbers, strings, lists and dicts. Embedding tables learn
with Adagrad on the rows a batch touches only
(:class:`~online_models.net.EmbeddingTable`); the dense layers use Adam,
the dense features' wide weights at the tables' (larger) learning rate.
Adam's step has the same size whatever its gradient's, so a step on fewer
than :data:`~online_models.net.LOSS_SAMPLES` samples takes that share of the
learning rates (the linear scaling rule, Goyal et al. 2017): a worker at a
trickle, learning a few samples every batch wait, would otherwise take a
full step per few samples (``bench quality`` cut into 10-s micro-batches:
seed 7 AUC 0.748 / 0.847 / 0.885 with full steps, 0.751 / 0.858 / 0.900 with
scaled ones).

Baselines on the same net and protocol: :func:`single_task` (one net per task,
no sharing) and :func:`id_only` (no content towers).

Example
-------
>>> from online_models.base import Sample, funnel_consistent
>>> learner = MultiTaskLearner(MultiTaskConfig(architecture="mmoe").with_capacity(256))
>>> samples = [Sample("u1", "i1", ts=1, category="a.b", brand="x", price=5.0,
...                   click=1.0, cart=1.0, purchase=None),
...            Sample("u2", "i2", ts=2, category="c", click=0.0, cart=0.0, purchase=0.0)]
>>> p = learner.predict(samples)
>>> p.shape, funnel_consistent(p)
((2, 3), True)
>>> learner.learn(samples)
>>> learner.model_version, learner.item_interactions("i1"), learner.is_cold("i1")
(1, 2, True)
>>> learner.table_stats()["item"]
2
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from online_models.base import (
    TASKS,
    CandidateBlock,
    Learner,
    LearnerHealth,
    Sample,
)
from online_models.config import MultiTaskConfig
from online_models.demand import DEMAND_LR
from online_models.features import FeatureEncoder
from online_models.layout import FeatureBatch, label_matrix
from online_models.net import LOSS_SAMPLES, VALUE_LOSS_WEIGHT, MultiTaskNet, funnel_probabilities


class MultiTaskLearner(Learner):
    """The multi-task net with its feature state, learning online.

    Parameters
    ----------
    config
        See :class:`MultiTaskConfig`.
    """

    def __init__(self, config: MultiTaskConfig | None = None) -> None:
        self._build(config or MultiTaskConfig())

    def _build(self, config: MultiTaskConfig) -> None:
        torch.set_num_threads(config.num_threads)
        torch.sparse.check_sparse_tensor_invariants.disable()  # the default, said explicitly
        self.config = config
        self.name = config.name
        self.generator = torch.Generator().manual_seed(config.seed)
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.net = MultiTaskNet(config)
        self.encoder = FeatureEncoder(
            config.capacities, config.history_length, stats_half_life=config.stats_half_life
        )
        self.model_version = 0
        wide = list(self.net.dense_wide.parameters())
        demand = list(self.net.demand.parameters())  # its own rate: few steps an hour
        deep = [p for p in self.net.parameters() if all(p is not w for w in wide + demand)]
        groups = [
            {"params": deep},
            {"params": wide, "lr": config.sparse_lr},
            {"params": demand, "lr": DEMAND_LR},
        ]
        self._groups = groups
        self._optimiser: torch.optim.Adam | None = None
        self._optimiser_state: dict[str, Any] | None = None  # restored, for when it is made
        self._rates = (config.dense_lr, config.sparse_lr)  # of the groups a funnel step scales

    @property
    def optimiser(self) -> torch.optim.Adam:
        """The dense parameters' Adam, made on first use.

        A process's first optimiser imports ``torch._dynamo`` (2-3 s): a
        starting worker does that in the background while it joins its
        consumer group (:mod:`streams.preload`), so it is made only when it
        is needed, by then at no cost.
        """
        if self._optimiser is None:
            self._optimiser = torch.optim.Adam(self._groups, lr=self.config.dense_lr, fused=True)
            if self._optimiser_state is not None:
                self._optimiser.load_state_dict(self._optimiser_state)
                self._optimiser_state = None
        return self._optimiser

    # -- the protocol -------------------------------------------------------------

    def remember(self, samples: Sequence[Sample]) -> FeatureBatch:
        """Keep the features keyed samples are scored with now, to learn their labels with.

        Returns the encoded batch, which :meth:`predict` of the same samples reuses.
        """
        return self.encoder.encode(samples, learning=False, keep=True)

    def predict(
        self, samples: Sequence[Sample], remembered: FeatureBatch | None = None
    ) -> np.ndarray:
        """``(n, 3)`` ``p_click, p_cart, p_purchase``; changes nothing.

        ``remembered`` is what :meth:`remember` returned for these samples.
        """
        if not samples:
            return np.empty((0, len(TASKS)))
        batch = self.encoder.encode(samples, learning=False) if remembered is None else remembered
        with torch.inference_mode():
            logits = self.net(batch)
        return funnel_probabilities(logits)

    def predict_block(self, block: CandidateBlock) -> np.ndarray:
        """``(P, 3)`` predictions of a block's pairs, as :meth:`predict` of its samples gives them.

        Each user's and each item's features and vectors are worked out once
        (:meth:`~online_models.features.FeatureEncoder.encode_block`), only
        what depends on both once per pair.
        """
        if len(block) == 0:
            return np.empty((0, len(TASKS)))
        with torch.inference_mode():
            logits = self.net(self.encoder.encode_block(block))
        return funnel_probabilities(logits)

    def predict_block_with_values(
        self, block: CandidateBlock
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict_block` and each pair's expected order value, ``expm1`` of the value
        head's prediction (the typical order: a log-scale estimate), from one pass of the net."""
        if len(block) == 0:
            return np.empty((0, len(TASKS))), np.empty(0)
        with torch.inference_mode():
            logits, values = self.net(self.encoder.encode_block(block), with_value=True)
        return funnel_probabilities(logits), np.expm1(values.double().numpy()).clip(min=0.0)

    def predict_values(self, samples: Sequence[Sample]) -> np.ndarray:
        """``(n,)`` predicted ``log1p`` value of an order of each sample's item by its user."""
        if not samples:
            return np.empty(0)
        with torch.inference_mode():
            _, values = self.net(self.encoder.encode(samples, learning=False), with_value=True)
        return values.double().numpy()

    def learn(self, samples: Sequence[Sample]) -> None:
        """One optimiser step per chunk of at most ``max_batch_size`` samples."""
        labels = label_matrix(samples)
        size = self.config.max_batch_size
        for start in range(0, len(samples), size):
            self._learn_batch(samples[start : start + size], labels[start : start + size])

    def _learn_batch(self, samples: Sequence[Sample], label_rows: np.ndarray) -> None:
        labels = torch.from_numpy(label_rows)
        values = np.array([math.nan if s.value is None else s.value for s in samples])
        ordered = ~np.isnan(values)
        if torch.isnan(labels).all() and not ordered.any():
            return
        weights = torch.tensor([s.weight for s in samples], dtype=torch.float32)
        offsets = torch.tensor([s.logit_offset for s in samples], dtype=torch.float32)
        batch = self.encoder.encode(samples, learning=True, labels=label_rows)
        self._reset_released(batch.released)
        if ordered.any():  # the value head runs only for a batch with orders
            logits, predicted = self.net(batch, with_value=True)
            error = predicted[torch.from_numpy(ordered)] - torch.from_numpy(values[ordered]).float()
            value_loss = VALUE_LOSS_WEIGHT * error.abs().sum() / LOSS_SAMPLES
        else:
            logits, value_loss = self.net(batch), 0.0
        total = self.net.loss(logits, labels, weights, offsets)[0] + value_loss
        self.optimiser.zero_grad(set_to_none=True)
        total.backward()
        for table in self.net.tables:
            table.step()
        share = min(1.0, len(samples) / LOSS_SAMPLES)  # of the step a full batch takes
        for group, rate in zip(self.optimiser.param_groups, self._rates, strict=False):
            group["lr"] = rate * share
        self.optimiser.step()
        self.encoder.record(batch, label_rows, values)
        self.model_version += 1
        if self.config.id_ttl_ms is not None and self.model_version % self.config.expiry_every == 0:
            self._reset_released(self.encoder.expire(self.config.id_ttl_ms))

    def users(self) -> Iterable[str]:
        """The users holding a row of the user table."""
        return self.encoder.tables["user"].ids()

    def forget_user(self, user_id: str) -> None:
        """Erase ``user_id``: its embedding row and Adagrad sums, history, statistics and
        scoring snapshots (what the shared layers learned from it stays, spread over all)."""
        self._reset_released(self.encoder.forget_user(user_id))

    def _reset_released(self, released: dict[str, np.ndarray]) -> None:
        """Give released rows a fresh init and fresh Adagrad sums."""
        for table, rows in released.items():
            if len(rows):
                self.net.reset_rows(table, torch.from_numpy(rows), self.generator)

    def state_dict(self) -> dict[str, Any]:
        """Everything, as tensors, numbers, strings, lists and dicts."""
        return {
            "name": self.name,
            "config": self.config.to_dict(),
            "model_version": self.model_version,
            "net": dict(self.net.state_dict()),
            "optimizer": self.optimiser.state_dict(),
            "encoder": self.encoder.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly (rebuilding first if the saved config differs)."""
        config = MultiTaskConfig.from_dict(state["config"])
        if config != self.config:
            self._build(config)
        self.net.load_state_dict(state["net"])
        self._optimiser, self._optimiser_state = None, state["optimizer"]  # loaded when made
        self.encoder.load_state_dict(state["encoder"])
        self.generator.set_state(state["generator"])
        self.model_version = int(state["model_version"])

    # -- cold start and metrics ---------------------------------------------------

    def item_interactions(self, item_id: str) -> int:
        """Clicks, carts and purchases learned for ``item_id`` (0 if unknown)."""
        table = self.encoder.tables["item"]
        return int(table.interactions[table.row(item_id)])

    def is_cold(self, item_id: str, threshold: int | None = None) -> bool:
        """Fewer than ``threshold`` (``cold_threshold``) interactions: content still dominates."""
        limit = self.config.cold_threshold if threshold is None else threshold
        return self.item_interactions(item_id) < limit

    def cold_item_count(self, threshold: int | None = None) -> int:
        """Items holding a row that are still cold."""
        limit = self.config.cold_threshold if threshold is None else threshold
        table = self.encoder.tables["item"]
        return int((table.interactions[table.rows_in_use()] < limit).sum())

    def table_stats(self) -> dict[str, int]:
        """Rows in use per ID table."""
        return self.encoder.table_stats()

    def health(self) -> LearnerHealth:
        """Rows in use per ID table and the cold items among them."""
        return LearnerHealth(self.table_stats(), self.cold_item_count())


class SingleTaskLearner(Learner):
    """One net per task, no sharing: each learns only its own entire-space label.

    Predictions are made funnel-consistent with a cumulative minimum across
    the tasks.
    """

    def __init__(self, config: MultiTaskConfig, name: str = "single_task") -> None:
        self.name = name
        self.learners = [
            MultiTaskLearner(
                replace(
                    config,
                    name=f"{name}.{task}",
                    task_weighting="fixed",
                    task_weights=tuple(float(t == task) for t in TASKS),
                )
            )
            for task in TASKS
        ]

    @property
    def model_version(self) -> int:
        """Updates applied (the click net's count)."""
        return self.learners[0].model_version

    def remember(self, samples: Sequence[Sample]) -> list[FeatureBatch]:
        """Each net keeps what the samples are scored with."""
        return [learner.remember(samples) for learner in self.learners]

    def predict(
        self, samples: Sequence[Sample], remembered: list[FeatureBatch] | None = None
    ) -> np.ndarray:
        """Column ``t`` from net ``t``, then a cumulative minimum along the funnel."""
        batches = [None] * len(self.learners) if remembered is None else remembered
        return _funnel_of_tasks(
            [
                learner.predict(samples, batch)
                for learner, batch in zip(self.learners, batches, strict=True)
            ]
        )

    def predict_block(self, block: CandidateBlock) -> np.ndarray:
        """:meth:`predict` of the block's samples, each net scoring the block as a block."""
        return _funnel_of_tasks([learner.predict_block(block) for learner in self.learners])

    def learn(self, samples: Sequence[Sample]) -> None:
        """Every net learns the batch (each masked to its own task)."""
        for learner in self.learners:
            learner.learn(samples)

    def users(self) -> Iterable[str]:
        """The users any of the nets holds."""
        return set().union(*(learner.users() for learner in self.learners))

    def forget_user(self, user_id: str) -> None:
        """Every net erases the user."""
        for learner in self.learners:
            learner.forget_user(user_id)

    def is_cold(self, item_id: str) -> bool:
        """Cold to the click net (the nets see the same items)."""
        return self.learners[0].is_cold(item_id)

    def health(self) -> LearnerHealth:
        """The click net's tables (the nets see the same ids)."""
        return self.learners[0].health()

    def state_dict(self) -> dict[str, Any]:
        """The three nets' states."""
        return {"name": self.name, "tasks": [learner.state_dict() for learner in self.learners]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the three nets."""
        for learner, task_state in zip(self.learners, state["tasks"], strict=True):
            learner.load_state_dict(task_state)


def _funnel_of_tasks(predictions: list[np.ndarray]) -> np.ndarray:
    """Column ``t`` of ``predictions[t]``, made funnel-consistent by a cumulative minimum."""
    columns = [p[:, t] for t, p in enumerate(predictions)]
    return np.minimum.accumulate(np.stack(columns, axis=1), axis=1)


def mtl(config: MultiTaskConfig | None = None) -> MultiTaskLearner:
    """The main learner, named "mtl"."""
    return MultiTaskLearner(replace(config or MultiTaskConfig(), name="mtl"))


def single_task(config: MultiTaskConfig | None = None) -> SingleTaskLearner:
    """Baseline: the same net, one per task, no sharing; named "single_task"."""
    return SingleTaskLearner(config or MultiTaskConfig(), name="single_task")


def id_only(config: MultiTaskConfig | None = None) -> MultiTaskLearner:
    """Baseline: the net without content towers (IDs only); named "id_only"."""
    return MultiTaskLearner(replace(config or MultiTaskConfig(), name="id_only", use_content=False))
