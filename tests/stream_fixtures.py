"""Small transaction streams for the fraud stream tests: valid ones, and each kind of bad record."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np

from pipelines.contracts import Label, Transaction


def transactions(n: int, customers: int = 40, terminals: int = 60, seed: int = 0, prefix: str = "tx") -> list[Transaction]:
    """n transactions in time order over ~n minutes; a few large amounts so some scores are high."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 3, 1, tzinfo=timezone.utc)
    secs = np.sort(rng.integers(0, n * 60, n))
    cust = rng.integers(0, customers, n)
    term = (cust * 3 + rng.integers(0, 4, n)) % terminals
    amount = np.round(np.abs(rng.normal(40, 25, n)), 2)
    amount[rng.random(n) < 0.02] *= 30
    return [Transaction(transaction_id=f"{prefix}-{i:06d}", timestamp=start + timedelta(seconds=int(secs[i])),
                        customer_id=f"C{cust[i]:04d}", terminal_id=f"T{term[i]:04d}", amount=float(amount[i]))
            for i in range(n)]


def produce(settings, topic: str, items, key_of=lambda v: None) -> int:
    """Send (key, value bytes) or Transactions (keyed by customer_id) and flush; returns how many."""
    from pipelines.kafka_io import make_producer

    producer = make_producer(settings)
    n = 0
    try:
        for item in items:
            if isinstance(item, (Transaction, Label)):
                key, value = item.customer_id, item.to_json()
            else:
                key, value = item
            producer.send(topic, value, key=key)
            n += 1
        producer.flush(30)
    finally:
        producer.close(5)
    return n


def bad_records(valid: list[Transaction]) -> dict[str, list[tuple[str, bytes]]]:
    """Each kind of bad input, as (key, value) records, by the outcome the stream must give it."""
    base = valid[0].model_dump(mode="json")
    dup_same = valid[5]
    dup_other = valid[6].model_copy(update={"amount": valid[6].amount + 1.0})
    return {
        "malformed_json": [("C0001", b"{not json"), ("C0002", b"\xff\xfe binary")],
        "schema": [("C0001", json.dumps({**base, "transaction_id": "bad-neg", "amount": -5}).encode()),
                   ("C0001", json.dumps({k: v for k, v in base.items() if k != "customer_id"} | {"transaction_id": "bad-missing"}).encode()),
                   ("C0001", json.dumps({**base, "transaction_id": "bad-extra", "surprise": 1}).encode())],
        "absurd_amount": [("C0003", json.dumps({**base, "transaction_id": "bad-absurd", "amount": 5e9}).encode())],
        "duplicate_other_payload": [(dup_other.customer_id, dup_other.to_json())],
        # accepted, and scored once:
        "duplicate_same_payload": [(dup_same.customer_id, dup_same.to_json())],
    }


def accepted_extras(valid: list[Transaction]) -> list[Transaction]:
    """Valid records that stress the state: out-of-order timestamps and never-seen customers/terminals."""
    late = valid[len(valid) // 2].model_copy(update={"transaction_id": "late-1",
                                                     "timestamp": valid[0].timestamp - timedelta(days=3)})
    unknown = valid[10].model_copy(update={"transaction_id": "unknown-1", "customer_id": "C-NEW-999",
                                           "terminal_id": "T-NEW-999"})
    return [late, unknown]
