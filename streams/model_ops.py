"""The models on disk: every checkpoint's model version, offsets and rolling AUC; rollback targets.

What a rollback takes from a checkpoint is its *model*, the learner's state:
the net's weights, its optimiser, and the feature state the weights were
trained with (ID tables, histories, label statistics), because an embedding
row means nothing without the table that says whose it is. Everything that
says where the stream is stays as it is now: offsets, pending labels,
deduplication, live quality, candidates, catalog, dead letters, erasures.
So after a rollback the worker reads on from where it was, applies no event
twice and loses none; the events between the chosen checkpoint and now are
missing from the model's memory only (its weights and the users' histories).

A rollback target must still be on disk: the worker keeps its newest
``--keep-checkpoints`` (default 3) checkpoints.

Example
-------
>>> import tempfile
>>> from streams.checkpoint import CheckpointStore
>>> store = CheckpointStore(tempfile.mkdtemp(), owner="events")
>>> _ = store.save({"pipeline": {"learner": {"model_version": 7}}}, offsets={0: 10})
>>> [(m.model_version, m.offsets) for m in list_models(store)]
[(7, {0: 10})]
>>> find_model(store, 7).offsets, find_model(store, 8)
({0: 10}, None)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from streams.checkpoint import Checkpoint, CheckpointError, CheckpointStore


@dataclass(frozen=True)
class ModelCheckpoint:
    """One checkpoint as an operator chooses between them (``error``: why it was refused)."""

    name: str
    created_unix: float = math.nan
    model_version: int = -1
    offsets: dict[int, int] = field(default_factory=dict)
    auc: dict[str, float] = field(default_factory=dict)
    frozen: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As JSON values (NaN AUCs as null)."""
        return {
            "checkpoint": self.name,
            "created": _iso(self.created_unix),
            "model_version": self.model_version,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "auc": {task: None if math.isnan(v) else round(v, 4) for task, v in self.auc.items()},
            "frozen": self.frozen,
            "error": self.error,
        }


def model_version(checkpoint: Checkpoint) -> int:
    """The version of the model a checkpoint holds (-1 if it holds none)."""
    learner = checkpoint.state.get("pipeline", {}).get("learner", {})
    return int(learner.get("model_version", -1))


def find_model(store: CheckpointStore, version: int) -> Checkpoint | None:
    """The newest valid checkpoint holding model ``version``, or None."""
    for found in store.newest_first():
        if isinstance(found, Checkpoint) and model_version(found) == version:
            return found
    return None


def list_models(store: CheckpointStore) -> list[ModelCheckpoint]:
    """Every checkpoint of ``store``, newest first, with its model and quality."""
    return [
        ModelCheckpoint(name=str(found).split(":")[0], error=str(found))
        if isinstance(found, CheckpointError)
        else _described(found)
        for found in store.newest_first()
    ]


def _described(found: Checkpoint) -> ModelCheckpoint:
    pipeline = found.state.get("pipeline", {})
    return ModelCheckpoint(
        name=found.path.name,
        created_unix=found.created_unix,
        model_version=model_version(found),
        offsets=found.offsets,
        auc=_rolling_auc(pipeline.get("quality")),
        frozen=bool(pipeline.get("frozen", False)),
    )


def _rolling_auc(quality: dict[str, Any] | None) -> dict[str, float]:
    """Each task's rolling AUC as the worker showed it when the checkpoint was written."""
    if quality is None:
        return {}
    from online_models.live_quality import LiveQuality  # torch and river: only when needed

    live = LiveQuality()
    live.load_state_dict(quality)
    return {task: values["auc"] for task, values in live.summary().items()}


def table(models: list[ModelCheckpoint]) -> str:
    """The checkpoints as a text table, newest first.

    >>> auc = {"click": 0.7512, "cart": math.nan, "purchase": math.nan}
    >>> print(table([ModelCheckpoint("checkpoint-events-000000002.pt", 0.0, 12, {0: 5, 1: 7}, auc)]))
    version  created (UTC)         frozen  auc click/cart/purchase  offsets  checkpoint
    12       1970-01-01T00:00:00Z  no      0.751/-/-                0:5 1:7  checkpoint-events-000000002.pt
    """  # noqa: E501
    rows = [
        ("version", "created (UTC)", "frozen", "auc click/cart/purchase", "offsets", "checkpoint")
    ]
    for m in models:
        if m.error:
            rows.append(("-", "-", "-", "-", "-", f"refused: {m.error}"))
            continue
        aucs = "/".join("-" if math.isnan(v) else f"{v:.3f}" for v in m.auc.values())
        offsets = " ".join(f"{p}:{o}" for p, o in sorted(m.offsets.items()))
        rows.append(
            (
                str(m.model_version),
                _iso(m.created_unix),
                "yes" if m.frozen else "no",
                aucs or "-",
                offsets or "-",
                m.name,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def _iso(unix: float) -> str | None:
    if math.isnan(unix):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
