"""Operator commands on the ``control`` topic: erase a user, freeze learning, roll the model back.

A command is a small JSON record, keyed (the user for an erasure, ``model``
otherwise)::

    {"command": "erase_user", "user_id": "u1"}
    {"command": "freeze"}            {"command": "unfreeze"}
    {"command": "rollback", "version": 4242}

Every worker reads the whole topic (one partition, so commands apply in the
order they were sent) outside its consumer group, as it reads the catalog,
and keeps its position in every checkpoint: a worker that restores an older
checkpoint reads the commands after it again, so an erasure or a freeze is
never lost to a crash. ``recstream erase`` and ``recstream model ...`` write
them (:func:`send_commands`).

Example
-------
>>> command = parse_command(encode_command(Command("erase_user", user_id="u1")))
>>> command.name, command.user_id, command.key
('erase_user', 'u1', b'u1')
>>> parse_command(b'{"command": "rollback", "version": 7}').version
7
>>> parse_command(b'{"command": "reboot"}')
Traceback (most recent call last):
...
ValueError: unknown command 'reboot' (known: erase_user, freeze, unfreeze, rollback)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

COMMANDS = ("erase_user", "freeze", "unfreeze", "rollback")
"""What the control topic may ask (also the ``command`` label of the control metric)."""


@dataclass(frozen=True)
class Command:
    """One control record: ``user_id`` for ``erase_user``, ``version`` for ``rollback``."""

    name: str
    user_id: str | None = None
    version: int | None = None

    @property
    def key(self) -> bytes:
        """The record's key: the user for an erasure (as on ``scores``), else ``model``."""
        return (self.user_id if self.name == "erase_user" else "model").encode()


def parse_command(value: bytes | None) -> Command:
    """The command in a control record's value; ValueError saying what is wrong with it."""
    try:
        record = json.loads(value or b"")
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    name = record.get("command")
    if name not in COMMANDS:
        raise ValueError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
    if name == "erase_user":
        user_id = record.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("erase_user needs a user_id string")
        return Command(name, user_id=user_id)
    if name == "rollback":
        version = record.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError("rollback needs a version, a whole number of at least 0")
        return Command(name, version=version)
    return Command(name)


def encode_command(command: Command) -> bytes:
    """The JSON value of ``command`` (what :func:`parse_command` reads)."""
    record: dict[str, Any] = {"command": command.name}
    if command.user_id is not None:
        record["user_id"] = command.user_id
    if command.version is not None:
        record["version"] = command.version
    return json.dumps(record).encode()


def send_commands(
    bootstrap: str, topic: str, commands: Sequence[Command], **client_config: Any
) -> None:
    """Write ``commands`` to ``topic`` in order, each acknowledged by the broker (acks=all)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", retries=5, linger_ms=0, **client_config
    )
    try:
        for command in commands:
            producer.send(topic, key=command.key, value=encode_command(command)).get(timeout=30)
    finally:
        producer.close()
