"""Reach a cluster: the given one, or an embedded broker started for this run.

Example
-------
>>> from streams.settings import Settings
>>> with connect(Settings()) as bootstrap:      # doctest: +SKIP
...     print(bootstrap)                          # topics exist by now
127.0.0.1:41234
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from streams.broker import EmbeddedBroker, wait_until_ready
from streams.settings import Settings
from streams.topics import ensure_topics


@contextlib.contextmanager
def connect(
    settings: Settings, port: int | None = None, ready_timeout_s: float = 10.0
) -> Iterator[str]:
    """Yield a bootstrap address whose topics exist; stop what we started."""
    if settings.broker:
        wait_until_ready(settings.broker, ready_timeout_s, **settings.kafka_client_config())
        ensure_topics(
            settings.broker, settings.topics, settings.partitions, **settings.kafka_client_config()
        )
        yield settings.broker
        return
    with EmbeddedBroker(
        port=port, binary=settings.tansu_bin, ready_timeout_s=ready_timeout_s
    ) as broker:
        ensure_topics(broker.bootstrap, settings.topics, settings.partitions)
        yield broker.bootstrap


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM, so long work can end cleanly; handlers restored after."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C means: now
            raise KeyboardInterrupt
        stop.set()

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
