"""Drift: concept drift on per-task loss streams, data drift as PSI, calibration per task.

Concept drift (:class:`ConceptDriftMonitor`)
    Each resolved label gives a log loss for its task (of the prediction made
    when the sample appeared). Per-sample losses are heavy-tailed and rare
    tasks are mostly zeros, so they are summarised in blocks first: a block
    closes once it holds ``loss_block`` labels *and* ``block_positives``
    positives (rare tasks get long blocks). Each block gives its normalised
    entropy (:func:`normalised_entropy`: mean log loss over the entropy of
    the block's label rate), which, unlike the raw log loss, does not rise
    just because the click rate does (the simulated shop's does, from 3.7%
    to 7% over a stream without drift). After ``warmup_blocks`` (a fresh
    model's losses are no baseline) and ``scale_blocks`` more to learn the
    noise scale (from successive differences, so slow trends do not inflate
    it), each block's change from the previous block is divided by the
    scale and added to a running level, which two River detectors per task
    watch (a change in the noise scale rescales later steps, it never moves
    the level by itself):

    - :class:`river.drift.PageHinkley` in ``"up"`` mode (Page 1954), with
      tolerance and threshold in units of the noise scale;
    - :class:`river.drift.ADWIN` (Bifet & Gavaldà 2007), counted only when
      the latest blocks are clearly *above* the earlier ones (ADWIN itself
      reacts to changes either way).

    Only increases are drift: a loss falling while a model learns is not.

    The pooled loss barely moves when *what* is liked changes while *how
    much* is liked does not (the simulator's taste shift turns the trends
    between categories and keeps the click rate): the model still ranks
    items within a category well. So, when the labelled items' categories
    are given, each task also charts its calibration per group of items, at
    two levels: the category path's top level (``"home"`` of
    ``"home.kitchen"``) and the whole path, each hashed into a fixed number
    of bins (:func:`category_bins`). Blocks of ``group_block`` labels with
    ``group_block_positives`` positives give, per bin, observed positives
    ``O``, predicted ones ``E`` and their variance ``V = sum p(1 - p)``;
    ``E`` and ``V`` are scaled so that the block's predicted total matches
    the observed one (the pooled rate is the loss detectors' business). The
    residuals feed a multivariate EWMA chart (Lowry et al. 1992; see
    :class:`_GroupCalibration`) whose statistic, a chi-square over its
    expectation, is about 1 while the model is calibrated in every group; a
    level fires (``"top_category_calibration"``, ``"category_calibration"``)
    when it exceeds ``group_threshold`` after ``group_warmup_blocks``.

    After a detection every detector and chart is re-armed and further
    detections are held back for ``cooldown_events`` stream events, so one
    change is reported once, not once per task and detector. Detections are
    listed as ``{"event": stream index, "task": ..., "detector": ...}``.

    Tuning (the defaults): the ``mtl`` label streams of the quality bench
    (simulator, 200,000 events, seeds 3, 5, 7, 11, 13 and 17, with and
    without impressions, with and without the taste shift at event 120,000:
    24 streams) were saved once and replayed through the monitor. Loss
    detectors alone (``block_positives=50, scale_blocks=30, ph_delta=1.0``)
    at ``ph_threshold=6`` raised a false alarm on cart (seed 17 without
    impressions, event 73,730, with and without drift); at 7 they raise
    none and find 11 of the 12 shifts, but miss seed 11 with impressions
    (its log loss hardly moves; rolling AUC dips by ~0.02) and find seed 17
    with impressions only 4,274 events late. With the group charts
    (``group_block=500, group_block_positives=50, group_lambda=0.7,
    group_floor=5, group_warmup_blocks=60, group_threshold=6``) every shift
    was found within 3,313 events (with impressions: seeds 3/5/7/11/13/17 at
    +1,020/+3,313/+2,092/+3,180/+1,163/+2,025; without: +504/+252/+235/+256/
    +507/+535) and none of the 12 runs without drift raised any detection.
    Margins: after warm-up and before any drift the largest chart value was
    4.3 (click; cart 4.2, purchase 3.7), while within 5,000 events of the
    shift the click charts reached at least 8.7 (seed 5 with impressions;
    up to 108). What did not work as well: a CUSUM of per-block chi-squares
    over top-level categories (shift found only +3,170 to +4,255 with
    impressions, noise peaks above some shifts' signal); the same without
    scaling to the block's total (noise about twice as large: bursts of
    clicks move every group together); one level only (the top level makes
    seed 17 with impressions marginal, the whole path seed 7: charting both
    raised the worst signal-to-noise ratio from ~1.05 to ~1.45); blocks of
    25 positives (cart and purchase charts up to 5.0 without drift, and
    cart alarms 24,000-58,000 events after a shift). ADWIN alone found the
    shift 440 events after it without impressions but 8,046 with them; it
    stays as a second opinion (it never fired falsely).

Data drift (:class:`FeatureDriftMonitor`)
    Population stability index ``sum((c - r) * ln(c / r))`` of the
    distributions of category, brand, price bucket and event type in the
    current window of ``window_events`` events against a reference window.
    The reference is the first full window; after :meth:`FeatureDriftMonitor.rebase`
    (called on a concept drift) the next full window becomes the reference.
    Category and brand values are hashed into ``bins`` bins so memory stays
    fixed whatever the vocabulary.

Calibration per task (mean prediction against the observed label rate) is
:class:`~online_models.live_quality.LiveQuality`'s, over its rolling window.

State goes to and from plain dicts. River's ADWIN keeps its window in Rust
and cannot be exported, so the state keeps each detector's inputs since its
last reset (block means, at most ``max_replay`` of them) and a restored
monitor replays them into fresh detectors.

Example
-------
>>> import numpy as np
>>> monitor = ConceptDriftMonitor(DriftConfig(warmup_blocks=0))
>>> rng = np.random.default_rng(0)
>>> for position in range(0, 60_000, 250):
...     truth = rng.uniform(0.02, 0.4, 250)
...     labels = (rng.random(250) < truth).astype(float)
...     sharp = position < 40_000                        # then the model loses the plot
...     predictions = truth if sharp else rng.permutation(truth)
...     found = monitor.update("click", predictions, labels, position)
>>> [(d["task"], d["detector"], 40_000 <= d["event"] < 41_000) for d in monitor.detections]
[('click', 'page_hinkley', True)]
>>> psi(np.array([50, 50]), np.array([50, 50]))
0.0
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any

import numpy as np
from river.drift import ADWIN, PageHinkley

from online_models.base import TASKS
from online_models.content import price_buckets
from online_models.evaluation import label_losses
from producers.contract import EVENT_TYPES, Event

GROUP_LEVELS: tuple[str, ...] = ("top_category", "category")
"""Item groupings whose calibration is charted: a category path's top level, the whole path."""
DETECTORS: tuple[str, ...] = (
    "adwin",
    "page_hinkley",
    *(f"{level}_calibration" for level in GROUP_LEVELS),
)
"""Names of the concept-drift detectors, as reported in detections."""


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """Detector settings; the defaults are the tuned ones.

    Attributes
    ----------
    loss_block, block_positives
        A block closes once it has at least ``loss_block`` labels and
        ``block_positives`` positive ones (rare tasks get longer blocks, so
        every block mean is an average over enough rare events to be
        roughly normal).
    warmup_blocks
        Blocks per task that are not watched at all: a fresh model's losses
        fall fast and are no baseline.
    scale_blocks
        Blocks after the warm-up used only to learn the noise scale before
        the detectors start.
    adwin_delta, adwin_min_window, adwin_min_rise
        ADWIN's confidence and shortest sub-window (in blocks); a change it
        finds counts as drift when the last ``adwin_min_window`` blocks are
        ``adwin_min_rise`` noise units above the blocks before them.
    ph_delta, ph_threshold, ph_min_blocks
        Page-Hinkley's tolerated drift per block and alarm threshold, both in
        units of the block-mean noise (see :class:`ConceptDriftMonitor`), and
        blocks before it may fire.
    group_block, group_block_positives, group_bins, group_floor
        Group calibration (see :class:`ConceptDriftMonitor`): a block closes
        once it has ``group_block`` labels and ``group_block_positives``
        positive ones; top-level categories and whole category paths are
        hashed into ``group_bins`` bins (one count per level); a bin's
        variance is floored at ``group_floor`` (about that many expected
        positives), so a nearly empty bin cannot dominate.
    group_lambda, group_warmup_blocks, group_threshold
        The weight of past blocks in the EWMA of residuals, blocks per task
        not watched (a fresh model is miscalibrated everywhere), and the
        alarm threshold of the charted statistic (about 1 while the model
        stays calibrated in every group).
    cooldown_events
        Stream events after a detection during which no other is reported.
    max_replay
        Detector inputs kept per task for restoring state.
    """

    loss_block: int = 500
    block_positives: int = 50
    warmup_blocks: int = 20
    scale_blocks: int = 30
    adwin_delta: float = 0.002
    adwin_min_window: int = 5
    adwin_min_rise: float = 1.0
    ph_delta: float = 1.0
    ph_threshold: float = 7.0
    ph_min_blocks: int = 5
    group_block: int = 500
    group_block_positives: int = 50
    group_bins: tuple[int, int] = (32, 128)
    group_floor: float = 5.0
    group_lambda: float = 0.7
    group_warmup_blocks: int = 60
    group_threshold: float = 6.0
    cooldown_events: int = 20_000
    max_replay: int = 10_000


class _TaskDetectors:
    """ADWIN and Page-Hinkley over one task's standardised block-mean losses."""

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self.block_sum = 0.0
        self.block_count = 0
        self.block_positives = 0
        self.blocks_seen = 0
        self.previous = float("nan")
        self.squared_steps = 0.0
        self.steps = 0
        self.level = 0.0
        self.inputs: deque[float] = deque(maxlen=config.max_replay)
        self._reset_detectors()

    def _reset_detectors(self) -> None:
        c = self.config
        self.adwin = ADWIN(
            delta=c.adwin_delta,
            clock=1,
            min_window_length=c.adwin_min_window,
            grace_period=c.adwin_min_window * 2,
        )
        self.page_hinkley = PageHinkley(
            min_instances=c.ph_min_blocks, delta=c.ph_delta, threshold=c.ph_threshold, mode="up"
        )
        self.inputs.clear()

    def rearm(self) -> None:
        """Start both detectors afresh (after a detection anywhere)."""
        self._reset_detectors()

    def add(self, losses: np.ndarray, positive: np.ndarray) -> list[str]:
        """Feed losses (and which labels were positive); detectors that fired on closed blocks."""
        c = self.config
        end = block_end(
            self.block_count, self.block_positives, positive, c.loss_block, c.block_positives
        )
        if end is None:
            self.block_sum += float(losses.sum())
            self.block_count += len(losses)
            self.block_positives += int(positive.sum())
            return []
        count = self.block_count + end
        mean_loss = (self.block_sum + float(losses[:end].sum())) / count
        positives = self.block_positives + int(positive[:end].sum())
        fired = self._block(normalised_entropy(mean_loss, positives / count))
        self.block_sum, self.block_count, self.block_positives = 0.0, 0, 0
        return fired + self.add(losses[end:], positive[end:])

    def _block(self, value: float) -> list[str]:
        """Add a block's change, in units of the noise scale learnt so far, to the level watched."""
        self.blocks_seen += 1
        if self.blocks_seen <= self.config.warmup_blocks:
            return []
        step = value - self.previous
        self.previous = value
        if np.isnan(step):
            return []
        self.squared_steps += step**2
        self.steps += 1
        if self.steps < self.config.scale_blocks or self.squared_steps == 0.0:
            return []
        self.level += step / (self.squared_steps / (2.0 * self.steps)) ** 0.5
        self.inputs.append(self.level)
        return self._watch(self.level)

    def _watch(self, score: float) -> list[str]:
        self.adwin.update(score)
        self.page_hinkley.update(score)
        fired = []
        if self.adwin.drift_detected and self._recent_rise() >= self.config.adwin_min_rise:
            fired.append("adwin")
        if self.page_hinkley.drift_detected:
            fired.append("page_hinkley")
        return fired

    def _recent_rise(self) -> float:
        """Mean of the last ``adwin_min_window`` scores minus the mean of those before."""
        recent = self.config.adwin_min_window
        scores = np.array(self.inputs)
        if len(scores) <= recent:
            return 0.0
        return float(scores[-recent:].mean() - scores[:-recent].mean())

    def state_dict(self) -> dict[str, Any]:
        return {
            "block_sum": self.block_sum,
            "block_count": self.block_count,
            "block_positives": self.block_positives,
            "blocks_seen": self.blocks_seen,
            "previous": self.previous,
            "squared_steps": self.squared_steps,
            "steps": self.steps,
            "level": self.level,
            "inputs": list(self.inputs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset_detectors()
        for value in state["inputs"]:
            self.inputs.append(float(value))
            self._watch(float(value))
        self.block_sum = float(state["block_sum"])
        self.block_count = int(state["block_count"])
        self.block_positives = int(state["block_positives"])
        self.blocks_seen = int(state["blocks_seen"])
        self.previous = float(state["previous"])
        self.squared_steps = float(state["squared_steps"])
        self.steps = int(state["steps"])
        self.level = float(state["level"])


class _GroupCalibration:
    """MEWMA chart of one task's calibration residuals per group of items.

    A block sums, per group bin, the observed positives ``O``, the predicted
    ones ``E`` and their binomial variance ``V = sum p(1 - p)``. ``E`` and
    ``V`` are first scaled so that the block's predicted total matches its
    observed one: a change in *how much* is clicked is left to the loss
    detectors; this one sees *where* the clicks go. The residuals ``O - E``
    enter an exponentially weighted sum per bin, ``R = lam * R + (O - E)``,
    with its variance ``W = lam**2 * W + V`` (a multivariate EWMA chart,
    Lowry et al. 1992). The charted statistic is
    ``sum(R**2 / max(W, floor)) / sum(W / max(W, floor))``: about 1 while the
    model is calibrated in every group, large when tastes move between
    groups even if the pooled rate, and so the pooled loss, hardly moves.
    """

    def __init__(self, config: DriftConfig, bins: int) -> None:
        self.config = config
        self.bins = bins
        self.observed = np.zeros(bins)
        self.expected = np.zeros(bins)
        self.variance = np.zeros(bins)
        self.labels = 0
        self.positives = 0
        self.blocks_seen = 0
        self.residual = np.zeros(bins)
        self.residual_variance = np.zeros(bins)
        self.statistic = float("nan")

    def rearm(self) -> None:
        """Forget the residuals gathered so far (after a detection anywhere)."""
        self.residual[:] = 0.0
        self.residual_variance[:] = 0.0

    def add(self, predictions: np.ndarray, labels: np.ndarray, bins: np.ndarray) -> bool:
        """Feed labelled predictions and their group bins; True if the chart crossed the line."""
        c = self.config
        closes = block_end(
            self.labels, self.positives, labels > 0.5, c.group_block, c.group_block_positives
        )
        end = len(labels) if closes is None else closes
        p, y, b = predictions[:end], labels[:end], bins[:end]
        self.observed += np.bincount(b, y, self.bins)
        self.expected += np.bincount(b, p, self.bins)
        self.variance += np.bincount(b, p * (1.0 - p), self.bins)
        self.labels += end
        self.positives += int((y > 0.5).sum())
        if closes is None:
            return False
        fired = self._block()
        rest = end < len(labels) and self.add(predictions[end:], labels[end:], bins[end:])
        return fired or rest

    def _block(self) -> bool:
        c = self.config
        scale = self.observed.sum() / max(self.expected.sum(), 1e-12)
        decay = c.group_lambda
        self.residual = decay * self.residual + self.observed - scale * self.expected
        self.residual_variance = decay**2 * self.residual_variance + scale * self.variance
        floored = np.maximum(self.residual_variance, c.group_floor)
        expected = float(np.sum(self.residual_variance / floored))  # 0 if every p was 0 or 1
        self.statistic = float(np.sum(self.residual**2 / floored)) / expected if expected else 0.0
        self.observed[:], self.expected[:], self.variance[:] = 0.0, 0.0, 0.0
        self.labels, self.positives = 0, 0
        self.blocks_seen += 1
        if self.blocks_seen <= c.group_warmup_blocks or self.statistic <= c.group_threshold:
            return False
        self.rearm()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "observed": self.observed.tolist(),
            "expected": self.expected.tolist(),
            "variance": self.variance.tolist(),
            "labels": self.labels,
            "positives": self.positives,
            "blocks_seen": self.blocks_seen,
            "residual": self.residual.tolist(),
            "residual_variance": self.residual_variance.tolist(),
            "statistic": self.statistic,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("observed", "expected", "variance", "residual", "residual_variance"):
            setattr(self, name, np.array(state[name], dtype=np.float64))
        self.labels = int(state["labels"])
        self.positives = int(state["positives"])
        self.blocks_seen = int(state["blocks_seen"])
        self.statistic = float(state["statistic"])


def block_end(
    count: int, positives: int, positive: np.ndarray, size: int, wanted: int
) -> int | None:
    """How many of the new labels close a block that already holds ``count`` (``positives``).

    A block closes at the first label that brings it to ``size`` labels and
    ``wanted`` positives; ``None`` if the new labels do not close it.

    >>> block_end(3, 1, np.array([False, True, False, True]), size=4, wanted=2)
    2
    >>> block_end(0, 0, np.array([True, True]), size=4, wanted=1) is None
    True
    """
    if count + len(positive) < size:  # the usual batch: too few labels to close it
        return None
    counts = count + np.arange(1, len(positive) + 1)
    closing = np.flatnonzero((counts >= size) & (positives + np.cumsum(positive) >= wanted))
    return int(closing[0]) + 1 if len(closing) else None


def category_bins(categories: Sequence[str | None], bins: int, level: str) -> np.ndarray:
    """Hashed bin of each category at ``level`` (one of :data:`GROUP_LEVELS`); -1 if unknown.

    >>> top = category_bins(["home.kitchen", "home.garden", None], 32, "top_category")
    >>> bool(top[0] == top[1]), int(top[2])
    (True, -1)
    """
    return np.fromiter(map(_category_bin, categories, repeat(bins), repeat(level)), np.int64)


@lru_cache(maxsize=1 << 16)
def _category_bin(category: str | None, bins: int, level: str) -> int:
    """One category's bin (see :func:`category_bins`), worked out once per category."""
    if category is None:
        return -1
    return _bin(category.split(".", 1)[0] if level == "top_category" else category, bins)


MAX_DETECTIONS = 1_000
"""Detections a monitor remembers (the newest): a worker's state stays bounded."""


class ConceptDriftMonitor:
    """Per-task drift detection (loss and per-group calibration) and rolling calibration.

    Parameters
    ----------
    config
        Detector settings.

    Example
    -------
    Tastes move between departments while the pooled click rate stays:

    >>> monitor = ConceptDriftMonitor()
    >>> rng = np.random.default_rng(0)
    >>> believed = {"home": 0.05, "toys": 0.10, "books": 0.15}  # what the model learnt
    >>> liked = believed
    >>> for position in range(0, 80_000, 500):
    ...     if position == 60_000:
    ...         liked = {"home": 0.10, "toys": 0.15, "books": 0.05}
    ...     departments = rng.choice(list(liked), 500)
    ...     appeal = rng.lognormal(-0.7, 1.2, 500)  # items differ within a department
    ...     truth = np.minimum([liked[d] for d in departments] * appeal, 1)
    ...     predictions = np.minimum([believed[d] for d in departments] * appeal, 1)
    ...     labels = (rng.random(500) < truth).astype(float)
    ...     paths = [f"{d}.all" for d in departments]
    ...     found = monitor.update("click", predictions, labels, position, paths)
    >>> [(d["detector"], 60_000 <= d["event"] < 61_000) for d in monitor.detections]
    [('top_category_calibration', True), ('category_calibration', True)]
    """

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._tasks = {task: _TaskDetectors(self.config) for task in TASKS}
        self._groups = {
            task: {
                level: _GroupCalibration(self.config, bins)
                for level, bins in zip(GROUP_LEVELS, self.config.group_bins, strict=True)
            }
            for task in TASKS
        }
        self.detections: list[dict[str, Any]] = []  # the newest MAX_DETECTIONS
        self._quiet_until = -1

    def update(
        self,
        task: str,
        predictions: np.ndarray,
        labels: np.ndarray,
        position: int,
        categories: Sequence[str | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Feed one task's resolved labels (with the predictions made before learning them).

        ``categories`` are the labelled items' categories (dotted paths, or
        ``None``), for the group calibration charts; without them only the
        loss detectors run. Returns the detections this update raised (also
        appended to :attr:`detections`).
        """
        predictions = np.asarray(predictions, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        fired = self._tasks[task].add(label_losses(predictions, labels), labels > 0.5)
        for level, chart in self._groups[task].items() if categories is not None else ():
            bins = category_bins(categories, chart.bins, level)
            known = bins >= 0
            if chart.add(predictions[known], labels[known], bins[known]):
                fired.append(f"{level}_calibration")
        if not fired or position < self._quiet_until:
            return []
        names = dict.fromkeys(fired)  # a detector firing on two blocks of one update counts once
        raised = [{"event": int(position), "task": task, "detector": name} for name in names]
        self.detections.extend(raised)
        del self.detections[:-MAX_DETECTIONS]
        self._quiet_until = position + self.config.cooldown_events
        for detectors in self._tasks.values():
            detectors.rearm()
        for charts in self._groups.values():
            for chart in charts.values():
                chart.rearm()
        return raised

    def state_dict(self) -> dict[str, Any]:
        """Detector inputs and detections as plain values."""
        return {
            "tasks": {task: d.state_dict() for task, d in self._tasks.items()},
            "groups": {
                task: {level: chart.state_dict() for level, chart in charts.items()}
                for task, charts in self._groups.items()
            },
            "detections": [dict(d) for d in self.detections],
            "quiet_until": self._quiet_until,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (detectors rebuilt by replaying their inputs)."""
        for task, detectors in self._tasks.items():
            detectors.load_state_dict(state["tasks"][task])
            for level, chart in self._groups[task].items():
                chart.load_state_dict(state["groups"][task][level])
        self.detections = [dict(d) for d in state["detections"]][-MAX_DETECTIONS:]
        self._quiet_until = int(state["quiet_until"])


def normalised_entropy(mean_loss: float, positive_rate: float) -> float:
    """Log loss over the entropy of the observed label rate (He et al. 2014, "NE").

    1.0 is no better than always predicting the observed rate; lower is
    better. Unlike the raw log loss it does not rise just because the label
    rate does.

    >>> round(normalised_entropy(0.5 * math.log(2), 0.5), 3)
    0.5
    """
    p = min(max(positive_rate, 1e-12), 1.0 - 1e-12)
    return mean_loss / -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def psi(reference: np.ndarray, current: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index of two count vectors over the same bins.

    Shares are floored at ``floor`` so an empty bin does not make it infinite.
    """
    r = np.maximum(reference / max(reference.sum(), 1), floor)
    c = np.maximum(current / max(current.sum(), 1), floor)
    return float(np.sum((c - r) * np.log(c / r)))


FEATURES: tuple[str, ...] = ("category", "brand", "price_bucket", "event_type")


class FeatureDriftMonitor:
    """PSI of category, brand, price bucket and event-type mix, window against reference.

    Parameters
    ----------
    window_events
        Events per window.
    bins
        Hash bins for category and brand.
    history_windows
        Closed windows whose PSI is kept in :attr:`history` (the oldest go
        first): a running worker's state stays bounded.

    Example
    -------
    >>> monitor = FeatureDriftMonitor(window_events=2, history_windows=1)
    >>> kinds = ["click", "click", "click", "cart", "cart", "cart", "click", "cart"]
    >>> monitor.observe([Event(f"e{n}", 0, kind, "u", "i") for n, kind in enumerate(kinds)])
    >>> round(monitor.latest["event_type"], 2), len(monitor.history)
    (4.6, 1)
    """

    def __init__(
        self, window_events: int = 5_000, bins: int = 32, history_windows: int = 500
    ) -> None:
        self.window_events = window_events
        self.bins = bins
        self.history_windows = history_windows
        sizes = {"category": bins, "brand": bins, "price_bucket": 64, "event_type": 4}
        self._sizes = sizes
        self._reference: dict[str, np.ndarray] | None = None
        self._current = {f: np.zeros(n, dtype=np.int64) for f, n in sizes.items()}
        self._in_window = 0
        self.latest: dict[str, float] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=history_windows)

    def observe(self, events: Sequence[Event]) -> None:
        """Count events in order; each time a window fills, compute PSI against the reference."""
        take = min(len(events), self.window_events - self._in_window)
        self._add(events[:take])
        self._in_window += take
        if self._in_window == self.window_events:
            self._close_window()
        if take < len(events):
            self.observe(events[take:])

    def rebase(self) -> None:
        """Make the next full window the reference (after a detected drift)."""
        self._reference = None

    def _add(self, events: Sequence[Event]) -> None:
        if not events:
            return
        items = [e.item for e in events]
        columns = {
            "category": [_bin(i.category if i else None, self.bins) for i in items],
            "brand": [_bin(i.brand if i else None, self.bins) for i in items],
            "price_bucket": price_buckets([i.price if i else None for i in items]),
            "event_type": [EVENT_TYPES.index(e.type) for e in events],
        }
        for feature, values in columns.items():
            self._current[feature] += np.bincount(values, minlength=self._sizes[feature])

    def _close_window(self) -> None:
        if self._reference is None:
            self._reference = self._current
        else:
            self.latest = {f: psi(self._reference[f], self._current[f]) for f in FEATURES}
            self.history.append(dict(self.latest))
        self._current = {f: np.zeros(n, dtype=np.int64) for f, n in self._sizes.items()}
        self._in_window = 0

    def state_dict(self) -> dict[str, Any]:
        """Reference and current counts, as plain lists."""
        return {
            "reference": None
            if self._reference is None
            else {f: v.tolist() for f, v in self._reference.items()},
            "current": {f: v.tolist() for f, v in self._current.items()},
            "in_window": self._in_window,
            "latest": dict(self.latest),
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        reference = state["reference"]
        self._reference = (
            None if reference is None else {f: np.array(v, np.int64) for f, v in reference.items()}
        )
        self._current = {f: np.array(v, np.int64) for f, v in state["current"].items()}
        self._in_window = int(state["in_window"])
        self.latest = dict(state["latest"])
        self.history = deque((dict(h) for h in state["history"]), maxlen=self.history_windows)


@lru_cache(maxsize=1 << 16)
def _bin(value: str | None, bins: int) -> int:
    """Hashed bin of a category or brand (0 for none), worked out once per value."""
    return 0 if value is None else zlib.crc32(value.encode()) % bins
