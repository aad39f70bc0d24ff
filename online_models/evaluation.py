"""Prequential (test-then-train) evaluation: scores made before learning, labels as they resolve.

Every sample is scored once, when it appears (``Resolution.new``), before any
of its labels is learned; its labels arrive later, possibly one task at a
time. :class:`SampleLog` records, per sample key, where in the stream it
appeared, whether its item was *cold*, and each label with where it
resolved. A model's predictions live in a ``(keys, 3)`` score table
indexed by key, so many models can be evaluated against one log.

:func:`prequential_metrics` gives per-task AUC (exact, rank-based) and log
loss over the samples that appeared from a given stream position on (the
bench uses the second half of the stream), and the same AUC split into cold
and warm items. A sample's item is *cold* when it had fewer than
:data:`COLD_INTERACTIONS` interactions (click, cart or purchase events)
before the sample appeared (:class:`InteractionCounter`). Every sample with a
known label counts, so the caller makes labels final before evaluating (the
quality bench reads on until the windows close, or closes them at the end of
a log): evaluating while windows are open would count the early positives of
a sample and not its late negatives. :func:`rolling_auc` gives AUC over a
sliding window of labels, for plots.

Example
-------
>>> import numpy as np
>>> from online_models.labels import TrackedSample
>>> log = SampleLog()
>>> new = [TrackedSample("u1", f"i{k}", ts=0, key=k) for k in range(4)]
>>> log.created(new, position=0, cold=[True, True, False, False])
>>> log.labelled([TrackedSample("u1", f"i{k}", ts=0, key=k, click=float(k % 2),
...                             cart=0.0, purchase=0.0) for k in range(4)], position=1)
>>> scores = np.array([[0.1, 0.0, 0.0], [0.8, 0.1, 0.0], [0.3, 0.0, 0.0], [0.2, 0.1, 0.0]])
>>> report = prequential_metrics(scores, log, from_position=0)
>>> report["tasks"]["click"]["auc"], report["cold_items"]["click"]["auc"]
(0.75, 1.0)
>>> auc([0.2, 0.2, 0.9], [0, 1, 1])
0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from online_models.base import TASKS
from online_models.labels import TrackedSample
from producers.contract import Event

COLD_INTERACTIONS = 20
"""An item with fewer interactions than this before a sample is cold for that sample."""

_EPS = 1e-7


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    """Exact ROC AUC from ranks (ties share their average rank); NaN without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64) > 0.5
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    # average ranks over runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def paired_auc_difference(
    scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray
) -> tuple[float, float]:
    """``AUC(a) - AUC(b)`` on the same samples, and its standard error (DeLong).

    DeLong, DeLong, Clarke-Pearson, "Comparing the areas under two or more
    correlated receiver operating characteristic curves", Biometrics 44
    (1988); computed with midranks as in Sun and Xu, IEEE Signal Processing
    Letters 21 (2014). NaN without both classes.

    >>> y = np.array([0, 0, 1, 1, 0, 1])
    >>> diff, se = paired_auc_difference(np.array([.1, .2, .8, .9, .3, .7]),
    ...                                  np.array([.1, .6, .5, .9, .3, .2]), y)
    >>> round(diff, 4), se > 0
    (0.3333, True)
    """
    y = np.asarray(labels, dtype=np.float64) > 0.5
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    components = [_placements(scores, y) for scores in (scores_a, scores_b)]
    aucs = [v01.mean() for v01, _ in components]
    s01 = np.cov(np.stack([c[0] for c in components]))
    s10 = np.cov(np.stack([c[1] for c in components]))
    covariance = s01 / m + s10 / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    return float(aucs[0] - aucs[1]), float(np.sqrt(max(variance, 0.0)))


def auc_standard_error(
    scores: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray
) -> float:
    """The DeLong standard error of one AUC (unpaired: its own samples).

    ``sqrt(var(V10) / m + var(V01) / n)`` over the m positives' and n
    negatives' placements, as in :func:`paired_auc_difference` (whose
    variance for a model against a constant score is this one's square).
    Two AUCs on different samples differ with standard error
    ``sqrt(se_a**2 + se_b**2)``. NaN with fewer than two of either class.

    >>> round(auc_standard_error([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 4)
    0.3536
    """
    y = np.asarray(labels, dtype=np.float64) > 0.5
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return float("nan")
    v01, v10 = _placements(scores, y)
    return float(np.sqrt(np.var(v01, ddof=1) / m + np.var(v10, ddof=1) / n))


def _placements(
    scores: Sequence[float] | np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per positive, the share of negatives ranked below it;
    per negative, the share of positives ranked above it (ties count half)."""
    s = np.asarray(scores, dtype=np.float64)
    m, n = int(positive.sum()), int((~positive).sum())
    whole = _midranks(s)
    among_positives, among_negatives = _midranks(s[positive]), _midranks(s[~positive])
    v01 = (whole[positive] - among_positives) / n
    v10 = 1.0 - (whole[~positive] - among_negatives) / m
    return v01, v10


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def log_loss(scores: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    """Mean binary cross-entropy, predictions clipped to ``[1e-7, 1 - 1e-7]``."""
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1.0 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def label_losses(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample log loss of ``scores`` (probabilities) against 0/1 ``labels``."""
    p = np.clip(scores, _EPS, 1.0 - _EPS)
    return -(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p))


class InteractionCounter:
    """Click, cart and purchase events per item, to tell cold items from warm ones.

    >>> counter = InteractionCounter()
    >>> counter.observe(Event("e1", 0, "click", "u1", "i9"))
    >>> counter.observe(Event("e2", 0, "impression", "u1", "i9"))
    >>> counter.count("i9"), counter.is_cold("i9")
    (1, True)
    """

    def __init__(self, cold_below: int = COLD_INTERACTIONS) -> None:
        self.cold_below = cold_below
        self._counts: dict[str, int] = {}

    def observe(self, event: Event) -> None:
        """Count the event if it is an interaction."""
        if event.type != "impression":
            self._counts[event.item_id] = self._counts.get(event.item_id, 0) + 1

    def count(self, item_id: str) -> int:
        """Interactions of the item so far."""
        return self._counts.get(item_id, 0)

    def is_cold(self, item_id: str) -> bool:
        """True while the item has fewer than ``cold_below`` interactions."""
        return self._counts.get(item_id, 0) < self.cold_below


class SampleLog:
    """Per sample key: stream position, cold flag, whether its item was seen before, and each
    label as it resolves."""

    def __init__(self) -> None:
        self._size = 0
        self.position = np.zeros(0, dtype=np.int64)
        self.cold = np.zeros(0, dtype=bool)
        self.seen = np.zeros(0, dtype=bool)
        self.labels = np.zeros((0, 3))
        self.label_position = np.zeros((0, 3), dtype=np.int64)

    def __len__(self) -> int:
        return self._size

    def created(
        self, samples: Sequence[TrackedSample], position: int, cold: Sequence[bool]
    ) -> None:
        """Samples that appeared at stream ``position``, with their items' cold flags."""
        if not samples:
            return
        keys = np.fromiter((s.key for s in samples), np.int64, len(samples))
        self._grow(int(keys.max()) + 1)
        self.position[keys] = position
        self.cold[keys] = cold

    def seen_before(self, samples: Sequence[TrackedSample], seen: Sequence[bool]) -> None:
        """Whether each sample's item had appeared in the stream before the sample's batch."""
        if samples:
            keys = np.fromiter((s.key for s in samples), np.int64, len(samples))
            self._grow(int(keys.max()) + 1)
            self.seen[keys] = seen

    def labelled(self, samples: Sequence[TrackedSample], position: int) -> None:
        """Record every label the samples carry as resolved at ``position`` (a label may come
        before its sample's creation is logged: a cart in the batch of its click, without
        impressions, whose positive is made when the batch closes)."""
        if samples:
            self._grow(max(s.key for s in samples) + 1)
        for s in samples:
            for task, value in enumerate(s.labels()):
                if value is not None:
                    self.labels[s.key, task] = value
                    self.label_position[s.key, task] = position

    def _grow(self, size: int) -> None:
        if size <= self._size:
            return
        if size > len(self.position):
            capacity = max(size, 2 * len(self.position), 1024)
            self.position = _resized(self.position, capacity, 0)
            self.cold = _resized(self.cold, capacity, False)
            self.seen = _resized(self.seen, capacity, False)
            self.labels = _resized(self.labels, capacity, np.nan)
            self.label_position = _resized(self.label_position, capacity, -1)
        self._size = size


def leak_auc(log: SampleLog, from_position: int) -> float:
    """How well "the item is new to the stream" alone tells clicks from non-clicks.

    Over the samples from ``from_position`` on with a click label: the AUC of
    the single feature "the item had not appeared before the sample's batch",
    folded so that 0.5 is no information and 1.0 a perfect tell either way.
    A sampler whose negatives are older items than its positives shows here
    (:mod:`online_models.labels`).

    >>> log = SampleLog()
    >>> from online_models.labels import TrackedSample
    >>> made = [TrackedSample("u", f"i{k}", 0, key=k, click=float(k < 2)) for k in range(4)]
    >>> log.created(made, 0, [False] * 4)
    >>> log.seen_before(made, [False, False, True, True])  # the clicked items are the new ones
    >>> log.labelled(made, 0)
    >>> leak_auc(log, 0)
    1.0
    """
    n = len(log)
    clicks = log.labels[:n, 0]
    mask = (log.position[:n] >= from_position) & ~np.isnan(clicks)
    value = auc((~log.seen[:n][mask]).astype(np.float64), clicks[mask])
    return max(value, 1.0 - value) if value == value else float("nan")


def label_rows(samples: Sequence[TrackedSample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (keys, tasks, labels) the samples carry, one row per known label, in order."""
    keys, tasks, values = [], [], []
    for s in samples:
        for task, value in enumerate(s.labels()):
            if value is not None:
                keys.append(s.key)
                tasks.append(task)
                values.append(value)
    return np.array(keys, np.int64), np.array(tasks, np.int64), np.array(values, np.float64)


def _resized(array: np.ndarray, capacity: int, fill: Any) -> np.ndarray:
    out = np.full((capacity, *array.shape[1:]), fill, dtype=array.dtype)
    out[: len(array)] = array
    return out


def paired_comparison(
    scores_a: np.ndarray, scores_b: np.ndarray, log: SampleLog, from_position: int
) -> dict[str, dict[str, float]]:
    """Per task: ``AUC(a) - AUC(b)`` over the same samples as :func:`prequential_metrics`.

    With its DeLong standard error (:func:`paired_auc_difference`): a
    difference within about two standard errors is not a difference.
    """
    n = len(log)
    recent = log.position[:n] >= from_position
    out = {}
    for task, name in enumerate(TASKS):
        mask = recent & ~np.isnan(log.labels[:n, task])
        y = log.labels[:n][mask, task]
        diff, se = paired_auc_difference(scores_a[:n][mask, task], scores_b[:n][mask, task], y)
        out[name] = {"auc_difference": diff, "standard_error": se}
    return out


def prequential_metrics(scores: np.ndarray, log: SampleLog, from_position: int) -> dict[str, Any]:
    """Per-task AUC and log loss, and AUC on cold and warm items, of one score table.

    Parameters
    ----------
    scores
        ``(keys, 3)`` predictions made when each sample appeared.
    log
        The labels and sample facts.
    from_position
        Only samples that appeared at this stream position or later count.
    """
    n = len(log)
    recent = log.position[:n] >= from_position
    out: dict[str, Any] = {"tasks": {}, "cold_items": {}, "warm_items": {}}
    for task, name in enumerate(TASKS):
        mask = recent & ~np.isnan(log.labels[:n, task])
        s, y, cold = scores[:n][mask, task], log.labels[:n][mask, task], log.cold[:n][mask]
        out["tasks"][name] = {
            "auc": auc(s, y),
            "logloss": log_loss(s, y),
            "samples": len(y),
            "positives": int(y.sum()),
        }
        for group, members in (("cold_items", cold), ("warm_items", ~cold)):
            out[group][name] = {
                "auc": auc(s[members], y[members]),
                "samples": int(members.sum()),
                "positives": int(y[members].sum()),
            }
    return out


def rolling_auc(
    scores: np.ndarray, log: SampleLog, task: int, window: int, points: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """AUC over the last ``window`` labelled samples, at up to ``points`` stream positions.

    Samples are taken in the order they appeared; returns (positions, AUCs).
    """
    n = len(log)
    known = ~np.isnan(log.labels[:n, task])
    order = np.flatnonzero(known)
    order = order[np.argsort(log.position[:n][order], kind="stable")]
    if len(order) < window:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    ends = np.unique(np.linspace(window, len(order), points).astype(np.int64))
    s, y = scores[order, task], log.labels[order, task]
    values = np.array([auc(s[end - window : end], y[end - window : end]) for end in ends])
    return log.position[order[ends - 1]], values
