"""The online multi-task learner and its two ablation baselines.

:class:`MultiTaskLearner` ("mtl") speaks the :class:`~online_models.base.Learner`
protocol: it scores a batch (:meth:`~MultiTaskLearner.predict`), learns a
micro-batch in one optimiser step per at most ``max_batch_size`` samples
(:meth:`~MultiTaskLearner.learn`), and saves and restores its whole state as
plain tensors, numbers, strings, lists and dicts. Embedding tables learn
with Adagrad on the rows a batch touches only
(:class:`~online_models.net.EmbeddingTable`); the dense layers use Adam.

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

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from online_models.base import (
    TASKS,
    CandidateBlock,
    Learner,
    LearnerHealth,
    Sample,
    score_then_learn,
)
from online_models.features import FeatureBatch, FeatureEncoder, TableCapacities, label_matrix
from online_models.net import MultiTaskNet, funnel_probabilities
from online_models.towers import ARCHITECTURES

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class MultiTaskConfig:
    """Everything that defines a :class:`MultiTaskLearner`.

    Attributes
    ----------
    name
        The learner's name in reports and metrics.
    architecture
        ``"shared_bottom"``, ``"mmoe"`` or ``"ple"``. Shared-bottom is the
        default: on the simulated shop (200k events, seeds 7 and 11, with and
        without impressions) it was as good as MMoE and better than PLE, and
        the fastest of the three.
    embedding_dim, content_dim
        Width of user/item vectors; width of content embeddings (category
        tokens, brand, price bucket, device).
    hidden, experts, tower_hidden
        Width of the shared bottom or of each expert; experts (MMoE) or shared
        experts (PLE); width of each task tower.
    user_rows, item_rows, token_rows, brand_rows, device_rows
        Capacity of each ID table (row 0 reserved).
    history_length
        Interacted items remembered per user.
    stats_half_life
        Learned samples over which the label statistics behind the rate
        features and base rates halve.
    use_content, use_ids
        Content towers (category, brand, price) and ID embeddings on or off.
    item_gate_k, user_gate_k
        ``k`` of the gate ``n / (n + k)`` blending an ID embedding in.
    task_weighting, task_weights
        ``"fixed"`` weights, or ``"uncertainty"`` (Kendall et al. 2018) on top
        of the fixed ones; ``task_weights`` in TASKS order.
    sparse_lr, dense_lr, init_std
        Learning rates of the embedding tables (Adagrad) and of the dense
        layers (Adam); std of the normal init of content embeddings.
    max_batch_size
        Larger ``learn`` calls are split into steps of at most this many.
    id_ttl_ms, expiry_every
        IDs not seen for ``id_ttl_ms`` of event time expire (checked every
        ``expiry_every`` updates); ``None`` keeps them until evicted.
    cold_threshold
        Items with fewer interactions are "cold".
    seed, num_threads
        Seed of initialisation; torch intra-op threads.
    """

    name: str = "mtl"
    architecture: str = "shared_bottom"
    embedding_dim: int = 32
    content_dim: int = 16
    hidden: int = 64
    experts: int = 4
    tower_hidden: int = 32
    user_rows: int = 1 << 18
    item_rows: int = 1 << 18
    token_rows: int = 1 << 15
    brand_rows: int = 1 << 15
    device_rows: int = 1 << 8
    history_length: int = 16
    stats_half_life: float = 100_000.0
    use_content: bool = True
    use_ids: bool = True
    item_gate_k: float = 20.0
    user_gate_k: float = 20.0
    task_weighting: str = "fixed"
    task_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sparse_lr: float = 0.05
    dense_lr: float = 0.006
    init_std: float = 0.1
    max_batch_size: int = 2048
    id_ttl_ms: int | None = 30 * DAY_MS
    expiry_every: int = 256
    cold_threshold: int = 20
    seed: int = 0
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}")
        if self.task_weighting not in ("fixed", "uncertainty"):
            raise ValueError("task_weighting must be 'fixed' or 'uncertainty'")
        if not (self.use_content or self.use_ids):
            raise ValueError("a net needs content, IDs or both")
        if len(self.task_weights) != len(TASKS):
            raise ValueError(f"task_weights needs one weight per task {TASKS}")

    @property
    def capacities(self) -> TableCapacities:
        """The table capacities as one value."""
        return TableCapacities(
            self.user_rows, self.item_rows, self.token_rows, self.brand_rows, self.device_rows
        )

    def with_capacity(self, rows: int) -> MultiTaskConfig:
        """The same config with every table capped at ``rows`` (small tests).

        Steps are capped at half the rows: one step's ids must fit in a table.
        """
        return replace(
            self,
            user_rows=rows,
            item_rows=rows,
            token_rows=rows,
            brand_rows=rows,
            device_rows=rows,
            max_batch_size=min(self.max_batch_size, rows // 2),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples)."""
        values = asdict(self)
        for name in _TUPLE_FIELDS:
            values[name] = None if values[name] is None else list(values[name])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MultiTaskConfig:
        """Inverse of :meth:`to_dict`; also reads the configs of older checkpoints.

        Options since removed are accepted at the one value that is still how
        the learner works (:data:`REMOVED_OPTIONS`); any other value, or an
        unknown key, is a ValueError rather than a silently different model.
        """
        values = dict(values)
        for name in MOVED_OPTIONS:
            values.pop(name, None)
        for name, kept in REMOVED_OPTIONS.items():
            value = values.pop(name, kept)
            if value != kept:
                raise ValueError(
                    f"this config has {name}={value!r}, an option since removed "
                    f"(the learner now always works as with {name}={kept!r})"
                )
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown MultiTaskConfig options {sorted(unknown)}")
        tuples = {
            name: None if values[name] is None else tuple(values[name]) for name in _TUPLE_FIELDS
        }
        return cls(**{**values, **tuples})


_TUPLE_FIELDS = ("task_weights",)
MOVED_OPTIONS = ("provisional_negative_ms",)
"""Options older configs may hold that are now set elsewhere, dropped when read.

``provisional_negative_ms`` (the waits before a missing label is learned as
0) is the label stage's now, for every model alike
(:attr:`~online_models.labels.LabelConfig.provisional_waits_ms`); a restored
pipeline takes the old learner's waiting samples over (see
:meth:`~online_models.label_stage.LabelStage.load_state_dict`).
"""
REMOVED_OPTIONS: dict[str, Any] = {"rate_features": True, "conditional_loss_weight": 0.0}
"""Options older configs may hold, each with the only value the learner still supports.

``rate_features=False`` dropped the funnel-rate features from the net's input
(the encoder computed them all the same); ``conditional_loss_weight > 0`` added
each conversion step's loss on the samples that reached it. Neither was ever
set; on the simulated shop the rates are worth 0.0025-0.0037 click AUC and the
conditional loss made no consistent difference.
"""


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
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=config.dense_lr, fused=True)

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

    def learn(self, samples: Sequence[Sample]) -> None:
        """One optimiser step per chunk of at most ``max_batch_size`` samples."""
        labels = label_matrix(samples)
        size = self.config.max_batch_size
        for start in range(0, len(samples), size):
            self._learn_batch(samples[start : start + size], labels[start : start + size])

    def _learn_batch(self, samples: Sequence[Sample], label_rows: np.ndarray) -> None:
        labels = torch.from_numpy(label_rows)
        if torch.isnan(labels).all():
            return
        weights = torch.tensor([s.weight for s in samples], dtype=torch.float32)
        batch = self.encoder.encode(samples, learning=True, labels=label_rows)
        self._reset_released(batch.released)
        total, _ = self.net.loss(self.net(batch), labels, weights)
        self.optimiser.zero_grad(set_to_none=True)
        total.backward()
        for table in self.net.tables:
            table.step()
        self.optimiser.step()
        self.encoder.record(batch, label_rows)
        self.model_version += 1
        if self.config.id_ttl_ms is not None and self.model_version % self.config.expiry_every == 0:
            self._reset_released(self.encoder.expire(self.config.id_ttl_ms))

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
        self.optimiser.load_state_dict(state["optimizer"])
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


def benchmark(
    learner: MultiTaskLearner | None = None,
    samples: int = 50_000,
    batch_size: int = 512,
    seed: int = 0,
) -> dict[str, float]:
    """Prequential throughput: predict each micro-batch, then learn it.

    Times everything the learner does, feature extraction included, on a
    :class:`~online_models.synthetic.ToyShop` stream generated beforehand.

    >>> report = benchmark(samples=2_000, batch_size=500)
    >>> sorted(report)
    ['batch_size', 'samples', 'samples_per_second', 'seconds']
    """
    from online_models.synthetic import ToyShop

    learner = learner or mtl()
    stream, _ = ToyShop(seed=seed).stream(samples)
    started = time.perf_counter()
    for first in range(0, len(stream), batch_size):
        batch = stream[first : first + batch_size]
        score_then_learn(learner, batch, batch)
    seconds = time.perf_counter() - started
    return {
        "samples": float(samples),
        "batch_size": float(batch_size),
        "seconds": seconds,
        "samples_per_second": samples / seconds,
    }
