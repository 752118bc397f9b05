"""Worker settings: each declared once, with its type, default, env var and meaning.

``Settings.from_env()`` reads, validates and freezes them at start; the value is
passed down explicitly, never kept in a mutable module global.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar


def setting(env: str, default: Any, doc: str) -> Any:
    """A settings field: its env var and meaning travel in the field's metadata."""
    return dataclasses.field(default=default, metadata={"env": env, "doc": doc})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    bootstrap: str = setting(
        "KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers, host:port[,host:port]."
    )
    config_path: str = setting(
        "TURNOUT_CONFIG", "config/local.yaml", "The YAML file of backends and routes."
    )
    app_id: str = setting(
        "TURNOUT_APP_ID", "turnout", "Consumer group and prefix of faust's internal topics."
    )
    request_topic: str = setting(
        "TURNOUT_REQUEST_TOPIC", "turnout.requests", "Topic producers publish requests to."
    )
    request_partitions: int = setting(
        "TURNOUT_REQUEST_PARTITIONS", 8, "Partitions of the request topic, if turnout creates it."
    )
    dead_letter_topic: str = setting(
        "TURNOUT_DEAD_LETTER_TOPIC", "turnout.dead-letter", "Where unprocessable records go."
    )
    dedupe_retention_s: int = setting(
        "TURNOUT_DEDUPE_RETENTION_S",
        7 * 24 * 3600,
        "How long a request answered ok is remembered, so a replay or repeat skips it; "
        "older ids are evicted and tombstoned. Default: 7 days, Kafka's default "
        "retention; set it to the request topic's retention.ms.",
    )
    dedupe_sweep_interval_s: float = setting(
        "TURNOUT_DEDUPE_SWEEP_INTERVAL_S", 1.0, "How often expired ids are looked for."
    )
    dedupe_sweep_keys: int = setting(
        "TURNOUT_DEDUPE_SWEEP_KEYS",
        5000,
        "Ids read per sweep (the sweep's cost); an expired id goes within one full pass.",
    )
    reply_prefix: str = setting(
        "TURNOUT_REPLY_PREFIX",
        "turnout.replies.",
        "reply_to must start with this; the default reply topic is <prefix><client_id>.",
    )
    reply_partitions: int = setting(
        "TURNOUT_REPLY_PARTITIONS", 4, "Partitions of a reply topic that turnout creates."
    )
    max_in_flight: int = setting(
        "TURNOUT_MAX_IN_FLIGHT",
        16384,
        "Backend calls in flight per worker; more waits (backpressure). About 26 KB of "
        "worker memory each (docs/ceiling.md).",
    )
    max_waiting: int = setting(
        "TURNOUT_MAX_WAITING",
        16384,
        "Requests per worker that may wait for backend capacity without holding one of the "
        "TURNOUT_MAX_IN_FLIGHT slots; past that a waiting request keeps its slot.",
    )
    max_request_bytes: int = setting(
        "TURNOUT_MAX_REQUEST_BYTES", 1_048_576, "Larger request records are dead-lettered."
    )
    max_request_depth: int = setting(
        "TURNOUT_MAX_REQUEST_DEPTH",
        64,
        "Deepest nesting of objects/arrays in a request body (the body counts as 1); "
        "deeper requests are dead-lettered. At most 200 (encoders refuse past 255).",
    )
    dead_letter_max_bytes: int = setting(
        "TURNOUT_DEAD_LETTER_MAX_BYTES",
        900_000,
        "Largest dead letter that copies its original; a larger one references the original "
        "in its source topic instead (size, sha256, a prefix). Keep it below the producer's "
        "1,000,000-byte limit and the dead-letter topic's max.message.bytes.",
    )
    commit_stall_s: float = setting(
        "TURNOUT_COMMIT_STALL_S",
        60.0,
        "A partition whose commit point has not moved for this long while later records are "
        "done (and the record holding it is past its deadline) logs commit_stalled and sets "
        "turnout_commit_stalled_seconds. 0: off.",
    )
    undelivered_s: float = setting(
        "TURNOUT_UNDELIVERED_S",
        5.0,
        "A partition whose commit point sits below the end of its log this long, with nothing "
        "of it in flight and free slots, is read again from that point (logs "
        "records_not_delivered). 0: off.",
    )
    default_timeout_ms: int = setting(
        "TURNOUT_DEFAULT_TIMEOUT_MS", 300_000, "Deadline of a request that names none."
    )
    commit_interval_s: float = setting(
        "TURNOUT_COMMIT_INTERVAL_S", 1.0, "How often consumed offsets are committed."
    )
    fetch_wait_ms: int = setting(
        "TURNOUT_FETCH_WAIT_MS",
        10,
        "Longest the broker holds a fetch with no new data (faust: 1500). Short keeps "
        "intake flowing under load; an idle worker fetches more often.",
    )
    fast_handover: bool = setting(
        "TURNOUT_FAST_HANDOVER",
        True,
        "Hand request records to the agent with a plain await when faust's handler cannot "
        "wait (docs/faust-consumer.md); 0 keeps faust's own race for every record.",
    )
    fetch_batch_above_rps: float = setting(
        "TURNOUT_FETCH_BATCH_ABOVE_RPS",
        200.0,
        "Above this many requests/s the broker holds each fetch for up to "
        "TURNOUT_FETCH_WAIT_MS to batch records (less CPU, that much more latency); "
        "off again below half of it. 0: never batch.",
    )
    session_timeout_s: float = setting(
        "TURNOUT_SESSION_TIMEOUT_S",
        10.0,
        "How long a silent worker keeps its partitions before the group reassigns them.",
    )
    instance_id: str = setting(
        "TURNOUT_INSTANCE_ID",
        "auto",
        "Static group membership: a worker restarted after a crash with the same id gets "
        "its partitions back at once, without waiting TURNOUT_SESSION_TIMEOUT_S or a "
        "rebalance. auto: derived from the host name and TURNOUT_DATA_DIR (unique per "
        "worker on a host); off: dynamic membership. Two live workers must never share one.",
    )
    health_topic: str = setting(
        "TURNOUT_HEALTH_TOPIC", "turnout.health", "Compacted topic of backend health records."
    )
    probe_interval_s: float = setting(
        "TURNOUT_PROBE_INTERVAL_S", 5.0, "How often the deployment's one prober probes backends."
    )
    probe_timeout_s: float = setting(
        "TURNOUT_PROBE_TIMEOUT_S", 5.0, "A probe slower than this fails."
    )
    probation_probes: int = setting(
        "TURNOUT_PROBATION_PROBES",
        3,
        "Consecutive passing probes that bring a backend back from probation.",
    )
    shutdown_grace_s: float = setting(
        "TURNOUT_SHUTDOWN_GRACE_S",
        5.0,
        "On SIGTERM, how long in-flight requests may finish; the rest stay in Kafka.",
    )
    region: str = setting(
        "TURNOUT_REGION",
        "",
        "This worker's region (e.g. us); empty: single-region, no routing-state sync. "
        "See docs/multi-region.md.",
    )
    region_stale_after_s: float = setting(
        "TURNOUT_REGION_STALE_AFTER_S",
        15.0,
        "A region's synced state older than this is unknown and never trusted.",
    )
    region_publish_interval_s: float = setting(
        "TURNOUT_REGION_PUBLISH_INTERVAL_S",
        3.0,
        "How often the worker publishes its region's summary to turnout.regions.",
    )
    region_router: str = setting(
        "TURNOUT_REGION_ROUTER",
        "",
        "host:port where clients reach this region's router (gateway), published to others.",
    )
    region_peers: str = setting(
        "TURNOUT_REGION_PEERS",
        "",
        "Other regions' routers, region=http://host:port[@rtt_ms],...: a gateway that cannot "
        "reach its Kafka names the nearest in its 503 (X-Turnout-Next-Router).",
    )
    web_port: int = setting(
        "TURNOUT_WEB_PORT", 0, "Port of /metrics, /status.json and the status page; 0: off."
    )
    web_host: str = setting("TURNOUT_WEB_HOST", "127.0.0.1", "Address the web port binds.")
    store: str = setting(
        "TURNOUT_STORE",
        "rocksdb://",
        "Table store: rocksdb:// (rocksdict, on disk: a restart reads only the changelog's "
        "tail) or memory:// (the whole changelog is read at every start).",
    )
    data_dir: str = setting(
        "TURNOUT_DATA_DIR",
        "var/worker",
        "Where the worker keeps local table state; one per worker (it is locked).",
    )
    log_level: str = setting("TURNOUT_LOG_LEVEL", "info", "debug, info, warning or error.")
    log_format: str = setting(
        "TURNOUT_LOG_FORMAT", "auto", "json, console, or auto (console on a TTY)."
    )
    log_content: bool = setting(
        "TURNOUT_LOG_CONTENT", False, "Log prompts and responses (off: they are private)."
    )
    otlp_endpoint: str = setting(
        "TURNOUT_OTLP_ENDPOINT",
        "",
        "OTLP/HTTP traces URL (e.g. http://127.0.0.1:4318/v1/traces); empty: export off.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        return read_env(cls, env, overrides)

    def validate(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"TURNOUT_MAX_IN_FLIGHT must be at least 1, got {self.max_in_flight}")
        if not 2 <= self.max_request_depth <= 200:
            raise ValueError(
                f"TURNOUT_MAX_REQUEST_DEPTH must be 2..200, got {self.max_request_depth}"
            )
        if self.dead_letter_max_bytes < 4096:
            raise ValueError(
                f"TURNOUT_DEAD_LETTER_MAX_BYTES must be at least 4096, got "
                f"{self.dead_letter_max_bytes}"
            )
        if self.dedupe_retention_s < 1 or self.dedupe_sweep_keys < 1:
            raise ValueError(
                "TURNOUT_DEDUPE_RETENTION_S and TURNOUT_DEDUPE_SWEEP_KEYS must be at least 1"
            )
        if self.dedupe_sweep_interval_s <= 0:
            raise ValueError("TURNOUT_DEDUPE_SWEEP_INTERVAL_S must be more than 0")
        if self.request_partitions < 1:
            raise ValueError("TURNOUT_REQUEST_PARTITIONS must be at least 1")
        if self.instance_id not in ("auto", "off", "") and not re.fullmatch(
            r"[A-Za-z0-9._-]{1,249}", self.instance_id
        ):
            raise ValueError(
                f"TURNOUT_INSTANCE_ID must be auto, off, or 1-249 of [A-Za-z0-9._-], "
                f"got {self.instance_id!r}"
            )
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(
                f"TURNOUT_LOG_LEVEL must be debug|info|warning|error, not {self.log_level!r}"
            )
        if self.region_peers:
            from turnout.core.nearest import parse_endpoints

            try:
                parse_endpoints(self.region_peers)
            except ValueError as exc:
                raise ValueError(f"TURNOUT_REGION_PEERS: {exc}") from None
        if self.region:
            from turnout.core.region_state import check_region

            check_region(self.region)
            if not 0 < self.region_publish_interval_s < self.region_stale_after_s:
                raise ValueError(
                    "TURNOUT_REGION_PUBLISH_INTERVAL_S must be > 0 and below "
                    f"TURNOUT_REGION_STALE_AFTER_S ({self.region_stale_after_s}), got "
                    f"{self.region_publish_interval_s}: a region would go stale between "
                    "its own summaries"
                )

    def group_instance_id(self, hostname: str) -> str | None:
        """The consumer's ``group.instance.id``, or None for dynamic membership. Pure.

        >>> Settings(instance_id="w-1").group_instance_id("h")
        'w-1'
        >>> Settings(instance_id="off").group_instance_id("h") is None
        True
        >>> Settings(data_dir="/srv/a").group_instance_id("h") != Settings(
        ...     data_dir="/srv/b").group_instance_id("h")
        True
        """
        if self.instance_id in ("off", ""):
            return None
        if self.instance_id != "auto":
            return self.instance_id
        digest = hashlib.sha256(os.path.abspath(self.data_dir).encode()).hexdigest()[:12]
        host = re.sub(r"[^A-Za-z0-9._-]", "-", hostname)[:200] or "host"
        return f"{host}-{digest}"

    def reply_topic_for(self, client_id: str) -> str:
        return f"{self.reply_prefix}{client_id}"

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(env var, default, meaning) for every setting, for the README and --help."""
        return [
            (f.metadata["env"], repr(f.default), f.metadata["doc"]) for f in dataclasses.fields(cls)
        ]


T = TypeVar("T")


def read_env(cls: type[T], env: Mapping[str, str] | None, overrides: Mapping[str, Any]) -> T:
    """Build a settings dataclass from env vars named in its fields' metadata, then validate.

    Every unparsable value is reported at once, naming the variable and the type wanted.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f.metadata["env"]
        if name in env:
            try:
                values[f.name] = _PARSERS[f.type](env[name])
            except ValueError:
                problems.append(f"{name}={env[name]!r}: expected {f.type}")
    values.update(overrides)
    if problems:
        raise ValueError(f"invalid {cls.__name__}: " + "; ".join(problems))
    settings = cls(**values)
    settings.validate()  # type: ignore[attr-defined]
    return settings


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


_PARSERS: dict[Any, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": _bool,
    str: str,
    int: int,
    float: float,
    bool: _bool,
}
