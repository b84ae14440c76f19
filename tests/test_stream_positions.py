"""Positions and fencing in the store (pipelines/stream_positions.py), on real PostgreSQL and SQLite:
a batch is written only by the consumer that holds the partition's current epoch, and only if it
starts exactly at the stored position; a refused batch writes nothing at all."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.store import Store
from pipelines.stream_positions import Advance, Fenced, OffsetGap, claim, advance, fence, positions

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request, tmp_path):
    url = request.getfixturevalue("fresh_pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/p.db"
    s = Store.from_url(url)
    s.create_schema()
    yield s
    s.close()


def score(tid: str) -> dict:
    return {"transaction_id": tid, "score": 0.1, "decision": "approve", "model_version": "m"}


def test_claim_bumps_the_epoch_and_returns_the_stored_position(store):
    first = claim(store, "g", [("t", 0), ("t", 1)], "a")
    assert first[("t", 0)].epoch == 1 and first[("t", 0)].next_offset is None
    store.write_batch(scores=[score("x")], also=[advance("g", [Advance("t", 0, 1, 0, 10)])])
    second = claim(store, "g", [("t", 0)], "b")
    assert second[("t", 0)].epoch == 2 and second[("t", 0)].next_offset == 10
    assert positions(store, "g") == {("t", 0): 10, ("t", 1): None}


def test_a_fenced_consumer_writes_nothing(store):
    a = claim(store, "g", [("t", 0)], "a")[("t", 0)]
    store.write_batch(scores=[score("a1")], also=[advance("g", [Advance("t", 0, a.epoch, 0, 5)])])
    b = claim(store, "g", [("t", 0)], "b")[("t", 0)]  # a is now a zombie
    with pytest.raises(Fenced) as info:
        store.write_batch(scores=[score("zombie")], also=[advance("g", [Advance("t", 0, a.epoch, 5, 9)])])
    assert info.value.partitions == {("t", 0)}
    with pytest.raises(Fenced):
        store.write_batch(also=[fence("g", {("t", 0): a.epoch})])
    assert store.get_result("zombie") is None  # the whole transaction was rolled back
    store.write_batch(scores=[score("b1")], also=[advance("g", [Advance("t", 0, b.epoch, 5, 9)])])
    assert positions(store, "g")[("t", 0)] == 9 and store.get_result("b1") is not None


def test_a_batch_that_does_not_start_at_the_stored_position_is_refused(store):
    a = claim(store, "g", [("t", 0), ("t", 1)], "a")
    e0, e1 = a[("t", 0)].epoch, a[("t", 1)].epoch
    store.write_batch(also=[advance("g", [Advance("t", 0, e0, 0, 10), Advance("t", 1, e1, 0, 3)])])
    for first in (9, 11):  # a rewind, a gap
        with pytest.raises(OffsetGap) as info:
            store.write_batch(scores=[score(f"g{first}")],
                              also=[advance("g", [Advance("t", 0, e0, first, 20), Advance("t", 1, e1, 3, 4)])])
        assert info.value.partitions == {("t", 0)}
    assert positions(store, "g") == {("t", 0): 10, ("t", 1): 3}  # neither partition moved
    assert store.count("fraud_scores") == 0


def test_a_claim_waits_for_a_batch_in_flight(fresh_pg_url):
    """PostgreSQL: the batch holds the position row lock until it commits, so a concurrent claim
    returns the position AFTER the batch (the new owner never re-reads what the batch wrote)."""
    s = Store.from_url(fresh_pg_url)
    s.create_schema()
    e = claim(s, "g", [("t", 0)], "a")[("t", 0)].epoch
    got = {}
    locked = threading.Event()

    def slow_step(conn):  # runs after `advance` has taken the row lock, inside the same transaction
        locked.set()
        time.sleep(1.0)

    def writer():
        s.write_batch(scores=[score("w")], also=[advance("g", [Advance("t", 0, e, 0, 7)]), slow_step])

    t = threading.Thread(target=writer)
    t.start()
    assert locked.wait(30)  # not a fixed sleep: on a loaded machine the writer may take longer to get there
    got.update(claim(s, "g", [("t", 0)], "b"))
    t.join()
    assert got[("t", 0)].next_offset == 7


def test_the_group_generation_moves_once_per_stall(store):
    from pipelines.stream_positions import bump_group_generation, group_generation

    assert group_generation(store, "g") == 0
    assert bump_group_generation(store, "g", 0, "a") == 1
    assert bump_group_generation(store, "g", 0, "b") == 1  # b saw the same stall: no second move
    assert bump_group_generation(store, "g", 1, "b") == 2
    claim(store, "g", [("t", 0)], "a")
    assert positions(store, "g") == {("t", 0): None}  # the generation row is not a partition
