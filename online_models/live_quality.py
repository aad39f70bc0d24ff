"""Prequential quality of a running learner: rolling AUC, log loss, label rate per task.

A sample is scored when it appears; its labels arrive later (delayed
feedback), and not in the order the samples were scored: a click resolves
within a second, the negative of the impression next to it only when the
click window closes. A window ordered by *label arrival* therefore compares
positives scored by one model with negatives scored by a much older one; on
a fresh model that learns fast, that reads as an AUC far below 0.5
(measured on the demo's stream: click 0.10 and cart 0.17 after 6 s).

So :class:`LiveQuality` keeps the window in *scoring* order, as the quality
bench's evaluation does. It remembers each open sample's prediction by its
key (keys grow in scoring order), holds each resolved (prediction, label)
pair back, and releases a task's pairs into its window only up to the task's
**horizon**: the newest sample before which every scored sample has that
task's label. The window is the last ``window`` released pairs per task, so
its positives and negatives come from the same stretch of scoring, by the
same models. The price is a delay of about one label window (the click
window for clicks, click plus conversion window for cart and purchase).
Predictions of a model that has learned nothing yet (version 0) are not
kept: they measure its initial weights, not the learner.

A task's AUC and log loss are shown only once ``min_class_labels``
positives *and* negatives of it have been released; before that they are
NaN and :meth:`LiveQuality.warm_up` says how far the warm-up has come. The
concept-drift monitor reads the same released pairs, in the same order, once
the task is warm: a model's first minutes are no baseline. Memory is bounded
by ``max_open`` open samples.

A ``sink``, if given, is handed every prediction as it meets its labels, in
label-arrival order and before any horizon holds it back: the event times
``(n,)``, the predictions ``(n, 3)`` and the labels ``(n, 3)`` (NaN where a
task's label is not in this update) of the samples labelled now. Each
(sample, task) label reaches it once. That is what pooling the prequential
AUC of several workers needs (``streams.prediction_log`` writes it to a file).

Sampled pairs (streams without impressions) are measured on the task they
were sampled for: their click logit gets its ``logit_offset``, as when the
learner learned it. Their serving scores are ranking scores, whose log loss
and calibration per category moved with the mix of items drawn (the drift
monitor raised an alarm every 20,000 events or so on them).

Example
-------
>>> import numpy as np
>>> from online_models.labels import TrackedSample
>>> quality = LiveQuality(window=100, min_class_labels=2)
>>> shown = [TrackedSample("u", f"i{k}", 0, key=k) for k in range(4)]
>>> quality.scored(shown, np.array([[0.9, 0.2, 0.1], [0.1, 0.01, 0.0], [0.8, 0.1, 0.0],
...                                 [0.2, 0.0, 0.0]]), model_version=1)
>>> def labels(keys, click):
...     return [TrackedSample("u", f"i{k}", 0, key=k, click=click) for k in keys]
>>> _ = quality.labelled(labels([0, 2], click=1.0), position=4)  # the clicks come first
>>> quality.summary()["click"]["labels"]  # sample 0 is in; 2 waits for 1, still open
1
>>> _ = quality.labelled(labels([1, 3], click=0.0), position=5)
>>> quality.summary()["click"]["auc"], quality.summary()["click"]["labels"]
(1.0, 4)
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np

from online_models.base import TASKS
from online_models.drift import ConceptDriftMonitor
from online_models.evaluation import auc, log_loss
from online_models.labels import TrackedSample
from online_models.layout import label_matrix

MIN_CLASS_LABELS = 100
"""Positives and negatives a task's window needs before its AUC and log loss are shown: with
100 of each, the AUC's standard error is at most ~0.04 (Hanley & McNeil 1982)."""

LabelSink = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
"""Takes ``(ts, predictions, labels)`` of the samples labelled in one update (module docstring)."""


class LiveQuality:
    """Rolling prequential metrics per task in scoring order (see the module docstring)."""

    def __init__(
        self,
        window: int = 20_000,
        max_open: int = 500_000,
        drift: ConceptDriftMonitor | None = None,
        min_class_labels: int = MIN_CLASS_LABELS,
        sink: LabelSink | None = None,
    ) -> None:
        self.window = window
        self.sink = sink
        self.max_open = max_open
        self.drift = drift or ConceptDriftMonitor()
        self.min_class_labels = min_class_labels
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self._tasks = {task: _TaskWindow(window) for task in TASKS}

    def scored(
        self, samples: Sequence[TrackedSample], predictions: np.ndarray, model_version: int
    ) -> None:
        """Remember the predictions made for new samples, before any of their labels, by the
        model of ``model_version``; version 0 has learned nothing yet, and its guesses (its
        initial weights') are not the learner's quality: they are not kept."""
        if model_version == 0:
            return
        rows = _as_sampled(np.asarray(predictions, dtype=np.float64), samples)
        keys = [sample.key for sample in samples]
        self._open.update(zip(keys, rows, strict=True))
        for window in self._tasks.values():
            window.awaiting.extend(keys)
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)

    def labelled(self, samples: Sequence[TrackedSample], position: int) -> list[dict[str, Any]]:
        """Take resolved labels; release what the horizons allow; return drift detections raised."""
        rows = list(map(self._open.get, [sample.key for sample in samples]))
        found = [sample for sample, row in zip(samples, rows, strict=True) if row is not None]
        if found:
            predictions = np.stack([row for row in rows if row is not None])
            labels = label_matrix(found)
            if self.sink is not None:
                ts = np.fromiter((sample.ts for sample in found), np.int64, len(found))
                self.sink(ts, predictions, labels)
            for task, window in enumerate(self._tasks.values()):
                known = np.flatnonzero(~np.isnan(labels[:, task])).tolist()
                window.resolved.update(
                    (found[i].key, (predictions[i, task], labels[i, task], found[i].category))
                    for i in known
                )
        raised: list[dict[str, Any]] = []
        for name, window in self._tasks.items():
            released = window.release(self._open)
            if released and window.warm(self.min_class_labels):
                scores, outcomes, categories = zip(*released, strict=True)
                raised += self.drift.update(
                    name, np.array(scores), np.array(outcomes), position, list(categories)
                )
        for sample in found:
            if sample.purchase is not None:  # the last stage: this sample is complete
                self._open.pop(sample.key, None)
        return raised

    def forget(self, keys: Sequence[int]) -> None:
        """Samples whose labels will never come (an erased user's): the horizons pass them."""
        for key in keys:
            self._open.pop(key, None)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per task over the window: auc, logloss, label_rate, mean_prediction, labels (pairs),
        positives, and ``warm`` (AUC and log loss are NaN until it is True)."""
        out = {}
        for task, window in self._tasks.items():
            values = window.pairs.array()
            scores, labels = values[:, 0], values[:, 1]
            warm = window.warm(self.min_class_labels)
            out[task] = {
                "auc": auc(scores, labels) if warm else float("nan"),
                "logloss": log_loss(scores, labels) if warm else float("nan"),
                "label_rate": float(labels.mean()) if len(labels) else float("nan"),
                "mean_prediction": float(scores.mean()) if len(scores) else float("nan"),
                "labels": len(labels),
                "positives": int(np.count_nonzero(labels > 0.5)),
                "warm": warm,
            }
        return out

    def warm_up(self, task: str) -> tuple[int, int]:
        """``(n, N)``: ``n`` of the ``N`` labels a task needs before it is shown have come.

        >>> LiveQuality(min_class_labels=100).warm_up("cart")
        (0, 200)
        """
        counts, need = self._tasks[task].counts, self.min_class_labels
        return sum(min(count, need) for count in counts), 2 * need

    def state_dict(self) -> dict[str, Any]:
        """Open predictions, held-back pairs, the windows and the drift monitor, as plain values."""
        return {
            "open_keys": list(self._open.keys()),
            "open_predictions": _stacked(self._open.values(), len(self._open), 3),
            "pairs": {task: w.pairs.array() for task, w in self._tasks.items()},
            "waiting": {task: w.state_dict() for task, w in self._tasks.items()},
            "drift": self.drift.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (or one saved before the horizons: every open sample
        is then awaited by every task, so a horizon waits at most until it completes)."""
        self._open = OrderedDict(
            zip(state["open_keys"], np.asarray(state["open_predictions"]), strict=True)
        )
        for task, window in self._tasks.items():
            window.pairs.clear()
            window.pairs.extend(np.asarray(state["pairs"][task], dtype=np.float64).reshape(-1, 2))
            waiting = state.get("waiting", {}).get(task, {"awaiting": list(self._open)})
            window.load_state_dict(waiting)
        self.drift.load_state_dict(state["drift"])


class PairWindow:
    """The last ``size`` (score, label) pairs, oldest first, in one preallocated array.

    The worker summarises every window each second: converting a deque of
    20,000 tuples took 10 ms per task, reading this window a copy.

    >>> window = PairWindow(3)
    >>> window.extend(np.array([[0.1, 0.0], [0.2, 1.0]]))
    >>> window.extend(np.array([[0.3, 0.0], [0.4, 1.0]]))
    >>> window.array()[:, 0].tolist(), len(window)
    ([0.2, 0.3, 0.4], 3)
    """

    def __init__(self, size: int) -> None:
        self._rows = np.empty((size, 2))
        self._next = 0  # where the next row goes
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def extend(self, rows: np.ndarray) -> None:
        size = len(self._rows)
        rows = rows[-size:]
        at = (self._next + np.arange(len(rows))) % size
        self._rows[at] = rows
        self._next = (self._next + len(rows)) % size
        self._count = min(size, self._count + len(rows))

    def array(self) -> np.ndarray:
        """A copy of the pairs, oldest first, ``(len, 2)``."""
        start = (self._next - self._count) % len(self._rows)
        return np.roll(self._rows, -start, axis=0)[: self._count]

    def clear(self) -> None:
        self._next = self._count = 0


class _TaskWindow:
    """One task's scored keys awaiting a label, its held-back pairs and its released window."""

    def __init__(self, window: int) -> None:
        self.awaiting: deque[int] = deque()
        self.resolved: dict[int, tuple[float, float, str | None]] = {}
        self.pairs = PairWindow(window)
        self.counts = [0, 0]  # negatives and positives released so far

    def release(self, open_predictions: dict[int, np.ndarray]) -> list[tuple[float, float, Any]]:
        """Move the resolved pairs up to the horizon into the window, in scoring order, and
        return them (keys no longer open and never resolved, dropped from memory, are passed
        over)."""
        released = []
        awaiting, resolved = self.awaiting, self.resolved
        while awaiting:
            key = awaiting[0]
            pair = resolved.pop(key, None)
            if pair is not None:
                released.append(pair)
            elif key in open_predictions:
                break
            awaiting.popleft()
        positives = sum(label > 0.5 for _, label, _ in released)
        self.counts[0] += len(released) - positives
        self.counts[1] += positives
        self.pairs.extend(_stacked((pair[:2] for pair in released), len(released), 2))
        return released

    def warm(self, need: int) -> bool:
        """True once ``need`` positives and ``need`` negatives have been released."""
        return min(self.counts) >= need

    def state_dict(self) -> dict[str, Any]:
        keys = list(self.resolved)
        return {
            "counts": list(self.counts),
            "awaiting": list(self.awaiting),
            "resolved_keys": keys,
            "resolved_pairs": _stacked((v[:2] for v in self.resolved.values()), len(keys), 2),
            "resolved_categories": [v[2] for v in self.resolved.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        positives = int(np.count_nonzero(self.pairs.array()[:, 1] > 0.5))
        self.counts = list(state.get("counts", (len(self.pairs) - positives, positives)))
        self.awaiting = deque(state["awaiting"])
        pairs = np.asarray(state.get("resolved_pairs", np.empty((0, 2)))).tolist()
        categories = state.get("resolved_categories", [])
        self.resolved = {
            key: (score, label, category)
            for key, (score, label), category in zip(
                state.get("resolved_keys", []), pairs, categories, strict=True
            )
        }


def _as_sampled(rows: np.ndarray, samples: Sequence[TrackedSample]) -> np.ndarray:
    """Predictions of sampled pairs as the probabilities of the task they were sampled for.

    A sampled pair's click logit gets its ``logit_offset`` (the learner adds
    it while learning, :mod:`online_models.labels`); cart and purchase, the
    click times their conditional steps, move with it. Serving scores of a
    no-impression stream are ranking scores: without this, their log loss
    and calibration would drift with the mix of items drawn.

    >>> from online_models.labels import TrackedSample
    >>> drawn = [TrackedSample("u", "i", 0, logit_offset=-np.log(4.0))]
    >>> _as_sampled(np.array([[0.5, 0.25, 0.1]]), drawn).round(3).tolist()
    [[0.2, 0.1, 0.04]]
    """
    offsets = np.fromiter((s.logit_offset for s in samples), np.float64, len(samples))
    if not offsets.any():
        return rows
    click = np.clip(rows[:, 0], 1e-12, 1 - 1e-12)
    shifted = 1.0 / (1.0 + np.exp(-(np.log(click / (1 - click)) + offsets)))
    out = rows * (shifted / click)[:, None]
    out[:, 0] = shifted
    return out


def _stacked(rows: Iterable[Iterable[float]], count: int, width: int) -> np.ndarray:
    """``(count, width)`` float64 from ``count`` rows (faster than ``np.array`` on a deque)."""
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=count * width)
    return flat.reshape(count, width)
