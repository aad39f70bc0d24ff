"""The learner alone: prequential samples per second on a toy stream, no pipeline, no Kafka.

Example
-------
>>> report = benchmark(samples=2_000, batch_size=500)
>>> sorted(report)
['batch_size', 'samples', 'samples_per_second', 'seconds']
"""

from __future__ import annotations

import time

from online_models.base import score_then_learn
from online_models.learner import MultiTaskLearner, mtl
from online_models.synthetic import ToyShop


def benchmark(
    learner: MultiTaskLearner | None = None,
    samples: int = 50_000,
    batch_size: int = 512,
    seed: int = 0,
) -> dict[str, float]:
    """Prequential throughput: predict each micro-batch, then learn it.

    Times everything the learner does, feature extraction included, on a
    :class:`~online_models.synthetic.ToyShop` stream generated beforehand.

    """
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
