"""Checkpoints: everything the worker knows, with the input offsets it covers, written atomically.

A checkpoint is one file holding a dict of plain values and tensors, saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``, so loading
never runs code from the file. It is written to a temporary file, flushed to
disk and renamed into place, so a crash leaves either the old or the new file,
never half of one. The newest few are kept; on start the newest *valid* one
wins, and every file refused on the way is reported with its reason.

:func:`save_in_child` writes a checkpoint from a forked child process, the way
Redis's BGSAVE does: the child sees a copy-on-write snapshot of the worker's
memory as it was at the fork, so the worker stops only for the fork itself
(milliseconds) instead of for copying its state (1.6 s for a full-size model,
measured), and goes on learning while the child writes.

Example
-------
>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp(), owner="events")
>>> path = store.save({"events_applied": 3}, offsets={0: 17, 1: 4})
>>> found, refused = store.load_latest()
>>> found.offsets, found.state["events_applied"], refused
({0: 17, 1: 4}, 3, [])
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streams.lifetime import die_with_parent
from streams.preload import settle as settle_preloads

_NDARRAY = "__ndarray__"
_ROWS = "__rows__"
_PLAIN = frozenset({str, int, float, bool, type(None)})
COMPACT_MIN_ELEMENTS = 1 << 16
"""Tensors this large are checked for all-zero rows before saving (:func:`compact_rows`)."""
FORMAT = "recstream-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be trusted: corrupt, foreign or of another version."""


@dataclass
class Checkpoint:
    """What a valid checkpoint holds: state, and the next offset to read per partition."""

    path: Path
    state: dict[str, Any]
    offsets: dict[int, int]
    created_unix: float


class CheckpointStore:
    """Numbered checkpoint files in ``directory``, for one input (``owner``: the events topic)."""

    def __init__(self, directory: str | Path, owner: str, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.owner = owner
        self.keep = keep

    def save(self, state: dict[str, Any], offsets: dict[int, int]) -> Path:
        """Write a new checkpoint atomically and prune old ones; return its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self._files()
        number = _number(existing[-1]) + 1 if existing else 1
        path = self.directory / f"checkpoint-{self.owner}-{number:09d}.pt"
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "owner": self.owner,
            "created_unix": time.time(),
            "offsets": {int(p): int(o) for p, o in offsets.items()},
            "state": to_loadable(state),
        }
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as out:
            torch.save(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        _fsync_directory(self.directory)
        for old in self._own_files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load(self, path: Path) -> Checkpoint:
        """Read one checkpoint, or raise :class:`CheckpointError` saying why it is refused."""
        payload = _read(path)
        if payload.get("owner") != self.owner:
            raise CheckpointError(
                f"{path.name}: written for input {payload.get('owner')!r}, not {self.owner!r}"
            )
        return _checkpoint(path, payload)

    def load_latest(self) -> tuple[Checkpoint | None, list[str]]:
        """The newest valid checkpoint (None if there is none) and why newer ones were refused."""
        refused: list[str] = []
        for found in self.newest_first():
            if isinstance(found, Checkpoint):
                return found, refused
            refused.append(str(found))
        return None, refused

    def newest_first(self) -> Iterator[Checkpoint | CheckpointError]:
        """Every checkpoint of this input, newest first: loaded, or the reason it is refused."""
        for path in reversed(self._files()):
            try:
                yield self.load(path)
            except CheckpointError as err:
                yield err

    def _files(self) -> list[Path]:
        """This input's checkpoints and any unnamed ones of older releases, oldest first."""
        if not self.directory.is_dir():
            return []
        legacy = [p for p in self.directory.glob("checkpoint-*.pt") if p.stem[11:].isdigit()]
        return sorted([*legacy, *self._own_files()], key=_number)

    def _own_files(self) -> list[Path]:
        """The files this store wrote (named after its input): the only ones it ever prunes."""
        if not self.directory.is_dir():
            return []
        prefix = f"checkpoint-{self.owner}-"
        mine = [
            path
            for path in self.directory.glob(f"{prefix}*.pt")
            if path.stem[len(prefix) :].isdigit()  # not another input whose name starts alike
        ]
        return sorted(mine, key=_number)


@dataclass
class ChildSave:
    """A checkpoint being written by a forked child (see :func:`save_in_child`)."""

    pid: int
    reader: int
    stopped: bool = False

    def stop(self) -> None:
        """Kill the child: a newer checkpoint supersedes this one. :meth:`wait` then raises.

        It may leave a ``.tmp`` file, which the next save of the same number overwrites.
        """
        self.stopped = True
        with contextlib.suppress(ProcessLookupError):  # reaped already
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout_s: float | None = None) -> Path:
        """Block until the child is done; the checkpoint's path, or :class:`CheckpointError`.

        A child still busy after ``timeout_s`` is stuck (a hung disk, a full
        one that blocks): it is killed, so checkpointing and shutdown go on.
        """
        with os.fdopen(self.reader, "rb") as pipe:
            ready, _, _ = select.select([pipe], [], [], timeout_s)
            if not ready:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise CheckpointError(
                    f"the checkpoint writer (pid {self.pid}) was stuck: killed after {timeout_s} s"
                )
            message = pipe.read().decode(errors="replace")
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not message.startswith("ok "):
            raise CheckpointError(
                f"the checkpoint writer (pid {self.pid}) exited with code "
                f"{code}: {message or 'no message'}"
            )
        return Path(message[3:])


def save_in_child(
    store: CheckpointStore, state: Callable[[], dict[str, Any]], offsets: dict[int, int]
) -> ChildSave:
    """Fork; the child saves ``state()``, built from its snapshot of memory, then exits.

    The child runs at low priority (:func:`_yield_to_the_worker`): at normal
    priority its save, competing for two cores with the worker, the broker
    and the shop, raised the demo's p99 latency to 600 ms in every 10 s
    window that held a checkpoint (about 100 ms in the others). It dies with the worker (a
    killed worker leaves at most a
    ``.tmp`` file, never a half checkpoint), closes every socket and file it
    inherited (a restarted worker must be able to bind its metrics port
    while an old writer still runs), ignores the worker's signal handlers,
    and never returns into the caller's code.

    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp(), owner="events")
    >>> save_in_child(store, lambda: {"applied": 5}, {0: 5}).wait().name
    'checkpoint-events-000000001.pt'
    """
    settle_preloads()  # no import lock held by another thread may pass into the child
    reader, writer = os.pipe()
    gc.freeze()  # the collector then touches no shared page in either process (CPython docs)
    parent = os.getpid()
    pid = os.fork()
    if pid:
        os.close(writer)
        return ChildSave(pid, reader)
    code = 1
    try:  # the child: from here on, only os._exit leaves
        gc.disable()  # a collection would walk (and copy) every object: the child is brief
        # before its priority drops (a starved child must not hold the worker's sockets)
        _close_inherited_descriptors(keep=writer)
        die_with_parent(signal.SIGKILL)
        if os.getppid() != parent:  # the worker died before the request took
            raise ChildProcessError("the worker died before its checkpoint writer started")
        _yield_to_the_worker()
        signal.set_wakeup_fd(-1)  # the worker's event loop must not hear the child's signals
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        path = store.save(state(), offsets)
        os.write(writer, f"ok {path}".encode())
        code = 0
    except BaseException as err:  # reported to the parent, whatever it is
        os.write(writer, f"{type(err).__name__}: {err}".encode()[:2000])
    finally:
        os._exit(code)


WRITER_NICE = 10
"""The checkpoint writer's nice value: about a tenth of a core beside a busy worker.

Not ``SCHED_IDLE``, which runs a process only on CPU time nobody else wants:
on a saturated machine (a worker catching up a backlog in a one-core
container, or the test suite's three fault runs on two cores) its writers
got no CPU for minutes, so a busy worker wrote no checkpoint and a crash
replayed everything since its last one. The priority cannot be raised again
once the writer is late (that needs ``CAP_SYS_NICE``), so it starts where
it is never starved."""


def _yield_to_the_worker() -> None:
    """Lower this process's priority: :data:`WRITER_NICE`, and never preempt on waking."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    os.nice(WRITER_NICE)


def _close_inherited_descriptors(keep: int) -> None:
    """Close every descriptor above stderr except ``keep``."""
    highest = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65_536
    os.closerange(3, keep)
    os.closerange(keep + 1, highest)


def to_loadable(value: Any) -> Any:
    """Replace numpy values with what ``weights_only`` loading accepts (tensors, lists, numbers).

    Large tensors whose rows are mostly zero (ID tables, their optimiser
    state and per-id statistics far below their capacity) are stored as
    their non-zero rows and the rows' indexes (:func:`compact_rows`).

    >>> to_loadable({"a": np.arange(3), "b": [np.float64(0.5)]})
    {'a': {'__ndarray__': tensor([0, 1, 2])}, 'b': [0.5]}
    >>> to_loadable(np.array(["x"]))
    {'__ndarray__': ['x'], 'dtype': '<U1'}
    """
    if isinstance(value, dict):
        return {key: to_loadable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        if all(type(item) in _PLAIN for item in value):
            return value  # most lists (ids, rows of numbers) need no walk, item by item
        return type(value)(to_loadable(item) for item in value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return {_NDARRAY: compact_rows(torch.from_numpy(np.ascontiguousarray(value)))}
        return {_NDARRAY: value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if torch.is_tensor(value):
        return compact_rows(value)
    return value


def from_loadable(value: Any) -> Any:
    """Undo :func:`to_loadable`: numpy arrays come back as numpy arrays."""
    if isinstance(value, dict):
        if _ROWS in value:
            return expand_rows(value)
        if _NDARRAY in value:
            stored = from_loadable(value[_NDARRAY])
            if torch.is_tensor(stored):
                return stored.numpy()
            return np.array(stored, dtype=value["dtype"])
        return {key: from_loadable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        if all(type(item) in _PLAIN for item in value):
            return value
        return type(value)(from_loadable(item) for item in value)
    return value


def compact_rows(tensor: torch.Tensor) -> Any:
    """A large tensor with mostly all-zero rows as ``{rows, values, shape}``; else itself.

    >>> table = torch.zeros(1 << 16, 4)
    >>> table[7] = 1.5
    >>> stored = compact_rows(table)
    >>> stored["__rows__"].tolist(), stored["values"].shape
    ([7], torch.Size([1, 4]))
    >>> torch.equal(expand_rows(stored), table)
    True
    """
    if tensor.dim() == 0 or tensor.numel() < COMPACT_MIN_ELEMENTS or tensor.layout != torch.strided:
        return tensor
    used = torch.nonzero(tensor.reshape(tensor.shape[0], -1).any(dim=1)).squeeze(1)
    if 2 * len(used) > tensor.shape[0]:
        return tensor
    return {_ROWS: used, "values": tensor[used], "shape": list(tensor.shape)}


def expand_rows(stored: dict[str, Any]) -> torch.Tensor:
    """Undo :func:`compact_rows`: zeros everywhere but the stored rows."""
    values = stored["values"]
    tensor = torch.zeros(stored["shape"], dtype=values.dtype)
    tensor[stored[_ROWS]] = values
    return tensor


def read_checkpoint(path: str | Path) -> Checkpoint:
    """One checkpoint file, whichever input it was written for (another shop's, say).

    A :class:`CheckpointError` says why it is refused.
    """
    path = Path(path)
    return _checkpoint(path, _read(path))


def learner_state_of(path: str | Path) -> dict[str, Any]:
    """The learner's state in a worker's checkpoint file (``state -> pipeline -> learner``).

    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp(), owner="shop-a.events")
    >>> learner_state_of(store.save({"pipeline": {"learner": {"name": "mtl"}}}, {}))
    {'name': 'mtl'}
    """
    found = read_checkpoint(path)
    try:
        return found.state["pipeline"]["learner"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{found.path.name}: holds no worker's learner") from err


def _read(path: Path) -> dict[str, Any]:
    """The checkpoint file's payload, of this format and version; else a CheckpointError."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for corrupt or unsafe files
        reason = _first_line(err)
        raise CheckpointError(f"{path.name}: unreadable or unsafe ({reason})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path.name}: not a recstream checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path.name}: format version {payload.get('version')!r}, "
            f"this recstream reads {VERSION}"
        )
    return payload


def _checkpoint(path: Path, payload: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        path=path,
        state=from_loadable(payload["state"]),
        offsets={int(p): int(o) for p, o in payload["offsets"].items()},
        created_unix=float(payload["created_unix"]),
    )


def _number(path: Path) -> int:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
