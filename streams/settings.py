"""One typed settings object for the whole service, read from flags and environment here only.

Every other module receives a :class:`Settings` (or a part of it) and never
reads the environment itself. Flags win over environment variables, which win
over defaults.

Example
-------
>>> s = Settings.from_env({"RECSTREAM_BROKER": "kafka:9092", "RECSTREAM_TOPIC_PREFIX": "shop1."})
>>> s.broker, s.topics.events, s.topics.dlq
('kafka:9092', 'shop1.events', 'shop1.events.dlq')
>>> Settings.from_env({}).kafka_client_config()
{}
>>> s = Settings.from_env({"RECSTREAM_TOWERS": "mmoe", "RECSTREAM_TASK_WEIGHTS": "1,2,4"})
>>> s.towers, s.task_weights
('mmoe', (1.0, 2.0, 4.0))
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from online_models.base import TASKS
from online_models.labels import LabelConfig
from streams.ranking import OBJECTIVES, RankingConfig

if TYPE_CHECKING:
    from online_models.config import MultiTaskConfig
    from online_models.demand import DemandConfig

TOWERS = ("shared_bottom", "mmoe", "ple")
"""Choices of ``towers``: :data:`online_models.towers.ARCHITECTURES`, spelled out here so
that reading settings does not import torch (about 1.5 s on every command); a test
checks that the two agree."""
TASK_WEIGHTINGS = ("fixed", "uncertainty")
"""Choices of ``task_weighting`` (:class:`~online_models.config.MultiTaskConfig`)."""


@dataclass(frozen=True)
class TopicNames:
    """The topics of docs/contracts.md, under an optional prefix."""

    prefix: str = ""

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def items(self) -> str:
        return f"{self.prefix}items"

    @property
    def scores(self) -> str:
        return f"{self.prefix}scores"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}events.dlq"

    @property
    def control(self) -> str:
        """Operator commands (:mod:`streams.control`)."""
        return f"{self.prefix}control"

    @property
    def demand(self) -> str:
        """Item demand forecasts (:mod:`online_models.demand`)."""
        return f"{self.prefix}demand"

    @property
    def sync(self) -> str:
        """The workers' model updates (:mod:`streams.sync`)."""
        return f"{self.prefix}sync"

    @property
    def model(self) -> str:
        """Snapshots of the group's model, for a worker that joins (:mod:`streams.snapshots`)."""
        return f"{self.prefix}model"

    def all(self) -> tuple[str, ...]:
        return (
            self.events,
            self.items,
            self.scores,
            self.dlq,
            self.control,
            self.demand,
            self.sync,
            self.model,
        )


@dataclass(frozen=True)
class Security:
    """SASL/TLS settings passed through to every Kafka client unchanged."""

    protocol: str | None = None  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


_ENV = {
    # settings field -> environment variable
    "broker": "RECSTREAM_BROKER",
    "tansu_bin": "RECSTREAM_TANSU_BIN",
    "topic_prefix": "RECSTREAM_TOPIC_PREFIX",
    "partitions": "RECSTREAM_PARTITIONS",
    "metrics_host": "RECSTREAM_METRICS_HOST",
    "metrics_port": "RECSTREAM_METRICS_PORT",
    "checkpoint_dir": "RECSTREAM_CHECKPOINT_DIR",
    "checkpoint_interval_s": "RECSTREAM_CHECKPOINT_INTERVAL_S",
    "keep_checkpoints": "RECSTREAM_KEEP_CHECKPOINTS",
    "sync_interval_s": "RECSTREAM_SYNC_INTERVAL_S",
    "sync_events": "RECSTREAM_SYNC_EVENTS",
    "snapshot_interval_s": "RECSTREAM_SNAPSHOT_INTERVAL_S",
    "top_k": "RECSTREAM_TOP_K",
    "batch_size": "RECSTREAM_BATCH_SIZE",
    "batch_wait_ms": "RECSTREAM_BATCH_WAIT_MS",
    "fetch_wait_ms": "RECSTREAM_FETCH_WAIT_MS",
    "click_window_s": "RECSTREAM_CLICK_WINDOW_S",
    "click_wait_s": "RECSTREAM_CLICK_WAIT_S",
    "conversion_window_s": "RECSTREAM_CONVERSION_WINDOW_S",
    "impressions": "RECSTREAM_IMPRESSIONS",
    "dedupe_events": "RECSTREAM_DEDUPE_EVENTS",
    "max_skew_s": "RECSTREAM_MAX_SKEW_S",
    "demand_horizon_s": "RECSTREAM_DEMAND_HORIZON_S",
    "towers": "RECSTREAM_TOWERS",
    "task_weights": "RECSTREAM_TASK_WEIGHTS",
    "task_weighting": "RECSTREAM_TASK_WEIGHTING",
    "ranking_objective": "RECSTREAM_RANKING_OBJECTIVE",
    "ranking_weights": "RECSTREAM_RANKING_WEIGHTS",
    "torch_threads": "RECSTREAM_TORCH_THREADS",
    "init_from": "RECSTREAM_INIT_FROM",
    "faults": "RECSTREAM_FAULTS",
    "ledger": "RECSTREAM_LEDGER",
    "predictions_log": "RECSTREAM_PREDICTIONS_LOG",
}
_SECURITY_ENV = {
    "protocol": "RECSTREAM_SECURITY_PROTOCOL",
    "sasl_mechanism": "RECSTREAM_SASL_MECHANISM",
    "sasl_username": "RECSTREAM_SASL_USERNAME",
    "sasl_password": "RECSTREAM_SASL_PASSWORD",
    "ssl_cafile": "RECSTREAM_SSL_CAFILE",
    "ssl_certfile": "RECSTREAM_SSL_CERTFILE",
    "ssl_keyfile": "RECSTREAM_SSL_KEYFILE",
}


@dataclass(frozen=True)
class Settings:
    """Where the broker is, what the topics are called, and how the service runs.

    ``broker=None`` means: start the embedded Tansu broker on loopback.

    The model: ``towers`` are the shared layers of the multi-task net
    (shared-bottom, MMoE or PLE); ``task_weights`` weight the click, cart and
    purchase losses in training, and ``task_weighting="uncertainty"`` learns
    adaptive weights on top of them (Kendall et al. 2018). These *task weights*
    are not the *ranking weights* of a score record's ``score``:
    ``ranking_objective`` ("weighted" or "revenue") and ``ranking_weights``
    (click, cart, purchase, value; :mod:`streams.ranking`, chosen with
    ``recstream bench pareto``).
    """

    broker: str | None = None
    tansu_bin: str | None = None
    topic_prefix: str = ""
    partitions: int = 4
    security: Security = field(default_factory=Security)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    checkpoint_dir: Path = Path("checkpoints")
    checkpoint_interval_s: float = 30.0
    keep_checkpoints: int = 3  # the newest on disk; older models cannot be rolled back to
    # Workers of one prefix share one model: each publishes its update this often
    # (streams.sync); the staleness of a peer's learning is about this long.
    sync_interval_s: float = 3.0
    # ...or sooner, once it applied this many events since its last: a worker that reads fast
    # (catching up, a replay) keeps its peers as many events behind as a live one does.
    sync_events: int = 20_000
    # A snapshot of the model for workers that join goes to the model topic this often (from
    # the worker owning events partition 0): a joiner replays at most this much of sync.
    snapshot_interval_s: float = 300.0
    top_k: int = 20
    batch_size: int = 1000
    batch_wait_ms: int = 100
    # The embedded broker answers a multi-partition fetch only when this wait expires, and
    # each fetch costs it more as its in-memory log grows: at 10 ms its CPU climbed to half a
    # core over a 90 s demo at 2,000 events/s and the p99 latency with it (177-299 ms, last
    # 10 s up to 480 ms); at 25 ms p99 was 157-169 ms (three runs). Apache Kafka answers as
    # soon as data is there, so under load this wait adds nothing there.
    fetch_wait_ms: int = 25
    click_window_s: float = 600.0
    click_wait_s: float = 60.0
    conversion_window_s: float = 3600.0
    impressions: bool = True
    dedupe_events: int = 200_000  # ~145 bytes an id of 36 characters: ~29 MB
    max_skew_s: float = 300.0
    demand_horizon_s: float = 3600.0  # item demand forecasts this far ahead; 0: none
    towers: str = "shared_bottom"
    task_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    task_weighting: str = "fixed"
    ranking_objective: str = "weighted"
    ranking_weights: tuple[float, float, float, float] = (1.0, 4.0, 16.0, 0.0)
    # One intra-op thread: the worker shares two cores with Faust's consumer thread and
    # often a producer; two OpenMP threads then spin against each other (measured:
    # 2,355 events/s with one thread, 196 with two, on this 2-core machine under load).
    torch_threads: int = 1
    # A new shop: with no checkpoint of its own to restore, the worker starts its learner
    # from this checkpoint's shared layers and content rows (online_models.transfer).
    init_from: Path | None = None
    faults: str = ""  # fault injection for tests only (streams.faults); never in production
    ledger: bool = False  # record applied offsets in checkpoints (streams.ledger); tests only
    # Append every labelled prediction to this file (streams.prediction_log), for pooled AUC.
    predictions_log: Path | None = None

    def __post_init__(self) -> None:
        for name in ("task_weights", "ranking_weights"):
            object.__setattr__(self, name, tuple(float(w) for w in getattr(self, name)))
        for name, check in _CHECKS.items():
            check(getattr(self, name))

    def label_config(self) -> LabelConfig:
        """How the worker's label stage turns events into samples and labels (windows in ms).

        >>> config = Settings(dedupe_events=1_000_000, max_skew_s=60).label_config()
        >>> config.dedupe_events, config.max_skew_ms, config.provisional_waits_ms
        (1000000, 60000, (60000, 1800000, 1800000))
        """
        return LabelConfig(
            impressions=self.impressions,
            click_window_ms=int(self.click_window_s * 1000),
            conversion_window_ms=int(self.conversion_window_s * 1000),
            dedupe_events=self.dedupe_events,
            max_skew_ms=int(self.max_skew_s * 1000),
            provisional_waits_ms=self.provisional_waits_ms(),
        )

    def provisional_waits_ms(self) -> tuple[int, int, int]:
        """Event time the label stage waits before a missing click, cart, purchase is learned as 0.

        A shown item is learned as not clicked after ``click_wait_s`` (most
        clicks come within seconds of the impression, long before the click
        window closes); a click as not carted, and a cart as not bought, after
        half the conversion window. Waiting for the whole click window instead
        means learning clicks at once and their negatives minutes later: a
        fresh model then sees almost only positives and over-predicts for a
        long time (measured on the demo's shop, whose clicks come within
        0.5 s: mean click prediction 0.33 against a click rate of 0.073 after
        60,000 events with a 10 s wait, 0.08 against 0.074 with 1 s).

        >>> Settings().provisional_waits_ms()
        (60000, 1800000, 1800000)
        """
        conversion = int(self.conversion_window_s * 500)
        click = int(min(self.click_wait_s, self.click_window_s) * 1000)
        return (click, conversion, conversion)

    def model_config(self) -> MultiTaskConfig:
        """The worker's learner: towers, task weights and threads from these settings.

        >>> config = Settings(towers="ple", task_weights=(1.0, 0.0, 2.0)).model_config()
        >>> config.architecture, config.task_weights, config.num_threads
        ('ple', (1.0, 0.0, 2.0), 1)
        """
        from online_models.config import MultiTaskConfig  # torch: only where a model is built

        return MultiTaskConfig(
            architecture=self.towers,
            task_weights=self.task_weights,
            task_weighting=self.task_weighting,
            num_threads=self.torch_threads,
        )

    def demand_config(self) -> DemandConfig | None:
        """The worker's item demand (None with a horizon of 0).

        >>> Settings(demand_horizon_s=60).demand_config().interval_ms
        15000
        >>> Settings(demand_horizon_s=0).demand_config() is None
        True
        """
        from online_models.demand import DemandConfig  # torch: only where a model is built

        return DemandConfig(horizon_s=self.demand_horizon_s) if self.demand_horizon_s else None

    def ranking_config(self) -> RankingConfig:
        """The worker's ranking: K, objective and ranking weights from these settings.

        >>> config = Settings(ranking_weights=(1, 0, 4, 2)).ranking_config()
        >>> config.weights, config.value_weight, config.top_k
        ((1.0, 0.0, 4.0), 2.0, 20)
        """
        click, cart, purchase, value = self.ranking_weights
        return RankingConfig(
            top_k=self.top_k,
            objective=self.ranking_objective,
            weights=(click, cart, purchase),
            value_weight=value,
        )

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults overridden by ``RECSTREAM_*`` environment variables.

        A value that cannot be used is a ValueError naming its variable.
        """
        env = os.environ if env is None else env
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, var in _ENV.items():
            raw = env.get(var)
            if not raw:
                continue
            parse = _PARSERS.get(name)
            try:
                value = parse(raw) if parse else _convert(types[name], raw)
                if name in _CHECKS:
                    _CHECKS[name](value)
            except ValueError as err:
                raise ValueError(f"{var}={raw!r}: {err}") from err
            values[name] = value
        security = {name: env[var] for name, var in _SECURITY_ENV.items() if env.get(var)}
        return cls(**values, security=Security(**security))

    def with_args(self, args: argparse.Namespace) -> Settings:
        """These settings overridden by any command-line flag that was given."""
        names = {f.name for f in fields(self)} - {"security"}
        changes = {
            name: getattr(args, name) for name in names if getattr(args, name, None) is not None
        }
        security_changes = {
            name: getattr(args, name)
            for name in _SECURITY_ENV
            if getattr(args, name, None) is not None
        }
        if security_changes:
            changes["security"] = replace(self.security, **security_changes)
        return replace(self, **changes)

    def kafka_client_config(self) -> dict[str, Any]:
        """Security settings as kafka-python keyword arguments (empty for plaintext)."""
        s = self.security
        pairs = {
            "security_protocol": s.protocol,
            "sasl_mechanism": s.sasl_mechanism,
            "sasl_plain_username": s.sasl_username,
            "sasl_plain_password": s.sasl_password,
            "ssl_cafile": s.ssl_cafile,
            "ssl_certfile": s.ssl_certfile,
            "ssl_keyfile": s.ssl_keyfile,
        }
        return {key: value for key, value in pairs.items() if value is not None}


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that talks to Kafka."""
    group = parser.add_argument_group("Kafka connection (default: the embedded broker)")
    group.add_argument("--broker", help="bootstrap servers, e.g. kafka:9092 (env RECSTREAM_BROKER)")
    group.add_argument("--topic-prefix", dest="topic_prefix", help="prefix for all topic names")
    group.add_argument("--partitions", type=int, help="partitions of created topics (default 4)")
    group.add_argument(
        "--security-protocol",
        dest="protocol",
        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
    )
    group.add_argument("--sasl-mechanism", dest="sasl_mechanism")
    group.add_argument("--sasl-username", dest="sasl_username")
    group.add_argument(
        "--sasl-password", dest="sasl_password", help="prefer env RECSTREAM_SASL_PASSWORD"
    )
    group.add_argument("--ssl-cafile", dest="ssl_cafile")
    group.add_argument("--ssl-certfile", dest="ssl_certfile")
    group.add_argument("--ssl-keyfile", dest="ssl_keyfile")


def parse_task_weights(text: str) -> tuple[float, float, float]:
    """``"CLICK,CART,PURCHASE"`` as three task weights.

    >>> parse_task_weights("1, 0.5,2")
    (1.0, 0.5, 2.0)
    >>> parse_task_weights("1,2")
    Traceback (most recent call last):
    ...
    ValueError: task weights are three comma-separated numbers CLICK,CART,PURCHASE, not '1,2'
    """
    parts = text.split(",")
    try:
        if len(parts) != len(TASKS):
            raise ValueError
        weights = tuple(float(part) for part in parts)
    except ValueError:
        raise ValueError(
            f"task weights are three comma-separated numbers CLICK,CART,PURCHASE, not {text!r}"
        ) from None
    check_task_weights(weights)
    return weights  # type: ignore[return-value]


def check_task_weights(weights: tuple[float, ...]) -> None:
    """Three finite non-negative numbers, not all zero; else a ValueError."""
    if len(weights) != len(TASKS):
        raise ValueError(f"task weights need one number per task {TASKS}, got {weights}")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"task weights must be finite and non-negative, got {weights}")
    if not any(w > 0 for w in weights):
        raise ValueError("task weights must not all be zero (nothing would be learned)")


def _check_choice(name: str, choices: tuple[str, ...]) -> Any:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")

    return check


def _check_threads(value: int) -> None:
    if value < 1:
        raise ValueError(f"torch threads must be at least 1, not {value}")


def _check_keep(value: int) -> None:
    if value < 1:
        raise ValueError(f"checkpoints kept must be at least 1, not {value}")


def _check_dedupe(value: int) -> None:
    if value < 1:
        raise ValueError(f"dedupe events must be at least 1, not {value}")


def _check_skew(value: float) -> None:
    if not value >= 0:
        raise ValueError(f"max skew must be 0 or more seconds, not {value}")


def parse_ranking_weights(text: str) -> tuple[float, float, float, float]:
    """``"CLICK,CART,PURCHASE,VALUE"`` as four ranking weights.

    >>> parse_ranking_weights("1,4,16,0")
    (1.0, 4.0, 16.0, 0.0)
    >>> parse_ranking_weights("1,4,x,0")
    Traceback (most recent call last):
    ...
    ValueError: ranking weights are four numbers CLICK,CART,PURCHASE,VALUE, not '1,4,x,0'
    """
    try:
        weights = tuple(float(part) for part in text.split(","))
        if len(weights) != 4:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"ranking weights are four numbers CLICK,CART,PURCHASE,VALUE, not {text!r}"
        ) from None
    check_ranking_weights(weights)
    return weights  # type: ignore[return-value]


def check_ranking_weights(weights: tuple[float, ...]) -> None:
    """Four finite non-negative numbers, not all zero; else a ValueError."""
    if len(weights) != 4:
        raise ValueError(f"ranking weights are CLICK,CART,PURCHASE,VALUE, got {weights}")
    RankingConfig(weights=tuple(weights[:3]), value_weight=weights[3])


def _check_demand_horizon(value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"the demand horizon is seconds of event time (0: none), not {value}")


_PARSERS = {"task_weights": parse_task_weights, "ranking_weights": parse_ranking_weights}
"""Settings read from the environment by their own parser rather than :func:`_convert`."""
_CHECKS = {
    "towers": _check_choice("towers", TOWERS),
    "task_weights": check_task_weights,
    "task_weighting": _check_choice("task weighting", TASK_WEIGHTINGS),
    "ranking_objective": _check_choice("ranking objective", OBJECTIVES),
    "ranking_weights": check_ranking_weights,
    "torch_threads": _check_threads,
    "dedupe_events": _check_dedupe,
    "keep_checkpoints": _check_keep,
    "max_skew_s": _check_skew,
    "demand_horizon_s": _check_demand_horizon,
}
"""Settings with a range of valid values: a check that raises ValueError outside it."""


def _convert(kind: Any, raw: str) -> Any:
    text = str(kind)
    if "float" in text:
        return float(raw)
    if "bool" in text:
        return raw.lower() in ("1", "true", "yes")
    if "int" in text:
        return int(raw)
    if "Path" in text:
        return Path(raw)
    return raw
