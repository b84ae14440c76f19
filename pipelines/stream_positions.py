"""Where a stream stands, kept in the store next to its results: exactly-once by construction.

For every (consumer group, topic, partition) the table `stream_positions` holds the next offset
whose effects are NOT yet in the store, and an `epoch`. The rules:

* **Claim on assignment.** A consumer that is given a partition claims it: one transaction bumps
  the epoch and returns it with the stored next offset. The consumer seeks there (or to its state
  snapshot, which is never ahead) and never trusts the Kafka commit over the store.
* **Advance with the results.** A batch's rows, its dead letters, the new next offset and (when
  due) the partition's state snapshot are written in ONE transaction (`Store.write_batch(also=…)`).
  Inside it, `advance` locks the position rows and checks, per partition:
    - the epoch is still the one this consumer claimed, else `Fenced` (another consumer has
      claimed it since: this one lost the partition, e.g. it was a zombie paused past its session);
    - the batch starts exactly at the stored next offset, else `OffsetGap` (a gap or a rewind:
      the consumer must seek back to the stored offset).
  Either error rolls the whole transaction back, so a fenced or misplaced batch writes nothing.
* **Kafka commits follow** for lag tools only; they may lag or fail without harm.

A crash anywhere therefore leaves the store either before or after a whole batch; the next owner
reads the position that matches the rows, so nothing is lost and nothing is written twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from pipelines.errors import ArgusError
from pipelines.store import Store, stream_positions

Key = tuple[str, int]  # (topic, partition)


class PositionConflict(ArgusError):
    """A batch may not be written for these partitions (nothing was written)."""

    def __init__(self, message: str, partitions: set[Key]):
        super().__init__(message)
        self.partitions = partitions


class Fenced(PositionConflict):
    """Another consumer claimed these partitions after this one did."""


class OffsetGap(PositionConflict):
    """The batch does not start at the stored next offset (a gap or a rewind)."""


@dataclass(frozen=True)
class Claim:
    epoch: int
    next_offset: int | None  # None: nothing written yet for this partition


@dataclass(frozen=True)
class Advance:
    """One partition's move in a batch: from `first` (the stored next offset it must start at) to `next`."""

    topic: str
    partition: int
    epoch: int
    first: int
    next: int


def claim(store: Store, stream: str, keys: Iterable[Key], owner: str) -> dict[Key, Claim]:
    """Bump the epoch of each partition (creating its row) and return the new epochs and positions."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    t = stream_positions.c
    now = datetime.now(timezone.utc)
    insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert

    def work(conn: Connection) -> dict[Key, Claim]:
        out: dict[Key, Claim] = {}
        for topic, partition in keys:  # key order: two claimers cannot deadlock
            ins = insert(stream_positions).values(stream=stream, topic=topic, partition=partition, next_offset=None,
                                                  epoch=1, owner=owner, updated_at=now)
            conn.execute(ins.on_conflict_do_update(
                index_elements=["stream", "topic", "partition"],
                set_={"epoch": stream_positions.c.epoch + 1, "owner": owner, "updated_at": now}))
            epoch, nxt = conn.execute(select(t.epoch, t.next_offset).where(
                t.stream == stream, t.topic == topic, t.partition == partition)).one()
            out[(topic, partition)] = Claim(int(epoch), None if nxt is None else int(nxt))
        return out

    return store._transact(work)  # noqa: SLF001 - the store's retrying write transaction


def positions(store: Store, stream: str) -> dict[Key, int | None]:
    """The stored next offset of every partition of a stream (for tools and tests)."""
    t = stream_positions.c
    with store.engine.connect() as conn:
        return {(r[0], int(r[1])): (None if r[2] is None else int(r[2])) for r in conn.execute(
            select(t.topic, t.partition, t.next_offset).where(t.stream == stream, t.partition >= 0))}


def advance(stream: str, moves: Iterable[Advance]):
    """The check-and-advance step for `Store.write_batch(also=[...])` (see the module docstring)."""
    moves = sorted(moves, key=lambda m: (m.topic, m.partition))

    def step(conn: Connection) -> None:
        if not moves:
            return
        t = stream_positions.c
        query = select(t.topic, t.partition, t.epoch, t.next_offset).where(
            t.stream == stream, tuple_(t.topic, t.partition).in_([(m.topic, m.partition) for m in moves]))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()  # a concurrent claim waits until this batch is in (or not)
        stored: Mapping[Key, tuple[int, int | None]] = {
            (r[0], int(r[1])): (int(r[2]), None if r[3] is None else int(r[3])) for r in conn.execute(query)}
        fenced = {(m.topic, m.partition) for m in moves
                  if (m.topic, m.partition) not in stored or stored[(m.topic, m.partition)][0] != m.epoch}
        if fenced:
            raise Fenced(f"partitions {sorted(fenced)} were claimed by another consumer", fenced)
        gaps = {(m.topic, m.partition) for m in moves
                if stored[(m.topic, m.partition)][1] is not None and stored[(m.topic, m.partition)][1] != m.first}
        if gaps:
            detail = ", ".join(f"{k[0]}:{k[1]} stored {stored[k][1]}" for k in sorted(gaps))
            raise OffsetGap(f"batch does not start at the stored position ({detail})", gaps)
        # one executemany (psycopg pipelines it: one round trip), not one statement per partition
        conn.execute(update(stream_positions).where(
            t.stream == stream, t.topic == bindparam("b_topic"), t.partition == bindparam("b_partition")).values(
            next_offset=bindparam("b_next"), updated_at=datetime.now(timezone.utc)),
            [{"b_topic": m.topic, "b_partition": m.partition, "b_next": m.next} for m in moves])

    return step


def fence(stream: str, epochs: Mapping[Key, int]):
    """A step for `Store.write_batch(also=[...])` that only checks this consumer still holds these
    partitions (e.g. before a snapshot written outside a batch, on a clean stop)."""

    def step(conn: Connection) -> None:
        if not epochs:
            return
        t = stream_positions.c
        query = select(t.topic, t.partition, t.epoch).where(t.stream == stream, tuple_(t.topic, t.partition).in_(list(epochs)))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        stored = {(r[0], int(r[1])): int(r[2]) for r in conn.execute(query)}
        fenced = {k for k, e in epochs.items() if stored.get(k) != e}
        if fenced:
            raise Fenced(f"partitions {sorted(fenced)} were claimed by another consumer", fenced)

    return step


# -- the Kafka group generation of a stream ---------------------------------------------------------
# Positions live in the store, so the Kafka consumer group is only a way to share partitions. If a
# broker wedges a group (tansu 0.6 can leave a rebalance unfinished for good), the consumers move to
# a fresh group id together: the generation is a row of this table (topic "", partition -1), bumped
# by compare-and-set, read by every consumer between batches.

_GENERATION_KEY = ("", -1)


def group_generation(store: Store, stream: str) -> int:
    t = stream_positions.c
    with store.engine.connect() as conn:
        value = conn.execute(select(t.next_offset).where(
            t.stream == stream, t.topic == _GENERATION_KEY[0], t.partition == _GENERATION_KEY[1])).scalar()
    return int(value or 0)


def bump_group_generation(store: Store, stream: str, seen: int, owner: str) -> int:
    """Move the stream to generation seen + 1 unless someone already did; returns the generation now."""
    t = stream_positions.c
    now = datetime.now(timezone.utc)
    insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert

    def work(conn: Connection) -> int:
        conn.execute(insert(stream_positions).values(stream=stream, topic=_GENERATION_KEY[0],
                                                     partition=_GENERATION_KEY[1], next_offset=0, epoch=0,
                                                     owner=owner, updated_at=now).on_conflict_do_nothing())
        conn.execute(update(stream_positions).where(
            t.stream == stream, t.topic == _GENERATION_KEY[0], t.partition == _GENERATION_KEY[1],
            t.next_offset == seen).values(next_offset=seen + 1, owner=owner, updated_at=now))
        return int(conn.execute(select(t.next_offset).where(
            t.stream == stream, t.topic == _GENERATION_KEY[0], t.partition == _GENERATION_KEY[1])).scalar())

    return store._transact(work)  # noqa: SLF001
