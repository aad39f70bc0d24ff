"""What defines a multi-task learner: :class:`MultiTaskConfig`, and how older configs read.

Its own module, so that the net (:mod:`online_models.net`) and the learner
(:mod:`online_models.learner`) both build from it without importing each other.

Example
-------
>>> config = MultiTaskConfig(architecture="mmoe").with_capacity(256)
>>> config.item_rows, MultiTaskConfig.from_dict(config.to_dict()) == config
(256, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from online_models.base import TASKS
from online_models.layout import TableCapacities
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
        Smaller steps learn a small log faster and a large one noisier: at
        256 rather than 2,048, the bundled REES46 sample's click AUC went
        from 0.815 to 0.847 (its lists' click hit rate 0.197 to 0.280), and
        the simulator's seed 11 purchase AUC from 0.920 to 0.898 (bench
        quality's micro-batches of 2,048 samples; the worker's own batches,
        about 200 events at 2,000 events/s, are stepped whole either way).
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
