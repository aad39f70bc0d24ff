"""Import modules in a background thread, while a starting worker waits on the network.

A worker's first optimiser imports ``torch._dynamo`` (2-3 s of CPU, torch's
``_disable_dynamo`` wrapper around ``Optimizer.add_param_group``). Made
before the worker joins its consumer groups, that import held every start
up; imported here, it overlaps the joins (about 3 s on the embedded broker),
and the optimiser is made on first use (:class:`~online_models.learner.MultiTaskLearner`).

A fork must not happen mid-import: the child would inherit the module's
import lock held by a thread it does not have, and block on its first import
of that module. :func:`settle` waits for the imports first; the checkpoint
writer calls it before it forks.

Example
-------
>>> thread = preload("json")
>>> settle()
>>> thread.is_alive()
False
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger("recstream.worker")

_threads: list[threading.Thread] = []
_lock = threading.Lock()


def preload(module: str) -> threading.Thread:
    """Start importing ``module`` in a daemon thread (a failure is logged; the importer that
    needs it then raises it itself)."""

    def run() -> None:
        try:
            importlib.import_module(module)
        except Exception as err:
            log.warning("preloading %s failed: %r", module, err)

    thread = threading.Thread(target=run, name=f"preload {module}", daemon=True)
    with _lock:
        _threads.append(thread)
    thread.start()
    return thread


def settle() -> None:
    """Wait until every preload has finished (before a fork)."""
    with _lock:
        pending, _threads[:] = list(_threads), []
    for thread in pending:
        thread.join()
