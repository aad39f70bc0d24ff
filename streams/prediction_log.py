"""A worker's prequential predictions on disk, for pooling quality over several workers.

Each worker's live AUC covers only its own partitions and its own window;
``recstream bench scale`` needs one AUC over every worker's predictions.
With ``--predictions-log PATH`` (``RECSTREAM_PREDICTIONS_LOG``) the worker
appends one fixed-size record per (sample, task) label as the live quality
monitor scores it (:class:`~online_models.live_quality.LiveQuality`'s sink):
the sample's event time (ms), the task, the label and the prediction made
before anything of the sample was learned.

The file is :data:`MAGIC` and then packed little-endian records of
:data:`RECORD` (17 bytes: ``ts`` int64, ``task`` uint8 index into
:data:`~online_models.base.TASKS`, ``label`` and ``prediction`` float32),
written through a 1 MB buffer: one ``write`` per labelled batch, no
formatting. The buffer is flushed when the log is closed, at the latest
when the process exits normally (SIGTERM included); a SIGKILLed worker
loses its last buffer, and a torn last record is ignored by :func:`read`.
A restarted worker appends: labels applied again after a restore appear
twice.

Example
-------
>>> import tempfile
>>> import numpy as np
>>> path = Path(tempfile.mkdtemp()) / "predictions.bin"
>>> log = PredictionLog(path)
>>> log(np.array([5, 7]), np.array([[0.9, 0.2, 0.1], [0.3, 0.1, 0.0]]),
...     np.array([[1.0, np.nan, np.nan], [0.0, 0.0, 0.0]]))
>>> log.close()
>>> rows = read(path)
>>> [(int(r["ts"]), TASKS[r["task"]], float(r["label"])) for r in rows]
[(5, 'click', 1.0), (7, 'click', 0.0), (7, 'cart', 0.0), (7, 'purchase', 0.0)]
>>> of_task(rows, "cart")["ts"].tolist()
[7]
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from online_models.base import TASKS

if TYPE_CHECKING:
    from online_models.live_quality import LiveQuality

MAGIC = b"RSPRED1\n"
"""The first bytes of a predictions log (format version 1)."""
RECORD = np.dtype([("ts", "<i8"), ("task", "u1"), ("label", "<f4"), ("prediction", "<f4")])
"""One (sample, task) label: event time in ms, task index, label, prediction (packed)."""
BUFFER_BYTES = 1 << 20


class PredictionLog:
    """Appends labelled predictions to ``path``; a :data:`~online_models.live_quality.LabelSink`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "ab", buffering=BUFFER_BYTES)  # noqa: SIM115 - closed in close()
        if self._file.tell() == 0:
            self._file.write(MAGIC)
        atexit.register(self.close)

    @classmethod
    def attach(cls, quality: LiveQuality, path: Path | None) -> PredictionLog | None:
        """A log at ``path`` as ``quality``'s sink (nothing without a path)."""
        if path is None:
            return None
        log = cls(path)
        quality.sink = log
        return log

    def __call__(self, ts: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> None:
        rows, tasks = np.nonzero(~np.isnan(labels))
        out = np.empty(len(rows), dtype=RECORD)
        out["ts"] = ts[rows]
        out["task"] = tasks
        out["label"] = labels[rows, tasks]
        out["prediction"] = predictions[rows, tasks]
        self._file.write(out.tobytes())

    def close(self) -> None:
        """Flush and close (safe to call twice)."""
        if not self._file.closed:
            self._file.close()


def read(path: Path) -> np.ndarray:
    """The records of a predictions log as a structured array of :data:`RECORD`.

    A torn last record (a worker killed in mid-write) is left out; a file
    that is not a predictions log is a ValueError.
    """
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a recstream predictions log")
    body = memoryview(data)[len(MAGIC) :]
    whole = len(body) - len(body) % RECORD.itemsize
    return np.frombuffer(body[:whole], dtype=RECORD)


def of_task(rows: np.ndarray, task: str) -> np.ndarray:
    """The records of one task (``click``, ``cart`` or ``purchase``)."""
    return rows[rows["task"] == TASKS.index(task)]
