"""Prequential quality of a running learner: rolling AUC, log loss, label rate per task.

A sample is scored when it appears; its labels arrive later (delayed
feedback). :class:`LiveQuality` keeps each open sample's prediction by its
key, pairs it with each label as that label resolves, and keeps the last
``window`` (prediction, label) pairs per task. Metrics are computed exactly
over that window on demand, and every pair also goes to the concept-drift
monitor. Memory is bounded by ``max_open`` open samples.

Example
-------
>>> import numpy as np
>>> from online_models.labels import TrackedSample
>>> quality = LiveQuality(window=100)
>>> shown = [TrackedSample("u", f"i{k}", 0, key=k) for k in range(4)]
>>> quality.scored(shown, np.array([[0.9, 0.2, 0.1], [0.1, 0.01, 0.0], [0.8, 0.1, 0.0],
...                                 [0.2, 0.0, 0.0]]))
>>> clicks = [TrackedSample("u", f"i{k}", 0, key=k, click=float(k % 2 == 0), cart=0.0,
...                         purchase=0.0) for k in range(4)]
>>> _ = quality.labelled(clicks, position=4)
>>> quality.summary()["click"]["auc"]
1.0
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np

from online_models.base import TASKS
from online_models.drift import ConceptDriftMonitor
from online_models.evaluation import auc, log_loss
from online_models.labels import TrackedSample
from online_models.layout import label_matrix


class LiveQuality:
    """Rolling prequential metrics per task, fed by scored samples and resolved labels."""

    def __init__(
        self,
        window: int = 20_000,
        max_open: int = 500_000,
        drift: ConceptDriftMonitor | None = None,
    ) -> None:
        self.window = window
        self.max_open = max_open
        self.drift = drift or ConceptDriftMonitor()
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pairs = {task: deque(maxlen=window) for task in TASKS}

    def scored(self, samples: Sequence[TrackedSample], predictions: np.ndarray) -> None:
        """Remember the predictions made for new samples, before any of their labels."""
        rows = np.asarray(predictions, dtype=np.float64)
        self._open.update(zip([sample.key for sample in samples], rows, strict=True))
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)

    def labelled(self, samples: Sequence[TrackedSample], position: int) -> list[dict[str, Any]]:
        """Pair resolved labels with their predictions; return drift detections raised."""
        rows = list(map(self._open.get, [sample.key for sample in samples]))
        found = [sample for sample, row in zip(samples, rows, strict=True) if row is not None]
        if not found:
            return []
        predictions = np.stack([row for row in rows if row is not None])
        labels = label_matrix(found).astype(np.float64)
        for sample in found:
            if sample.purchase is not None:  # the last stage: this sample is complete
                self._open.pop(sample.key, None)
        raised: list[dict[str, Any]] = []
        for task, name in enumerate(TASKS):
            known = np.flatnonzero(~np.isnan(labels[:, task]))
            if len(known):
                scores, outcomes = predictions[known, task], labels[known, task]
                self._pairs[name].extend(zip(scores.tolist(), outcomes.tolist(), strict=True))
                categories = [found[i].category for i in known.tolist()]
                raised += self.drift.update(name, scores, outcomes, position, categories)
        return raised

    def summary(self) -> dict[str, dict[str, float]]:
        """Per task over the window: auc, logloss, label_rate, mean_prediction, labels."""
        out = {}
        for task, pairs in self._pairs.items():
            values = np.array(pairs, dtype=np.float64).reshape(-1, 2)
            scores, labels = values[:, 0], values[:, 1]
            out[task] = {
                "auc": auc(scores, labels),
                "logloss": log_loss(scores, labels) if len(labels) else float("nan"),
                "label_rate": float(labels.mean()) if len(labels) else float("nan"),
                "mean_prediction": float(scores.mean()) if len(scores) else float("nan"),
                "labels": len(labels),
            }
        return out

    def state_dict(self) -> dict[str, Any]:
        """Open predictions, the windows and the drift monitor, as plain values."""
        return {
            "open_keys": list(self._open.keys()),
            "open_predictions": _stacked(self._open.values(), len(self._open), 3),
            "pairs": {task: _stacked(p, len(p), 2) for task, p in self._pairs.items()},
            "drift": self.drift.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self._open = OrderedDict(
            zip(state["open_keys"], np.asarray(state["open_predictions"]), strict=True)
        )
        for task, pairs in state["pairs"].items():
            self._pairs[task].clear()
            self._pairs[task].extend(map(tuple, np.asarray(pairs).tolist()))
        self.drift.load_state_dict(state["drift"])


def _stacked(rows: Iterable[Iterable[float]], count: int, width: int) -> np.ndarray:
    """``(count, width)`` float64 from ``count`` rows (faster than ``np.array`` on a deque)."""
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=count * width)
    return flat.reshape(count, width)
