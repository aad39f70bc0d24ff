"""Model snapshots on the ``model`` topic, so a worker that joins starts from the group's model.

A snapshot is a checkpoint file (:mod:`streams.checkpoint`, taken right after
an update was published, see :mod:`streams.sync`) cut into chunks under 1 MB,
followed by one index record naming its first offset and chunk count. A
joiner reads the newest index, then the chunks, then replays the ``sync``
updates the snapshot does not hold. A snapshot whose writer died halfway has
no index and is never read.

Publishing blocks (kafka-python), so the worker calls it from the thread that
waits for a background checkpoint, never from the event loop.

Example
-------
>>> publish_snapshot(settings, Path("checkpoints/ckpt-000042.pt"))     # doctest: +SKIP
>>> found = latest_snapshot(settings)                                   # doctest: +SKIP
>>> found.offsets                                                       # doctest: +SKIP
{0: 5120, 1: 4988, 2: 5031, 3: 5009}
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.checkpoint import Checkpoint, CheckpointError, read_checkpoint
from streams.settings import Settings
from streams.sync import MAX_CHUNK_BYTES

log = logging.getLogger("recstream.worker")

INDEX_KEY = b"index"
CHUNK_KEY = b"chunk"
SEARCH_BACK = 256
"""Records read back from the end of ``model`` to find the newest index."""


def publish_snapshot(settings: Settings, path: Path) -> int:
    """Send the checkpoint file at ``path`` to ``model``; return the bytes sent."""
    data = path.read_bytes()
    snapshot = uuid.uuid4().hex
    pieces = [data[i : i + MAX_CHUNK_BYTES] for i in range(0, len(data), MAX_CHUNK_BYTES)]
    producer = KafkaProducer(
        bootstrap_servers=settings.broker,
        max_request_size=2 * MAX_CHUNK_BYTES,
        acks="all",
        **settings.kafka_client_config(),
    )
    try:
        sent = [
            producer.send(settings.topics.model, key=CHUNK_KEY, value=_chunk(snapshot, n, piece))
            for n, piece in enumerate(pieces)
        ]
        first = sent[0].get(timeout=60).offset
        for future in sent[1:]:
            future.get(timeout=60)
        index = {"snapshot": snapshot, "first": first, "chunks": len(pieces), "file": path.name}
        producer.send(settings.topics.model, key=INDEX_KEY, value=orjson.dumps(index)).get(60)
    finally:
        producer.close()
    return len(data)


def latest_snapshot(settings: Settings, timeout_s: float = 30.0) -> Checkpoint | None:
    """The newest complete snapshot on ``model``, read back as a checkpoint; None if none."""
    tp = TopicPartition(settings.topics.model, 0)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.broker,
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=4 * MAX_CHUNK_BYTES,
        **settings.kafka_client_config(),
    )
    try:
        if tp.partition not in (consumer.partitions_for_topic(tp.topic) or ()):
            return None
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        index = _newest_index(consumer, tp, end) if end > 0 else None
        if index is None:
            return None
        data = _chunks(consumer, tp, index)
    finally:
        consumer.close()
    if data is None:
        log.error("model snapshot %s is incomplete: starting without it", index["snapshot"])
        return None
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / index["file"]
        path.write_bytes(data)
        try:
            return read_checkpoint(path)
        except CheckpointError as err:
            log.error("model snapshot %s refused: %s", index["snapshot"], err)
            return None


def _chunk(snapshot: str, n: int, piece: bytes) -> bytes:
    return orjson.dumps({"snapshot": snapshot, "chunk": n}) + b"\n" + piece


def _newest_index(consumer: KafkaConsumer, tp: TopicPartition, end: int) -> dict | None:
    """The last index record among the last :data:`SEARCH_BACK` records before ``end``."""
    newest = None
    consumer.seek(tp, max(0, end - SEARCH_BACK))
    for record in consumer:
        if record.key == INDEX_KEY:
            newest = orjson.loads(record.value)
        if record.offset + 1 >= end:
            break
    return newest


def _chunks(consumer: KafkaConsumer, tp: TopicPartition, index: dict) -> bytes | None:
    """The snapshot's bytes, or None when a chunk is missing or foreign."""
    consumer.seek(tp, int(index["first"]))
    pieces: list[bytes] = []
    for record in consumer:
        if record.key != CHUNK_KEY:
            continue
        head, _, piece = record.value.partition(b"\n")
        header = orjson.loads(head)
        if header["snapshot"] != index["snapshot"]:
            continue  # another writer's, interleaved
        if header["chunk"] != len(pieces):
            return None
        pieces.append(piece)
        if len(pieces) == index["chunks"]:
            return b"".join(pieces)
    return None
