"""The fraud scoring core's state hook reads the stream job's per-partition snapshots from the store
(`store://<group>/<topic>`) or a snapshot file, and notices when they change."""

from __future__ import annotations

from pipelines.contracts import Transaction
from pipelines.fraud_state_store import PartitionStateStore
from pipelines.store import Store
from services.fraud_scoring import stream_state_source


def _state_with(customer: str, terminal: str):
    from models.fraud_state import FraudState

    state = FraudState()
    state.update_batch([Transaction(transaction_id=f"{customer}-1", timestamp="2024-04-01T00:00:00Z",
                                    customer_id=customer, terminal_id=terminal, amount=10.0)])
    return state


def test_store_source_merges_partitions_and_tracks_offsets(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store.from_url(url)
    store.create_schema()
    snaps = PartitionStateStore(store, "argus/argus.transactions")
    snaps.save(0, 100, None, _state_with("cust-a", "term-1").snapshot())
    snaps.save(1, 50, None, _state_with("cust-b", "term-2").snapshot())

    token, read = stream_state_source("store://argus/argus.transactions", url)
    state = read()
    assert set(state.customer_keys()) == {"cust-a", "cust-b"}
    assert stream_state_source("store://argus/argus.transactions", url)[0] == token  # unchanged

    snaps.save(1, 60, None, _state_with("cust-c", "term-2").snapshot())
    assert stream_state_source("store://argus/argus.transactions", url)[0] != token  # the stream moved on
    assert stream_state_source("store://other/topic", url) == (None, None)
    store.close()


def test_store_source_notices_a_snapshot_that_only_took_in_dispositions(tmp_path):
    """A batch with verdicts and no new transactions or labels moves only `dispositions_offset`
    (schema v9): the REST scorer must still reload, or it scores without those verdicts."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store.from_url(url)
    store.create_schema()
    snaps = PartitionStateStore(store, "argus/argus.transactions")
    snaps.save(0, 100, 7, _state_with("cust-a", "term-1").snapshot(), dispositions_offset=3)
    token = stream_state_source("store://argus/argus.transactions", url)[0]

    snaps.save(0, 100, 7, _state_with("cust-a", "term-1").snapshot(), dispositions_offset=4)
    moved, read = stream_state_source("store://argus/argus.transactions", url)
    assert moved != token and read().customer_keys() == ["cust-a"]
    snaps.save(0, 100, 7, _state_with("cust-a", "term-1").snapshot(), dispositions_offset=None)  # an older snapshot
    assert stream_state_source("store://argus/argus.transactions", url)[0] not in (token, moved)
    store.close()


def test_file_source(tmp_path):
    path = tmp_path / "state.npz"
    assert stream_state_source(str(path), None) == (None, None)
    path.write_bytes(_state_with("cust-f", "term-f").snapshot())
    token, read = stream_state_source(str(path), None)
    assert token is not None and read().customer_keys() == ["cust-f"]
