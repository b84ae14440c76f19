"""How the fraud stream's state survives a restart or a rebalance: per-partition snapshots in the store.

The state is PARTITIONED LIKE THE TOPIC: one `FraudState` per transactions partition. Producers
key transactions (and labels) by customer_id, so a customer's whole history is in one partition's
state. A terminal is seen from every partition; each partition's state holds only the terminal
events that arrived through that partition (an approximation: terminal features see ~1/P of a
terminal's traffic, and a terminal's known frauds only from that partition's labels). In exchange,
a partition's scores do not depend on which consumer owns it or on how many consumers there are,
so a restart or a rebalance cannot change a score.

Durability: a snapshot is written in the SAME store transaction as a batch's scores and the
partition's stored position (`save_step` inside `Store.write_batch(also=...)`, see
pipelines/stream_positions.py), so it can never be ahead of the stored position, and a fenced
consumer (one that lost the partition) cannot write one. A consumer that is assigned a partition
loads its snapshot, seeks to the snapshot's offsets and replays the records between the snapshot
and the stored position into the state only (no scoring, no writes), then continues: the replay
rebuilds exactly the state the old owner had.

The co-partitioned side topics (labels, investigators' dispositions) have their own offsets in the
snapshot: the next record of each not yet in the state (None: from the start of the topic). A
snapshot written before the dispositions offset existed (store schema < 9) reads as None, so the
dispositions are read again from the start: applying one twice is a no-op in the state.
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from datetime import datetime, timezone

from sqlalchemy import BigInteger, Column, DateTime, Integer, LargeBinary, MetaData, PrimaryKeyConstraint, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from pipelines.store import Store

metadata = MetaData()

fraud_state_snapshots = Table(
    "fraud_state_snapshots",
    metadata,
    Column("stream", String(300), nullable=False),  # "<consumer group>/<transactions topic>"
    Column("partition", Integer, nullable=False),
    Column("tx_offset", BigInteger, nullable=False),  # next transactions offset not yet in the state
    Column("labels_offset", BigInteger),  # next labels offset not yet in the state (None: from the start)
    Column("dispositions_offset", BigInteger),  # next dispositions offset not yet in the state (schema v9)
    Column("state", LargeBinary, nullable=False),  # FraudState.snapshot()
    Column("model_version", String(128)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("stream", "partition", name="fraud_state_snapshots_pkey"),
)


@dataclass(frozen=True)
class PartitionSnapshot:
    partition: int
    tx_offset: int
    labels_offset: int | None
    state: bytes
    model_version: str | None
    dispositions_offset: int | None = None


class PartitionStateStore:
    """Save and load the latest state snapshot of each partition of one stream (group + topic)."""

    def __init__(self, store: Store, stream: str):
        self.store = store
        self.stream = stream
        for attempt in range(3):
            try:
                metadata.create_all(store.engine, checkfirst=True)
                break
            except DBAPIError:  # consumers starting together race to CREATE TABLE; the loser finds it next time
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def save_step(self, partition: int, tx_offset: int, labels_offset: int | None, dispositions_offset: int | None,
                  state: bytes, model_version: str | None = None):
        """The upsert of one snapshot, as a step for `Store.write_batch(also=[...])`."""
        row = {"stream": self.stream, "partition": partition, "tx_offset": tx_offset, "labels_offset": labels_offset,
               "dispositions_offset": dispositions_offset, "state": state, "model_version": model_version,
               "created_at": datetime.now(timezone.utc)}
        ins = (postgresql.insert if self.store.dialect == "postgresql" else sqlite.insert)(fraud_state_snapshots)
        stmt = ins.values(row).on_conflict_do_update(index_elements=["stream", "partition"],
                                                     set_={k: ins.excluded[k] for k in row if k not in ("stream", "partition")})
        return lambda conn: conn.execute(stmt)

    def save(self, partition: int, tx_offset: int, labels_offset: int | None, state: bytes,
             model_version: str | None = None, dispositions_offset: int | None = None) -> None:
        """Save one snapshot in a transaction of its own (tools and tests; the stream uses `save_step`)."""
        self.store._transact(self.save_step(partition, tx_offset, labels_offset, dispositions_offset, state,  # noqa: SLF001
                                            model_version))

    def load(self, partition: int) -> PartitionSnapshot | None:
        t = fraud_state_snapshots.c
        with self.store.engine.connect() as conn:
            row = conn.execute(select(t.tx_offset, t.labels_offset, t.state, t.model_version, t.dispositions_offset)
                               .where(t.stream == self.stream, t.partition == partition)).first()
        if row is None:
            return None
        opt = lambda v: None if v is None else int(v)  # noqa: E731
        return PartitionSnapshot(partition, int(row[0]), opt(row[1]), bytes(row[2]), row[3], opt(row[4]))

    def clear(self) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(fraud_state_snapshots.delete().where(fraud_state_snapshots.c.stream == self.stream))
