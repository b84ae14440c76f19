"""The results store: fraud scores, alerts, report summaries, dead letters and job runs.

One module, SQLAlchemy Core, two backends from the same code:

* PostgreSQL (production and tests): ``postgresql+psycopg://user:pass@host:5432/db``. To keep a
  deployment (or a test session) in its own schema, put the search path in the URL:
  ``...?options=-csearch_path%3Dmy_schema``.
* SQLite (the embedded default): ``sqlite:///path/to/argus.db``; opened in WAL mode with a busy
  timeout, and every write transaction starts with ``BEGIN IMMEDIATE`` so that two processes can
  write the same file at once (one waits for the other instead of failing).

Every write is an idempotent upsert keyed on the natural key (``transaction_id`` for scores and
alerts, ``(report_id, model_version)`` for summaries, ``(source, partition, offset)`` for dead
letters that came from a topic), done with the dialect-native ``INSERT ... ON CONFLICT``. A stream
job can therefore replay a batch after a crash and the tables end up the same.

The stream jobs use it like this::

    store = Store.from_url(settings.store.url.get_secret_value())
    store.create_schema()                      # idempotent; upgrades an older schema
    run_id = store.start_run("fraud-stream")
    ...
    store.write_batch(scores=[score_row(s, tx) for s, tx in scored],
                      alerts=[s for s, _ in scored if s.decision == "decline"],
                      dead_letters=[DeadLetter(source=topic, partition=p, offset=o, payload=raw,
                                               reason=err.reason, stage="decode")])
    # (the report jobs pass summaries=[ReportSummary, ...] to the same call)
    consumer.commit()                          # only after the single atomic write returned
    ...
    store.finish_run(run_id, counts={"scored": n}, status="ok")

The schema is versioned by this module itself (no Alembic): ``MIGRATIONS`` lists (version,
description, function) and is only ever appended to (v1 tables, v2 ``fraud_scores.amount`` +
indexes, v3 ``fraud_scores.payload_hash``/``source_position`` for stream de-duplication, v4
``stream_positions``, v5 ``owner``, v6 ``content_hash``, v7 ``alert_dispositions``, v8 ``model_registry``
and ``model_registry_events``, v9 ``fraud_state_snapshots.dispositions_offset``, v10 the history indexes
``fraud_scores (customer_id | terminal_id, timestamp, transaction_id)``);
``schema_version`` holds one row per applied migration; ``create_schema()`` applies the missing ones in order inside one transaction
under a lock (a PostgreSQL advisory lock, or SQLite's write lock), so concurrent callers are safe.

Bulk upserts on PostgreSQL go through ``COPY`` into a temporary staging table followed by one
``INSERT ... SELECT ... ON CONFLICT`` (the fastest of the methods measured by
``benchmarks/store_write.py``: 2-3x executemany, ~50x multi-row VALUES; less CPU from 32 rows on); small
batches (< ``copy_threshold`` rows) and SQLite use an executemany of the same upsert. Keys are
de-duplicated within a batch (last wins) and written in key order, so two writers with
overlapping keys do not deadlock; a deadlock or serialization failure anyway is retried.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from pipelines.contracts import (
    ContractError,
    Disposition,
    FraudScore,
    KeyFact,
    Reason,
    ReportSummary,
    SummarySentence,
    Transaction,
    describe,
)
from pipelines.errors import StoreError, StoreRejected

# --- tables ---------------------------------------------------------------------------------------

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JsonType = JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
IdType = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)

metadata = MetaData()

fraud_scores = Table(
    "fraud_scores",
    metadata,
    Column("transaction_id", String(128), primary_key=True),
    Column("score", Float, nullable=False),
    Column("decision", String(16), nullable=False),
    Column("reasons", JsonType, nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("scored_at", Timestamp, nullable=False),
    # context of the scored transaction, for replay and analysis (nullable: REST scores may lack it)
    Column("customer_id", String(128)),
    Column("terminal_id", String(128)),
    Column("timestamp", Timestamp),
    Column("amount", Float),  # schema v2
    # schema v3: what the stream job scored (sha256 of the canonical transaction) and where it read
    # it ("topic:partition:offset"), so a replayed record and a duplicate with another payload differ
    Column("payload_hash", String(64)),
    Column("source_position", String(300)),
    Column("owner", String(64)),  # schema v5: the REST tenant that created it (NULL: a stream job)
)

alerts = Table(
    "alerts",
    metadata,
    Column("transaction_id", String(128), primary_key=True),
    Column("score", Float, nullable=False),
    Column("reasons", JsonType, nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

report_summaries = Table(
    "report_summaries",
    metadata,
    Column("report_id", String(256), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("domain", String(32), nullable=False),
    Column("summary", Text, nullable=False),
    Column("sentences", JsonType, nullable=False),
    Column("key_facts", JsonType, nullable=False),
    Column("faithfulness", JsonType, nullable=False),
    Column("mode", String(32), nullable=False),
    Column("latency_ms", Float),
    Column("created_at", Timestamp, nullable=False),
    Column("owner", String(64)),  # schema v5: the REST tenant that created it (NULL: a batch or stream job)
    Column("content_hash", String(64)),  # schema v6: sha256 of the summarised text (batch resume)
    PrimaryKeyConstraint("report_id", "model_version", name="report_summaries_pkey"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("source", String(512), nullable=False),  # a topic name or a file path
    Column("partition", Integer),
    Column("offset", BigInteger),  # Kafka offset, or a line/row number in a file
    Column("payload", LargeBinary),  # the raw record, capped at Store.max_payload_bytes
    Column("payload_size", BigInteger, nullable=False),  # the original size in bytes
    Column("payload_truncated", Boolean, nullable=False),  # True when only a prefix is kept
    Column("reason", Text, nullable=False),
    Column("stage", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    # NULLs are distinct in both backends: records without a position never collide.
    UniqueConstraint("source", "partition", "offset", name="dead_letters_position_key"),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp),
    Column("counts", JsonType, nullable=False),
    Column("status", String(32), nullable=False),
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Timestamp, nullable=False),
    Column("description", Text, nullable=False),
)

# schema v4: where each stream stands, written in the same transaction as the results of the batch
# that got it there (pipelines/stream_positions.py). `epoch` fences a consumer that lost a partition.
stream_positions = Table(
    "stream_positions",
    metadata,
    Column("stream", String(300), nullable=False),  # the consumer group
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger),  # next offset not yet reflected in the store (NULL: none written yet)
    Column("epoch", BigInteger, nullable=False),  # bumped by every claim; a write must carry the current one
    Column("owner", String(300)),  # the consumer that claimed it last (for operators)
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("stream", "topic", "partition", name="stream_positions_pkey"),
)

# schema v7: an investigator's verdict per alert (the review loop). A table of its own keyed by
# transaction_id, so the stream's `write_batch` (alerts insert-once) never touches it; disposing again
# overwrites the row (one row per alert, whatever the number of dispositions).
alert_dispositions = Table(
    "alert_dispositions",
    metadata,
    Column("transaction_id", String(128), primary_key=True),
    Column("disposition", String(16), nullable=False),  # fraud | legitimate | unsure
    Column("disposed_by", String(64), nullable=False),  # the API key's tenant or the CLI's --by
    Column("disposed_at", Timestamp, nullable=False),
    Column("note", Text),
)

# schema v8: the fraud model registry (pipelines/model_registry.py). One row per registered model
# version; at most one `champion` (the model the stream and the REST deployment serve). Every
# promotion, rollback, registration and failed load is one row of `model_registry_events` (who, when).
model_registry = Table(
    "model_registry",
    metadata,
    Column("version", String(128), primary_key=True),  # = the model_version the scores carry
    Column("parent", String(128)),  # the champion it was trained to replace (NULL: the first)
    Column("checkpoint", Text, nullable=False),  # the checkpoint directory
    Column("data_window", JsonType, nullable=False),  # {"train": "d0 .. d1", "evaluation": "...", "source": ...}
    Column("metrics", JsonType, nullable=False),  # {"challenger": {ap, auc, cp100}, "champion": {...}, ...}
    Column("status", String(16), nullable=False),  # champion | challenger | retired
    Column("created_at", Timestamp, nullable=False),
    Column("promoted_at", Timestamp),  # when it last became champion by a promotion
)

model_registry_events = Table(
    "model_registry_events",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("action", String(32), nullable=False),  # register | promote | rollback | load_failed
    Column("version", String(128), nullable=False),  # the version acted on (the new champion)
    Column("previous", String(128)),  # the champion before (promote / rollback)
    Column("actor", String(128), nullable=False),  # who: --by, the trainer, a consumer's name
    Column("at", Timestamp, nullable=False),
    Column("detail", Text),  # why (a failed load's one-line error, a retrain's decision)
)

TABLES: dict[str, Table] = {t.name: t for t in (fraud_scores, alerts, report_summaries, dead_letters, runs,
                                                 stream_positions, alert_dispositions, model_registry,
                                                 model_registry_events)}


# --- migrations -----------------------------------------------------------------------------------
# Each migration is (version, description, function(conn)). Never edit an applied one; append.

def _v1_initial(conn: Connection) -> None:
    # v1 created fraud_scores without `amount`; create_all with v2 metadata would already include
    # it, so create fraud_scores column by column as v1 had it and let v2 add `amount`.
    v1_scores = Table("fraud_scores", MetaData(), *[c._copy() for c in fraud_scores.columns
                                                    if c.name not in ("amount", "payload_hash", "source_position", "owner")])
    v1_scores.create(conn, checkfirst=True)
    v1_summaries = Table("report_summaries", MetaData(), *[c._copy() for c in report_summaries.columns
                                                            if c.name not in ("owner", "content_hash")],
                         PrimaryKeyConstraint("report_id", "model_version", name="report_summaries_pkey"))
    v1_summaries.create(conn, checkfirst=True)
    for table in (alerts, dead_letters, runs):
        table.create(conn, checkfirst=True)


def _v2_amount_and_indexes(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE fraud_scores ADD COLUMN amount FLOAT"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS fraud_scores_scored_at_idx ON fraud_scores (scored_at)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS report_summaries_report_id_idx ON report_summaries (report_id)"))


def _v3_score_provenance(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE fraud_scores ADD COLUMN payload_hash VARCHAR(64)"))
    conn.execute(text("ALTER TABLE fraud_scores ADD COLUMN source_position VARCHAR(300)"))


def _v4_stream_positions(conn: Connection) -> None:
    stream_positions.create(conn, checkfirst=True)


def _v5_result_owner(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE fraud_scores ADD COLUMN owner VARCHAR(64)"))
    conn.execute(text("ALTER TABLE report_summaries ADD COLUMN owner VARCHAR(64)"))


def _v6_summary_content_hash(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE report_summaries ADD COLUMN content_hash VARCHAR(64)"))


def _v7_alert_dispositions(conn: Connection) -> None:
    alert_dispositions.create(conn, checkfirst=True)
    # the open queue reads alerts by score (highest first), paged by (score, transaction_id)
    conn.execute(text("CREATE INDEX IF NOT EXISTS alerts_queue_idx ON alerts (score, transaction_id)"))


def _v8_model_registry(conn: Connection) -> None:
    model_registry.create(conn, checkfirst=True)
    model_registry_events.create(conn, checkfirst=True)
    conn.execute(text("CREATE INDEX IF NOT EXISTS model_registry_status_idx ON model_registry (status)"))


def _v9_snapshot_dispositions_offset(conn: Connection) -> None:
    # the table is pipelines/fraud_state_store.py's (created there when first used, already with the column)
    from sqlalchemy import inspect

    tables = inspect(conn)
    if tables.has_table("fraud_state_snapshots") and "dispositions_offset" not in {
            c["name"] for c in tables.get_columns("fraud_state_snapshots")}:
        conn.execute(text("ALTER TABLE fraud_state_snapshots ADD COLUMN dispositions_offset BIGINT"))


def _v10_history_indexes(conn: Connection) -> None:
    # the history beside an alert (`alert_history`): one customer's or one terminal's latest scores up
    # to a time, newest first (ties by transaction_id): an index range read backwards, not a scan
    for key in ("customer_id", "terminal_id"):
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS fraud_scores_{key.split('_')[0]}_history_idx "
                          f'ON fraud_scores ({key}, "timestamp", transaction_id)'))


MIGRATIONS: list[tuple[int, str, Any]] = [
    (1, "initial tables", _v1_initial),
    (2, "fraud_scores.amount; indexes on scored_at and report_id", _v2_amount_and_indexes),
    (3, "fraud_scores.payload_hash and source_position (stream de-duplication)", _v3_score_provenance),
    (4, "stream_positions (offsets + fencing epochs written with the results)", _v4_stream_positions),
    (5, "fraud_scores.owner and report_summaries.owner (REST tenant)", _v5_result_owner),
    (6, "report_summaries.content_hash (batch resume keyed on id and content)", _v6_summary_content_hash),
    (7, "alert_dispositions (investigators' verdicts) and the alerts queue index", _v7_alert_dispositions),
    (8, "model_registry and model_registry_events (champion/challenger, audited promotions)", _v8_model_registry),
    (9, "fraud_state_snapshots.dispositions_offset (the stream reads investigators' dispositions)",
     _v9_snapshot_dispositions_offset),
    (10, "indexes on fraud_scores (customer_id, timestamp) and (terminal_id, timestamp) for the alert history",
     _v10_history_indexes),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _migrate(conn: Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations up to `target` under a lock; returns the version in place."""
    if conn.dialect.name == "postgresql":  # serialise concurrent create_schema() calls
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('argus.create_schema'))"))
    schema_version.create(conn, checkfirst=True)
    current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
    for version, description, migrate in MIGRATIONS:
        if current < version <= target:
            migrate(conn)
            conn.execute(schema_version.insert().values(version=version, applied_at=_now(), description=description))
    return max(current, min(target, SCHEMA_VERSION))


# --- inputs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed, with why and where it failed.

    source: the topic or file it came from; partition/offset: its position there (None for a
    record without one, e.g. a REST request); payload: the raw bytes or text as received;
    reason: one line, e.g. ``"amount: Input should be greater than or equal to 0"``;
    stage: where it failed (``decode``, ``validate_input``, ``score``, ``validate_output``, ...).
    """

    source: str
    reason: str
    stage: str
    payload: bytes | str | None = None
    partition: int | None = None
    offset: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class BatchCounts:
    """What one `write_batch` wrote (after de-duplicating keys within the batch)."""

    scores: int = 0
    alerts: int = 0
    dead_letters: int = 0
    summaries: int = 0


def score_row(score: FraudScore, transaction: Transaction | None = None) -> dict[str, Any]:
    """A fraud_scores row from a score and (optionally) the transaction it scored."""
    row = _score_fields(score)
    if transaction is not None:
        row.update(customer_id=transaction.customer_id, terminal_id=transaction.terminal_id,
                   timestamp=_utc(transaction.timestamp), amount=transaction.amount)
    return row


ScoreInput = FraudScore | Mapping[str, Any]
SummaryInput = ReportSummary | Mapping[str, Any]

_SCORE_OPTIONAL = ("customer_id", "terminal_id", "timestamp", "amount", "payload_hash", "source_position")


def _utc(dt: datetime | None) -> datetime | None:
    """Aware UTC datetimes in, so SQLite (which stores no offset) and PostgreSQL agree."""
    if dt is None:
        return None
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt.replace("Z", "+00:00"))
    if dt.tzinfo is timezone.utc:  # the common case, kept cheap for bulk writes
        return dt
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _plain(items: Iterable[Any]) -> list[Any]:
    """JSON-ready list of dicts from pydantic models or mappings (a list of dicts passes as is)."""
    if isinstance(items, list) and all(type(i) is dict for i in items):
        return items
    return [i.model_dump(mode="json") if hasattr(i, "model_dump") else dict(i) for i in items]


def _score_fields(s: FraudScore) -> dict[str, Any]:
    return {"transaction_id": s.transaction_id, "score": float(s.score), "decision": s.decision.value,
            "reasons": _plain(s.reasons), "model_version": s.model_version, "scored_at": _utc(s.scored_at),
            **{k: None for k in _SCORE_OPTIONAL}}


_COLUMNS = {t.name: frozenset(t.c.keys()) | {"schema_version"} for t in metadata.tables.values()}
_SCORE_COLUMNS = tuple(fraud_scores.c.keys())


def _check_keys(row: Mapping[str, Any], table: Table, required: Sequence[str]) -> None:
    unknown = row.keys() - _COLUMNS[table.name]
    if unknown:
        raise StoreError(f"{table.name}: unknown column(s) {sorted(unknown)}")
    missing = [k for k in required if row.get(k) is None]
    if missing:
        raise StoreError(f"{table.name}: missing {missing} in row {dict(row)!r:.200}")


def _to_score_row(item: ScoreInput) -> dict[str, Any]:
    if isinstance(item, FraudScore):
        return _score_fields(item)
    # dict rows: the bulk path, so written for speed (one pass, no intermediate copies)
    if item.keys() - _COLUMNS["fraud_scores"]:
        _check_keys(item, fraud_scores, ())
    get = item.get
    tid, score, decision, version = get("transaction_id"), get("score"), get("decision"), get("model_version")
    if tid is None or score is None or decision is None or version is None:
        _check_keys(item, fraud_scores, ("transaction_id", "score", "decision", "model_version"))
    reasons = get("reasons") or []
    scored_at, ts = get("scored_at"), get("timestamp")
    return {"transaction_id": tid, "score": float(score),
            "decision": decision if type(decision) is str else getattr(decision, "value", str(decision)),
            "reasons": _plain(reasons), "model_version": version,
            "scored_at": scored_at if (scored_at is not None and scored_at.__class__ is datetime
                                       and scored_at.tzinfo is timezone.utc) else (_utc(scored_at) or _now()),
            "customer_id": get("customer_id"), "terminal_id": get("terminal_id"),
            "timestamp": ts if (ts is None or (ts.__class__ is datetime and ts.tzinfo is timezone.utc)) else _utc(ts),
            "amount": get("amount"), "payload_hash": get("payload_hash"), "source_position": get("source_position")}


def _to_alert_row(item: ScoreInput) -> dict[str, Any]:
    if isinstance(item, FraudScore):
        return {"transaction_id": item.transaction_id, "score": float(item.score), "reasons": _plain(item.reasons),
                "model_version": item.model_version, "created_at": _now()}
    extra = {"decision", "scored_at", *_SCORE_OPTIONAL}  # a score row is accepted as an alert
    _check_keys({k: v for k, v in item.items() if k not in extra}, alerts, ("transaction_id", "score", "model_version"))
    return {"transaction_id": item["transaction_id"], "score": float(item["score"]),
            "reasons": _plain(item.get("reasons") or []), "model_version": item["model_version"],
            "created_at": _utc(item.get("created_at")) or _now()}


def _to_summary_row(item: SummaryInput) -> dict[str, Any]:
    if not isinstance(item, ReportSummary):
        _check_keys(item, report_summaries, ("report_id", "model_version", "domain", "summary"))
        item = ReportSummary.model_validate({k: v for k, v in item.items()})
    return {"report_id": item.report_id, "model_version": item.model_version, "domain": item.domain.value,
            "summary": item.summary, "sentences": _plain(item.sentences), "key_facts": _plain(item.key_facts),
            "faithfulness": dict(item.faithfulness), "mode": item.mode, "latency_ms": item.latency_ms,
            "created_at": _utc(item.created_at), "content_hash": item.content_hash}


def _to_dead_letter_row(item: DeadLetter | Mapping[str, Any], cap: int) -> dict[str, Any]:
    if isinstance(item, Mapping):
        item = DeadLetter(**item)
    raw = item.payload
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else (bytes(raw) if raw is not None else None)
    size = len(data) if data is not None else 0
    truncated = data is not None and size > cap
    reason = item.reason if not truncated else f"{item.reason} [payload truncated to {cap} of {size} bytes]"
    reason = reason.replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL; the payload (bytes) keeps it
    return {"source": item.source, "partition": item.partition, "offset": item.offset,
            "payload": data[:cap] if truncated else data, "payload_size": size, "payload_truncated": truncated,
            "reason": reason, "stage": item.stage, "created_at": _utc(item.created_at) or _now()}


def _dedupe(rows: list[dict[str, Any]], key: Sequence[str]) -> list[dict[str, Any]]:
    """Last row per key wins, sorted by key: one ON CONFLICT statement may not touch a row twice,
    and a stable key order keeps two concurrent upserts from deadlocking on each other."""
    if len(key) == 1:
        (k0,) = key
        by_one = {r[k0]: r for r in rows}
        return [by_one[k] for k in sorted(by_one)]
    by_key = {tuple(r[k] for k in key): r for r in rows}
    return [by_key[k] for k in sorted(by_key)]


# --- the store ------------------------------------------------------------------------------------

T = TypeVar("T")
UpsertMethod = Literal["auto", "copy", "executemany", "values"]


class Store:
    """Read and write Argus results. Build with `Store.from_url`; thread-safe (pooled engine);
    not fork-safe: each process builds its own Store."""

    #: Dead-letter payloads above this many bytes keep only a prefix (flagged `payload_truncated`).
    max_payload_bytes: int = 256 * 1024
    #: At or above this many rows a PostgreSQL upsert goes through COPY into a staging table (CPU of a
    #: fraud_scores upsert, executemany -> COPY: 30 rows 1.17 -> 0.79 ms, 130 rows 2.79 -> 1.52 ms; the
    #: same wall time within noise)
    copy_threshold: int = 32
    #: Rows per statement for the executemany / multi-VALUES paths.
    chunk_size: int = 5000

    def __init__(self, engine: Engine, *, method: UpsertMethod = "auto"):
        self.engine = engine
        self.dialect = engine.dialect.name
        self.method = method
        self._stage_seq = 0

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, *, method: UpsertMethod = "auto", check: bool = True, **engine_kw: Any) -> "Store":
        """Open a store at `url` (postgresql+psycopg://... or sqlite:///...).

        Raises StoreError (one line, password masked) if the URL is invalid or, with `check`, the
        database cannot be reached.
        """
        if hasattr(url, "get_secret_value"):  # settings.store.url is a SecretStr
            url = url.get_secret_value()
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise StoreError(f"invalid store URL: {exc}") from None
        masked = parsed.render_as_string(hide_password=True)
        backend = parsed.get_backend_name()
        if backend not in ("postgresql", "sqlite"):
            raise StoreError(f"unsupported store URL {masked}: use postgresql+psycopg:// or sqlite:///")
        if backend == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            engine = create_engine(parsed, pool_pre_ping=True, **engine_kw)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"cannot open store {masked}: {exc}") from None
        if backend == "sqlite":
            _configure_sqlite(engine)
        store = cls(engine, method=method)
        if check:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except SQLAlchemyError as exc:
                engine.dispose()
                raise StoreError(f"cannot connect to store {masked}: {_one_line(exc, parsed.password)}") from None
        return store

    @classmethod
    def from_settings(cls, settings: Any = None, **kw: Any) -> "Store":
        """Open the store configured as `store.url` (ARGUS_STORE__URL), default settings if None."""
        if settings is None:
            from pipelines.settings import get_settings

            settings = get_settings()
        return cls.from_url(settings.store.url.get_secret_value(), **kw)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The URL with the password masked (safe to print)."""
        return self.engine.url.render_as_string(hide_password=True)

    # -- schema ------------------------------------------------------------------------------------

    def create_schema(self) -> int:
        """Create the tables, or upgrade an older schema to `SCHEMA_VERSION`; idempotent and safe
        to call from several processes at once. Returns the schema version now in place."""
        return self._transact(_migrate)

    def schema_version(self) -> int:
        """The applied schema version (0 when the schema was never created)."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
        except SQLAlchemyError:
            return 0

    # -- writes ------------------------------------------------------------------------------------

    def upsert_scores(self, items: Iterable[ScoreInput]) -> int:
        """Insert or update fraud scores keyed on transaction_id (last write wins). Items are
        `FraudScore`s or dicts of fraud_scores columns (see `score_row`). Returns rows written."""
        rows = _dedupe([_to_score_row(i) for i in items], ("transaction_id",))
        return self._transact(lambda conn: self._upsert(conn, fraud_scores, rows, ("transaction_id",), update=True))

    def insert_alerts(self, items: Iterable[ScoreInput]) -> int:
        """Record alerts; a transaction already alerted is left as it was (idempotent). Items are
        `FraudScore`s or dicts. Returns the rows offered (after de-duplication)."""
        rows = _dedupe([_to_alert_row(i) for i in items], ("transaction_id",))
        return self._transact(lambda conn: self._upsert(conn, alerts, rows, ("transaction_id",), update=False))

    def upsert_summaries(self, items: Iterable[SummaryInput]) -> int:
        """Insert or update report summaries keyed on (report_id, model_version)."""
        rows = _dedupe([_to_summary_row(i) for i in items], ("report_id", "model_version"))
        return self._transact(lambda conn: self._upsert(conn, report_summaries, rows, ("report_id", "model_version"),
                                                        update=True))

    def add_dead_letters(self, items: Iterable[DeadLetter | Mapping[str, Any]]) -> int:
        """Record failed records. One with a (source, partition, offset) already recorded is not
        recorded twice (a replay after a crash); one without a position is always recorded."""
        rows = [_to_dead_letter_row(i, self.max_payload_bytes) for i in items]
        return self._transact(lambda conn: self._add_dead_letters(conn, rows))

    def write_batch(self, scores: Iterable[ScoreInput] = (), alerts: Iterable[ScoreInput] = (),
                    dead_letters: Iterable[DeadLetter | Mapping[str, Any]] = (),
                    summaries: Iterable[SummaryInput] = (),
                    also: Sequence[Callable[[Connection], Any]] = ()) -> BatchCounts:
        """Write scores, alerts, report summaries and dead letters in ONE transaction: all or nothing.

        `also` runs first inside the same transaction: a stream passes the check-and-advance of its
        partition positions (pipelines/stream_positions.py) and its state snapshots, so results,
        positions and state move together; if any of them raises, nothing was written."""
        summary_rows = _dedupe([_to_summary_row(i) for i in summaries], ("report_id", "model_version"))
        score_rows = _dedupe([_to_score_row(i) for i in scores], ("transaction_id",))
        alert_rows = _dedupe([_to_alert_row(i) for i in alerts], ("transaction_id",))  # `alerts` is the argument here
        alerts_table = TABLES["alerts"]
        dl_rows = [_to_dead_letter_row(i, self.max_payload_bytes) for i in dead_letters]

        def work(conn: Connection) -> BatchCounts:
            for step in also:
                step(conn)
            return BatchCounts(
                scores=self._upsert(conn, fraud_scores, score_rows, ("transaction_id",), update=True),
                alerts=self._upsert(conn, alerts_table, alert_rows, ("transaction_id",), update=False),
                dead_letters=self._add_dead_letters(conn, dl_rows),
                summaries=self._upsert(conn, report_summaries, summary_rows, ("report_id", "model_version"),
                                       update=True))

        return self._transact(work)

    def write_owned(self, owner: str, scores: Iterable[tuple[FraudScore, Transaction | None]] = (),
                    summaries: Iterable[ReportSummary] = ()) -> BatchCounts:
        """Results a REST tenant created, recorded with `owner`, in one transaction. A new id is
        inserted; an existing one is updated only when `owner` created it too (ids are global: a
        tenant can neither overwrite nor take over another's, or a stream's, result)."""
        score_rows = _dedupe([{**score_row(s, tx), "owner": owner} for s, tx in scores], ("transaction_id",))
        summary_rows = _dedupe([{**_to_summary_row(s), "owner": owner} for s in summaries], ("report_id", "model_version"))

        def upsert(conn: Connection, table: Table, rows: list[dict[str, Any]], key: tuple[str, ...]) -> int:
            if not rows:
                return 0
            ins = self._insert(table)
            stmt = ins.on_conflict_do_update(index_elements=list(key),
                                             set_={c: ins.excluded[c] for c in rows[0] if c not in key},
                                             where=table.c.owner == ins.excluded.owner)
            conn.execute(stmt, rows)
            return len(rows)

        return self._transact(lambda conn: BatchCounts(
            scores=upsert(conn, fraud_scores, score_rows, ("transaction_id",)),
            summaries=upsert(conn, report_summaries, summary_rows, ("report_id", "model_version"))))

    def refuses(self, scores: Iterable[ScoreInput] = (), dead_letters: Iterable[DeadLetter | Mapping[str, Any]] = ()) -> bool:
        """True if the database refuses these rows themselves (StoreRejected); tried in a transaction
        that is always rolled back. For isolating the row that makes a batch fail."""
        score_rows = _dedupe([_to_score_row(i) for i in scores], ("transaction_id",))
        dl_rows = [_to_dead_letter_row(i, self.max_payload_bytes) for i in dead_letters]

        class _Undo(Exception):
            pass

        def work(conn: Connection) -> None:
            self._upsert(conn, fraud_scores, score_rows, ("transaction_id",), update=True, method="executemany")
            self._add_dead_letters(conn, dl_rows)
            raise _Undo()

        try:
            self._transact(work)
        except StoreRejected:
            return True
        except _Undo:
            return False
        return False

    def start_run(self, kind: str, run_id: str | None = None) -> str:
        """Record the start of a job run (e.g. ``fraud-stream``, ``summarise-batch``); returns its id."""
        run_id = run_id or uuid.uuid4().hex
        row = {"run_id": run_id, "kind": kind, "started_at": _now(), "finished_at": None, "counts": {},
               "status": "running"}
        self._transact(lambda conn: self._upsert(conn, runs, [row], ("run_id",), update=True))
        return run_id

    def finish_run(self, run_id: str, counts: Mapping[str, Any] | None = None, status: str = "ok") -> None:
        """Record the end of a run with its counts and status (``ok``, ``failed``, ``interrupted``)."""
        stmt = runs.update().where(runs.c.run_id == run_id).values(finished_at=_now(), counts=dict(counts or {}),
                                                                   status=status)
        if self._transact(lambda conn: conn.execute(stmt).rowcount) == 0:
            raise StoreError(f"unknown run {run_id!r}")

    # -- reads -------------------------------------------------------------------------------------

    def summaries_done(self, report_ids: Iterable[str], model_version: str) -> dict[str, str | None]:
        """report_id -> content_hash of the `report_ids` already summarised by `model_version` (to resume
        a batch: a report whose content changed since is done again; None for rows from before v6)."""
        ids = list(dict.fromkeys(report_ids))
        done: dict[str, str | None] = {}
        c = report_summaries.c
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
                chunk = ids[start:start + 900]
                done.update((rid, h) for rid, h in conn.execute(select(c.report_id, c.content_hash).where(
                    c.model_version == model_version, c.report_id.in_(chunk))))
        return done

    def get_result(self, result_id: str, model_version: str | None = None,
                   tenant: str | None = None) -> FraudScore | ReportSummary | None:
        """A fraud score by transaction_id, else a report summary by report_id (the given
        model_version, or the most recent one), else None. With `tenant`, only a result that tenant
        created (`owner`) is found: another tenant's, or a stream's (no owner), is None like a missing one."""
        with self.engine.connect() as conn:
            query = select(fraud_scores).where(fraud_scores.c.transaction_id == result_id)
            if tenant is not None:
                query = query.where(fraud_scores.c.owner == tenant)
            row = conn.execute(query).mappings().first()
            if row is not None and model_version in (None, row["model_version"]):
                return FraudScore(transaction_id=row["transaction_id"], score=row["score"], decision=row["decision"],
                                  reasons=[Reason(**r) for r in row["reasons"]], model_version=row["model_version"],
                                  scored_at=_utc(row["scored_at"]))
            query = select(report_summaries).where(report_summaries.c.report_id == result_id)
            if tenant is not None:
                query = query.where(report_summaries.c.owner == tenant)
            if model_version is not None:
                query = query.where(report_summaries.c.model_version == model_version)
            row = conn.execute(query.order_by(report_summaries.c.created_at.desc()).limit(1)).mappings().first()
            if row is None:
                return None
            return ReportSummary(report_id=row["report_id"], domain=row["domain"], summary=row["summary"],
                                 sentences=[SummarySentence(**s) for s in row["sentences"]],
                                 key_facts=[KeyFact(**k) for k in row["key_facts"]], model_version=row["model_version"],
                                 mode=row["mode"], faithfulness=row["faithfulness"], latency_ms=row["latency_ms"],
                                 created_at=_utc(row["created_at"]))

    def score_provenance(self, transaction_ids: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
        """transaction_id -> (payload_hash, source_position) for the ids already scored (stream de-duplication)."""
        ids = list(dict.fromkeys(transaction_ids))
        found: dict[str, tuple[str | None, str | None]] = {}
        c = fraud_scores.c
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":  # one array parameter: ~0.7 ms of CPU for 1,000 ids, IN (...) ~4 ms
                for tid, h, pos in conn.exec_driver_sql(
                        f"SELECT transaction_id, payload_hash, source_position FROM {fraud_scores.name} "
                        "WHERE transaction_id = ANY(%(ids)s)", {"ids": ids}):
                    found[tid] = (h, pos)
                return found
            for start in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
                chunk = ids[start:start + 900]
                for tid, h, pos in conn.execute(select(c.transaction_id, c.payload_hash, c.source_position)
                                                .where(c.transaction_id.in_(chunk))):
                    found[tid] = (h, pos)
        return found

    def score_locations(self, transaction_ids: Iterable[str]) -> dict[str, tuple[str | None, str | None, datetime | None]]:
        """transaction_id -> (customer_id, terminal_id, timestamp) of the ids already scored: where a late
        label goes once its transaction has left the stream state's in-memory index."""
        ids = list(dict.fromkeys(transaction_ids))
        found: dict[str, tuple[str | None, str | None, datetime | None]] = {}
        c = fraud_scores.c
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
                chunk = ids[start:start + 900]
                for tid, cust, term, ts in conn.execute(select(c.transaction_id, c.customer_id, c.terminal_id,
                                                               c.timestamp).where(c.transaction_id.in_(chunk))):
                    found[tid] = (cust, term, _utc(ts))
        return found

    # -- the review loop (alert dispositions) --------------------------------------------------------

    def _visible_alerts(self, tenant: str | None) -> Any:
        """alerts joined with their score row (customer, terminal, owner); with `tenant`, only the
        alerts of that tenant's scores (a stream's alerts have no owner: admin only)."""
        a, s = alerts.c, fraud_scores.c
        query = (select(a.transaction_id, a.score, a.reasons, a.model_version, a.created_at, s.customer_id,
                        s.terminal_id, s.timestamp, s.amount)
                 .select_from(alerts.outerjoin(fraud_scores, s.transaction_id == a.transaction_id)))
        if tenant is not None:
            query = query.where(s.owner == tenant)
        return query

    def open_alerts(self, limit: int = 50, after: str | None = None,
                    tenant: str | None = None) -> list[dict[str, Any]] | None:
        """The open review queue: alerts without a disposition, highest score first (ties by
        transaction_id), each with its reasons, model version, customer and terminal ids (plus the
        transaction's timestamp and amount when known). Paged by keyset: `after` is the
        transaction_id of the last alert of the previous page (disposed since or not). With `tenant`,
        only that tenant's alerts. None when `after` is not an alert the caller may see."""
        a, d = alerts.c, alert_dispositions.c
        query = self._visible_alerts(tenant).where(~select(d.transaction_id).where(
            d.transaction_id == a.transaction_id).exists())
        with self.engine.connect() as conn:
            if after is not None:
                cursor = conn.execute(self._visible_alerts(tenant).where(a.transaction_id == after)).mappings().first()
                if cursor is None:
                    return None
                score = cursor["score"]
                query = query.where((a.score < score) | ((a.score == score) & (a.transaction_id > after)))
            rows = conn.execute(query.order_by(a.score.desc(), a.transaction_id.asc())
                                .limit(max(1, int(limit)))).mappings()
            return [{**r, "created_at": _utc(r["created_at"]), "timestamp": _utc(r["timestamp"])} for r in rows]

    def alert_history(self, transaction_id: str, limit: int = 20,
                      tenant: str | None = None) -> dict[str, list[dict[str, Any]]] | None:
        """What an investigator reads beside an alert: the most recent scores (newest first, at most
        `limit` each) of the alert's customer and of its terminal, up to the alert's own transaction
        time and without the alert itself, each with its disposition (and note) when it was an alert
        that was disposed. With `tenant`, only that tenant's alert and scores. None when the alert is not
        one the caller may see. Each side is a backward range read of an index (schema v10:
        `fraud_scores_customer_history_idx`, `fraud_scores_terminal_history_idx`), not a scan; a
        tenant's filter is applied to the rows read."""
        s, d = fraud_scores.c, alert_dispositions.c
        limit = max(1, min(int(limit), 200))
        with self.engine.connect() as conn:
            found = conn.execute(self._visible_alerts(tenant).where(alerts.c.transaction_id == transaction_id)
                                 ).mappings().first()
            if found is None:
                return None
            out: dict[str, list[dict[str, Any]]] = {"customer": [], "terminal": []}
            for side, column, value in (("customer", s.customer_id, found["customer_id"]),
                                        ("terminal", s.terminal_id, found["terminal_id"])):
                if value is None:
                    continue
                query = (select(s.transaction_id, s.timestamp, s.amount, s.score, s.decision, s.model_version,
                                s.customer_id, s.terminal_id, d.disposition, d.note)
                         .select_from(fraud_scores.outerjoin(alert_dispositions, d.transaction_id == s.transaction_id))
                         .where(column == value, s.transaction_id != transaction_id))
                if tenant is not None:
                    query = query.where(s.owner == tenant)
                if found["timestamp"] is not None:
                    query = query.where(s.timestamp <= found["timestamp"])
                rows = conn.execute(query.order_by(s.timestamp.desc(), s.transaction_id.desc()).limit(limit)).mappings()
                out[side] = [{**r, "timestamp": _utc(r["timestamp"])} for r in rows]
            return out

    def dispose(self, transaction_id: str, disposition: str, disposed_by: str, note: str | None = None,
                tenant: str | None = None, disposed_at: datetime | None = None) -> Disposition | None:
        """Record an investigator's verdict on an alert (overwriting an earlier one: one row per
        alert, so the same disposition twice is one row). Returns the stored `Disposition` (with the
        alert's customer and terminal, for the dispositions topic), or None when there is no such
        alert (with `tenant`: none of that tenant's). A bad disposition, reviewer or note raises
        ContractError (one line)."""
        try:
            record = Disposition(transaction_id=transaction_id, disposition=disposition, disposed_by=disposed_by,
                                 disposed_at=disposed_at or _now(), note=note or None)
        except ValidationError as exc:
            raise ContractError(describe(exc)) from None

        def work(conn: Connection) -> Disposition | None:
            found = conn.execute(self._visible_alerts(tenant).where(alerts.c.transaction_id == transaction_id)
                                 ).mappings().first()
            if found is None:
                return None
            row = {"transaction_id": transaction_id, "disposition": record.disposition.value,
                   "disposed_by": record.disposed_by, "disposed_at": record.disposed_at, "note": record.note}
            self._upsert(conn, alert_dispositions, [row], ("transaction_id",), update=True, method="executemany")
            return record.model_copy(update={"customer_id": found["customer_id"], "terminal_id": found["terminal_id"]})

        return self._transact(work)

    def get_disposition(self, transaction_id: str) -> dict[str, Any] | None:
        """The stored disposition row of an alert (None: not disposed)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(alert_dispositions).where(
                alert_dispositions.c.transaction_id == transaction_id)).mappings().first()
            return None if row is None else {**row, "disposed_at": _utc(row["disposed_at"])}

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
            return dict(row) if row is not None else None

    def dead_letter_rows(self, limit: int = 100, source: str | None = None) -> list[dict[str, Any]]:
        """The most recent dead letters (for inspection and tests)."""
        query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if source is not None:
            query = query.where(dead_letters.c.source == source)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def count(self, table: str) -> int:
        """Rows in one of `TABLES` (fraud_scores, alerts, report_summaries, dead_letters, runs,
        stream_positions, alert_dispositions, model_registry, model_registry_events)."""
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(TABLES[table])).scalar_one()
        except DBAPIError as exc:
            raise StoreError(f"cannot count {table} at {self.url}: {_one_line(exc)} (run `argus store init`?)") from None

    def stats(self) -> dict[str, int]:
        """Row counts of every table."""
        return {name: self.count(name) for name in TABLES}

    # -- internals ---------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction. On SQLite it takes the write lock up front (BEGIN IMMEDIATE), so a
        concurrent writer waits on the busy timeout instead of failing mid-transaction."""
        with self.engine.connect().execution_options(argus_write=True) as conn:
            with conn.begin():
                yield conn

    def _transact(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction, retrying the whole transaction on a PostgreSQL
        deadlock / serialization failure or a SQLite lock timeout (all rolled back first). Any other
        database error rolls the transaction back and raises StoreError (the original chained)."""
        for attempt in range(6):
            try:
                with self._write() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if attempt == 5 or not _is_retryable(exc):
                    kind = StoreRejected if _is_rejection(exc) else StoreError
                    raise kind(f"store write failed at {self.url}: {_one_line(exc)}") from exc
                time.sleep(0.02 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _add_dead_letters(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        positioned = _dedupe([r for r in rows if r["partition"] is not None and r["offset"] is not None],
                             ("source", "partition", "offset"))
        loose = [r for r in rows if r["partition"] is None or r["offset"] is None]
        n = self._upsert(conn, dead_letters, positioned, ("source", "partition", "offset"), update=False, method="executemany")
        if loose:
            conn.execute(dead_letters.insert(), loose)
        return n + len(loose)

    def _upsert(self, conn: Connection, table: Table, rows: list[dict[str, Any]], key: Sequence[str], *,
                update: bool, method: UpsertMethod | None = None) -> int:
        if not rows:
            return 0
        method = method or self.method
        if method == "auto":
            method = "copy" if self.dialect == "postgresql" and len(rows) >= self.copy_threshold else "executemany"
        if method == "copy" and self.dialect != "postgresql":
            method = "executemany"
        if method == "copy":
            self._copy_upsert(conn, table, rows, key, update)
            return len(rows)
        columns = list(rows[0].keys())
        for start in range(0, len(rows), self.chunk_size):
            chunk = rows[start:start + self.chunk_size]
            if method == "values":  # one multi-row VALUES statement per chunk
                conn.execute(_on_conflict(self._insert(table).values(chunk), key, columns, update))
            else:  # executemany (psycopg 3 pipelines it)
                conn.execute(_on_conflict(self._insert(table), key, columns, update), chunk)
        return len(rows)

    def _insert(self, table: Table) -> Any:
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    def _copy_upsert(self, conn: Connection, table: Table, rows: list[dict[str, Any]], key: Sequence[str],
                     update: bool) -> None:
        """COPY rows into a temporary table dropped at commit, then one INSERT ... SELECT ... ON
        CONFLICT into the real table, in key order."""
        columns = list(rows[0].keys())
        json_cols = {c.name for c in table.columns if c.type._type_affinity is JSON}  # noqa: SLF001
        self._stage_seq += 1
        stage = f"argus_stage_{table.name}_{self._stage_seq}"
        quoted = ", ".join(_q(c) for c in columns)
        conn.exec_driver_sql(f"CREATE TEMP TABLE {stage} (LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DROP")
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            json_at = [i for i, c in enumerate(columns) if c in json_cols]
            values_of, dumps = itemgetter(*columns), json.dumps
            with cur.copy(f"COPY {stage} ({quoted}) FROM STDIN") as copy:
                write_row = copy.write_row
                for row in rows:
                    values = list(values_of(row))
                    for i in json_at:
                        try:  # the default encoder is the fast path; str() only for odd values
                            values[i] = dumps(values[i])
                        except TypeError:
                            values[i] = dumps(values[i], default=str)
                    write_row(values)
        keys = ", ".join(_q(k) for k in key)
        if update:
            sets = ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c in columns if c not in key)
            action = f"DO UPDATE SET {sets}"
        else:
            action = "DO NOTHING"
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({quoted}) SELECT {quoted} FROM {stage} ORDER BY {keys} "
                             f"ON CONFLICT ({keys}) {action}")


def _q(name: str) -> str:
    return f'"{name}"'


def _on_conflict(ins: Any, key: Sequence[str], columns: Sequence[str], update: bool) -> Any:
    if not update:
        return ins.on_conflict_do_nothing(index_elements=list(key))
    return ins.on_conflict_do_update(index_elements=list(key),
                                     set_={c: ins.excluded[c] for c in columns if c not in key})


def _is_rejection(exc: DBAPIError) -> bool:
    """The data was refused (SQLSTATE class 22 data exception, 23 integrity; SQLite's equivalents),
    not the connection: the same rows would fail again."""
    code = getattr(exc.orig, "sqlstate", None) or ""
    if code[:2] in ("22", "23"):
        return True
    import sqlite3

    return isinstance(exc.orig, (sqlite3.IntegrityError, sqlite3.DataError)) or "NUL" in str(exc.orig)


def _is_retryable(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None)
    return code in ("40P01", "40001") or "database is locked" in str(exc.orig)


def _one_line(exc: BaseException, password: str | None = None) -> str:
    orig = getattr(exc, "orig", None) or exc
    msg = " ".join(str(orig).split()) or type(orig).__name__
    if password:
        msg = msg.replace(password, "***")
    return msg[:300]


def _configure_sqlite(engine: Engine) -> None:
    """WAL + busy timeout + explicit BEGIN: two processes can write one SQLite file concurrently."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" hook emit BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # writes take the write lock at BEGIN, so the busy timeout applies (a deferred transaction
        # upgrading from read to write would fail at once with SQLITE_BUSY instead of waiting)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("argus_write") else "BEGIN")
