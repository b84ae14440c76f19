"""Kafka building blocks shared by the simulators and the stream jobs.

Everything here talks plain Kafka (kafka-python), so it works the same against the embedded tansu
broker and an Apache Kafka cluster. Values are JSON bytes: producers take `bytes` (already
serialised, e.g. `Contract.to_json()`) or plain data (serialised here).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.serializer import Serializer

from pipelines.errors import BrokerError
from pipelines.settings import Settings


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if hasattr(value, "to_json"):
        return value.to_json()
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _key_bytes(key: Any) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()


class JsonValueSerializer(Serializer):
    """bytes pass through; contracts use their own JSON; anything else goes through json.dumps."""

    def serialize(self, topic, headers, data):
        return None if data is None else _to_bytes(data)


class KeySerializer(Serializer):
    def serialize(self, topic, headers, data):
        return _key_bytes(data)


def with_bootstrap(settings: Settings, bootstrap: str) -> Settings:
    """A copy of `settings` pointing at another broker (tests, the embedded broker)."""
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})})


def _security_check(settings: Settings) -> None:
    k = settings.kafka
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(k, name)
        if path is not None and "SSL" in k.security_protocol and not path.is_file():
            raise BrokerError(f"kafka.{name} {path} is not a file")
    if k.security_protocol.startswith("SASL"):
        if not k.sasl_mechanism or not k.sasl_username:
            raise BrokerError(f"kafka.security_protocol {k.security_protocol} needs kafka.sasl_mechanism and kafka.sasl_username")
        try:
            secret = k.sasl_secret()
        except ValueError as exc:
            raise BrokerError(str(exc)) from None
        if secret is None:
            raise BrokerError("SASL needs kafka.sasl_password or kafka.sasl_password_file")


def client_security(settings: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments for `settings.kafka`'s TLS and SASL; {} for PLAINTEXT.

    The one place settings become client security: every producer, consumer and admin client the
    project makes (here, in infra/ and in benchmarks/) takes its kwargs from this function.
    """
    _security_check(settings)
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": k.security_protocol}
    if "SSL" in k.security_protocol:
        out["ssl_check_hostname"] = k.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(k, name) is not None:
                out[name] = str(getattr(k, name))
        if k.ssl_password is not None:
            out["ssl_password"] = k.ssl_password.get_secret_value()
    if k.security_protocol.startswith("SASL"):
        out.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                   sasl_plain_password=k.sasl_secret())
    return out


def librdkafka_security(settings: Settings) -> dict[str, Any]:
    """The same security as `client_security`, in librdkafka's names (confluent-kafka `FastProducer`)."""
    _security_check(settings)
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security.protocol": k.security_protocol.lower()}
    if "SSL" in k.security_protocol:
        out["ssl.endpoint.identification.algorithm"] = "https" if k.ssl_check_hostname else "none"
        for name, key in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                          ("ssl_keyfile", "ssl.key.location")):
            if getattr(k, name) is not None:
                out[key] = str(getattr(k, name))
        if k.ssl_password is not None:
            out["ssl.key.password"] = k.ssl_password.get_secret_value()
    if k.security_protocol.startswith("SASL"):
        out.update({"sasl.mechanisms": k.sasl_mechanism, "sasl.username": k.sasl_username,
                    "sasl.password": k.sasl_secret()})
    return out


def describe_security(settings: Settings) -> str:
    """' over SASL_SSL (SCRAM-SHA-512 as argus-fraud)' for error messages; '' for PLAINTEXT. No secrets."""
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return ""
    sasl = f" ({k.sasl_mechanism} as {k.sasl_username})" if k.security_protocol.startswith("SASL") else ""
    return f" over {k.security_protocol}{sasl}"


def make_admin(settings: Settings, bootstrap: str | None = None, **overrides: Any) -> KafkaAdminClient:
    """An admin client for `bootstrap` (default: settings.kafka.bootstrap_servers) with the settings' security."""
    config: dict[str, Any] = dict(bootstrap_servers=bootstrap or settings.kafka.bootstrap_servers,
                                  **client_security(settings))
    config.update(overrides)
    return KafkaAdminClient(**config)


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    from pipelines.settings import get_settings

    return get_settings()


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A producer for throughput with no loss: acks=all, large batches, a short linger."""
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        **client_security(settings),
        acks="all",
        linger_ms=20,  # wait a little so batches fill: far fewer requests at high rates
        batch_size=512 * 1024,
        max_request_size=max(settings.kafka.max_message_bytes, 1_048_576) * 4,
        retries=5,
        max_in_flight_requests_per_connection=5,
        request_timeout_ms=30_000,
        max_block_ms=30_000,
        value_serializer=JsonValueSerializer(),
        key_serializer=KeySerializer(),
    )
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:
        raise BrokerError(f"cannot create a producer for {config['bootstrap_servers']}{describe_security(settings)}: "
                          f"{exc}") from None


def make_consumer(settings: Settings, topics: Iterable[str] | str | None, group_id: str | None, **overrides: Any) -> KafkaConsumer:
    """A consumer that commits only when told (after the sink write), reading from the start.

    `topics=None` gives an unsubscribed consumer (for `assign()`); `group_id=None` one without a group.
    The short session/heartbeat/poll timeouts keep a group join to seconds on tansu and small clusters.
    """
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        **client_security(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
        max_poll_interval_ms=settings.kafka.max_poll_interval_ms,
        max_partition_fetch_bytes=max(settings.kafka.max_message_bytes, 1_048_576) * 2,
        fetch_max_bytes=64 * 1024 * 1024,
        max_poll_records=5000,
    )
    config.update(overrides)
    try:
        consumer = KafkaConsumer(**config)
    except KafkaError as exc:
        raise BrokerError(f"cannot create a consumer for {config['bootstrap_servers']}{describe_security(settings)}: "
                          f"{exc}") from None
    if topics:
        consumer.subscribe([topics] if isinstance(topics, str) else list(topics))
    return consumer


class _LastClientError(logging.Handler):
    """Keeps the last error kafka-python logs while connecting: it reports a failed TLS handshake or SASL
    exchange only in its log and then times out bootstrapping, so the reason is taken from there."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage().split(">: ", 1)[-1]
        if msg.startswith("Bootstrap failed"):
            return  # the timeout itself; the cause was logged before it
        for prefix in ("Connection lost: ", "Connection failed: "):
            msg = msg.removeprefix(prefix)
        if msg in ("'v'", "KeyError: 'v'"):  # kafka-python's SCRAM client on a server-final error (`e=...`)
            msg = "SCRAM exchange refused by the broker (no server signature): unknown user or wrong password"
        self.message = " ".join(msg.split())[:240]


def wait_for_broker(bootstrap: str, timeout: float = 20.0, settings: Settings | None = None) -> None:
    """Block until the broker answers a metadata request, or raise BrokerError (one line: the address,
    the security in use and the client's last error, e.g. a failed handshake or authentication)."""
    settings = _settings(settings)
    security = client_security(settings)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    seen = _LastClientError()
    client_log = logging.getLogger("kafka")
    client_log.addHandler(seen)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=bootstrap,
                    request_timeout_ms=max(500, int(min(remaining, 5) * 1000)),
                    bootstrap_timeout_ms=max(500, int(min(remaining, 5) * 1000)),
                    **security,
                )
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except Exception as exc:  # any connection/metadata failure: retry until the deadline
                last = exc
                time.sleep(0.2)
    finally:
        client_log.removeHandler(seen)
    detail = f" ({type(last).__name__})" if last else ""
    reason = f"; last client error: {seen.message}" if seen.message and security else ""
    raise BrokerError(f"broker at {bootstrap}{describe_security(settings)} not reachable after {timeout:g}s{detail}{reason}")


def create_topics(bootstrap: str, topics: Iterable[str], partitions: int = 4, replication: int = 1, timeout: float = 20.0,
                  settings: Settings | None = None) -> list[str]:
    """Create the topics that do not exist yet (idempotent); returns the names created now."""
    names = list(dict.fromkeys(topics))
    settings = _settings(settings)
    try:
        admin = make_admin(settings, bootstrap, request_timeout_ms=int(timeout * 1000),
                           bootstrap_timeout_ms=int(timeout * 1000))
    except KafkaError as exc:
        raise BrokerError(f"broker at {bootstrap}{describe_security(settings)} not reachable: {exc}") from None
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        created = []
        for name in missing:  # one by one: a topic made concurrently by someone else is fine
            try:
                admin.create_topics([NewTopic(name, partitions, replication)], timeout_ms=int(timeout * 1000))
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    except KafkaError as exc:
        raise BrokerError(f"cannot create topics on {bootstrap}: {exc}") from None
    finally:
        admin.close()


def topic_partitions(bootstrap: str, topic: str, settings: Settings | None = None) -> int:
    """How many partitions `topic` has (0 when it does not exist)."""
    admin = make_admin(_settings(settings), bootstrap)
    try:
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    for entry in described:
        if (entry.get("name") or entry.get("topic")) == topic and not entry.get("error_code"):
            return len(entry.get("partitions", []))
    return 0


def count_records(settings: Settings, topic: str, idle_timeout_s: float = 5.0, expect: int | None = None) -> int:
    """Count the records on `topic` (all partitions, from the start) without joining a group."""
    from kafka import TopicPartition

    consumer = make_consumer(settings, None, None, consumer_timeout_ms=int(idle_timeout_s * 1000))
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return 0
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        total = 0
        deadline_idle = time.monotonic() + idle_timeout_s
        while time.monotonic() < deadline_idle:
            batch = consumer.poll(timeout_ms=500)
            n = sum(len(v) for v in batch.values())
            if n:
                total += n
                deadline_idle = time.monotonic() + idle_timeout_s
                if expect is not None and total >= expect:
                    # drain briefly to see whether more than expected is there
                    deadline_idle = time.monotonic() + 1.0
        return total
    finally:
        consumer.close()


def _utf8_or_none(raw: bytes, cut: bool) -> str | None:
    """The text of raw UTF-8 bytes; a cut may have split the last character (up to 3 bytes)."""
    for trim in range(4 if cut else 1):
        try:
            return raw[: len(raw) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


class DeadLetterPublisher:
    """Send records that broke their contract to the dead-letter topic, with the reason attached.

    Each dead letter is JSON: {reason, source_topic, partition, offset, key, payload, payload_encoding,
    failed_at}. The payload is kept as text when it is valid UTF-8, else base64, so nothing is lost.
    """

    def __init__(self, settings: Settings, producer: KafkaProducer | None = None, topic: str | None = None):
        self.topic = topic or settings.topics.dead_letter
        self._own = producer is None
        self.producer = producer or make_producer(settings)
        self.published = 0

    #: A dead letter always fits the topic: the raw payload above this many bytes is cut (its full
    #: length and sha256 are kept, so an operator can match it to the producer's copy).
    max_payload_bytes: int = 64 * 1024
    max_reason_chars: int = 1000
    max_key_chars: int = 256

    @classmethod
    def envelope(cls, reason: str, source_topic: str | None, partition: int | None, offset: int | None,
                 payload: bytes | str | None, key: bytes | str | None = None) -> dict[str, Any]:
        raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload
        size = None if raw is None else len(raw)
        digest = None if raw is None else hashlib.sha256(raw).hexdigest()
        truncated = raw is not None and len(raw) > cls.max_payload_bytes
        if truncated:
            raw = raw[: cls.max_payload_bytes]
        text, encoding = None, "text"
        if raw is not None:
            text = _utf8_or_none(raw, cut=truncated)
            if text is None:
                text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        if isinstance(key, bytes):
            key = key.decode("utf-8", errors="backslashreplace")
        return {
            "reason": (reason or "")[: cls.max_reason_chars],
            "source_topic": source_topic,
            "partition": partition,
            "offset": offset,
            "key": None if key is None else key[: cls.max_key_chars],
            "payload": text,
            "payload_encoding": encoding,
            "payload_size": size,
            "payload_sha256": digest,
            "payload_truncated": truncated,
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def publish(self, reason: str, payload: bytes | str | None, source_topic: str | None = None,
                partition: int | None = None, offset: int | None = None, key: bytes | str | None = None):
        """Queue one dead letter; returns the send future (call `flush()` before committing offsets)."""
        self.published += 1
        return self.producer.send(self.topic, self.envelope(reason, source_topic, partition, offset, payload, key), key=key)

    def publish_record(self, record: Any, reason: str):
        """Dead-letter a kafka-python ConsumerRecord as is."""
        return self.publish(reason, record.value, record.topic, record.partition, record.offset, record.key)

    def flush(self, timeout: float | None = 30.0) -> None:
        self.producer.flush(timeout=timeout)

    def close(self) -> None:
        self.flush()
        if self._own:
            self.producer.close()

    @staticmethod
    def decode_payload(letter: dict[str, Any]) -> bytes:
        """The original bytes of a dead letter's payload."""
        if letter.get("payload") is None:
            return b""
        if letter.get("payload_encoding") == "base64":
            return base64.b64decode(letter["payload"])
        return letter["payload"].encode()


class FastProducer:
    """A librdkafka (confluent-kafka) producer for high-rate paths, e.g. the simulator: about 3 µs of
    CPU per record against ~55 µs for kafka-python. Same guarantees as `make_producer` (acks=all,
    batching); values must already be bytes. `flush()` raises BrokerError if any record failed."""

    def __init__(self, settings: Settings, **overrides: Any):
        from confluent_kafka import Producer

        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "message.max.bytes": max(settings.kafka.max_message_bytes, 1_048_576) * 4,
            "log.connection.close": False,  # tansu closes idle connections; not worth a log line
            **librdkafka_security(settings),
        }
        config.update(overrides)
        self.bootstrap = config["bootstrap.servers"]
        self._producer = Producer(config)
        self.delivered = 0
        self.errors: list[str] = []

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err}")
        else:
            self.delivered += 1

    def send(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        left = self._producer.flush(timeout)
        if left:
            raise BrokerError(f"{left} records not delivered to {self.bootstrap} within {timeout:g}s")
        if self.errors:
            raise BrokerError(f"{len(self.errors)} records failed on {self.bootstrap}: {self.errors[0]}")

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
