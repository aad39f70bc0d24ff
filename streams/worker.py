"""``recstream worker``: the Faust worker against a cluster, with metrics and checkpoints.

Example
-------
>>> from streams.settings import Settings
>>> run_worker(Settings(broker="127.0.0.1:9092", metrics_port=9100))   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys

import faust
from prometheus_client import disable_created_metrics, start_http_server

from streams.app import build_app
from streams.broker import wait_until_ready
from streams.metrics import Metrics
from streams.preload import preload
from streams.service import WorkerService
from streams.settings import Settings
from streams.topics import ensure_topics


def run_worker(settings: Settings, loglevel: str = "WARNING") -> int:
    """Run until SIGTERM or Ctrl-C; the last checkpoint is written on the way out."""
    if not settings.broker:
        raise ValueError(
            "the worker needs a cluster: --broker HOST:PORT or RECSTREAM_BROKER "
            "(`recstream demo` runs everything on the embedded broker)"
        )
    logging.basicConfig(
        level=loglevel, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    client_config = settings.kafka_client_config()
    wait_until_ready(settings.broker, 10.0, **client_config)
    ensure_topics(settings.broker, settings.topics, settings.partitions, **client_config)
    disable_created_metrics()  # *_created series only clutter dashboards
    metrics = Metrics()
    if settings.metrics_port is not None:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
    preload("torch._dynamo")  # the optimiser's, imported while the groups are joined
    service = WorkerService(settings, metrics)
    app = build_app(service, settings.broker)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None  # its cursor codes (hide, backspace, show) would land in log files
    try:
        worker.execute_from_commandline()
    except SystemExit as stopped:  # Faust's way out, 0 even when the last checkpoint failed
        if service.exit_status:
            return service.exit_status
        raise stopped
    return service.exit_status
