"""Hostile records at the Kafka boundary, property-based (hypothesis): random bytes, deep nesting,
odd and huge numbers, extreme and malformed timestamps, control characters, oversized payloads,
duplicates. `decode` never raises anything but ContractError, a dead letter always fits the topic,
and a real stream job over a mix of valid and hostile records scores every valid one once and
dead-letters every hostile one with a reason - no record stops it."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.contracts import ContractError, Disposition, Label, Transaction, decode
from pipelines.kafka_io import DeadLetterPublisher
from tests.hostile import draw, hostile_dispositions, hostile_labels, hostile_transactions, realise
from tests.stream_fixtures import produce, transactions

VALID = transactions(50, seed=11, prefix="hv")
LIMIT = 1_048_576

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=60)


def _only_contract_errors(model, raw) -> str | None:
    try:
        decode(model, raw, LIMIT)
        return None
    except ContractError as exc:
        assert exc.reason and "\n" not in exc.reason and len(exc.reason) <= 1000, exc.reason
        return exc.reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_random_bytes_are_a_reason_never_an_exception(raw):
    _only_contract_errors(Transaction, raw)
    _only_contract_errors(Label, raw)
    _only_contract_errors(Disposition, raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.sampled_from(["amount", "timestamp", "transaction_id", "lat", "channel", "extra"]))
def test_any_json_in_any_field_is_a_reason_or_a_valid_record(value, field):
    base = VALID[0].model_dump(mode="json")
    raw = json.dumps({**base, field: value}, allow_nan=True).encode()
    reason = _only_contract_errors(Transaction, raw)
    if reason is None:  # accepted: then it is a record the later steps can handle
        tx = decode(Transaction, raw)
        assert tx.timestamp.tzinfo is not None and 0 <= tx.amount <= 1e12


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_transactions(VALID))
def test_every_hostile_kind_is_rejected_at_decode(example):
    kind, _, value = example
    if kind in ("dup_same", "dup_other"):
        return  # valid JSON by construction: the stream's deduplicate step decides (tested below)
    assert _only_contract_errors(Transaction, value) is not None, value[:300]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_labels())
def test_hostile_labels_are_rejected_or_name_an_unseen_transaction(example):
    kind, _, value = example
    reason = _only_contract_errors(Label, value)
    assert (reason is None) == (kind == "unknown_label")


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_dispositions())
def test_hostile_dispositions_are_rejected_or_name_an_unknown_transaction(example):
    """Not JSON, wrong or missing fields, an unknown kind, bad or non-finite times, control characters,
    huge or deep values: a reason at decode. The rest is well-formed (the stream finds no customer)."""
    kind, _, value = example
    reason = _only_contract_errors(Disposition, value)
    assert (reason is None) == (kind == "unknown_disposition"), (kind, value[:300])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.sampled_from(["disposition", "disposed_at", "transaction_id", "disposed_by", "note", "extra"]))
def test_any_json_in_any_disposition_field_is_a_reason_or_a_verdict_the_state_takes(value, field):
    base = {"transaction_id": "t-1", "disposition": "legitimate", "disposed_by": "analyst",
            "disposed_at": "2024-03-01T00:00:00Z", "customer_id": "C1"}
    raw = json.dumps({**base, field: value}, allow_nan=True).encode()
    if _only_contract_errors(Disposition, raw) is None:  # accepted: the state takes it
        from models.fraud_state import FraudState

        d = decode(Disposition, raw)
        assert FraudState().apply_dispositions([d.transaction_id], [d.disposition.value], [d.disposed_at],
                                               [d.customer_id], [d.terminal_id])[0].name == "APPLIED"


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=300_000), st.text(max_size=3000), st.binary(max_size=2000) | st.none())
def test_a_dead_letter_always_fits_the_topic(payload, reason, key):
    env = DeadLetterPublisher.envelope(reason, "t", 0, 1, payload, key)
    size = len(json.dumps(env).encode())
    assert size < 400_000  # far under the 1 MiB message limit, whatever came in
    assert env["payload_size"] == len(payload) and env["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert env["payload_truncated"] == (len(payload) > DeadLetterPublisher.max_payload_bytes)
    if not env["payload_truncated"]:
        assert DeadLetterPublisher.decode_payload(env) == payload


@pytest.mark.integration
def test_a_stream_over_hostile_records_scores_every_valid_one_and_dead_letters_the_rest(kafka_broker, tmp_path):
    """400 valid transactions with ~150 hostile records, 40 hostile labels and 30 hostile dispositions
    (drawn by hypothesis, fixed seed) interleaved on the topics: nothing stops the job; counting rows
    proves the outcome of every record."""
    from sqlalchemy import text

    from pipelines.fraud_stream import FraudStreamJob, StreamConfig, load_scorer
    from pipelines.metrics import StreamMetrics
    from pipelines.store import Store

    valid = transactions(400, seed=12, prefix="hs")
    hostile = realise(draw(hostile_transactions(valid, max_oversize=1_100_000), 150, 12), valid[:200], "hs")
    labels = realise(draw(hostile_labels(), 40, 13), valid, "hs")
    verdicts = realise(draw(hostile_dispositions(), 30, 14), valid, "hs")
    tx_topic, lb_topic = kafka_broker.new_topic("htx", 2), kafka_broker.new_topic("hlb", 2)
    ds_topic = kafka_broker.new_topic("hds", 2)
    names = {"transactions_topic": tx_topic, "labels_topic": lb_topic, "dispositions_topic": ds_topic,
             "alerts_topic": kafka_broker.new_topic("hal", 1), "dead_letter_topic": kafka_broker.new_topic("hdl", 1)}
    produce(kafka_broker.settings, tx_topic, valid[:200])
    produce(kafka_broker.settings, tx_topic, [((k or "k"), v) for _, k, v in hostile])  # after their originals
    produce(kafka_broker.settings, tx_topic, valid[200:])
    produce(kafka_broker.settings, lb_topic, [((k or "k"), v) for _, k, v in labels])
    produce(kafka_broker.settings, ds_topic, [((k or "k"), v) for _, k, v in verdicts])
    url = f"sqlite:///{tmp_path}/h.db"
    config = StreamConfig.from_settings(kafka_broker.settings, group="g-hostile", max_batch=128,
                                        pending_horizon_days=0.05, **names)
    job = FraudStreamJob(kafka_broker.settings, Store.from_url(url), load_scorer(None, threads=1), config,
                         StreamMetrics(), name="hostile")
    job.run(seconds=180, idle_exit_s=3.0)

    dead = sum(1 for kind, _, _ in hostile + labels + verdicts if kind == "dead")
    with Store.from_url(url) as s, s.engine.connect() as conn:
        ids = set(conn.execute(text("SELECT transaction_id FROM fraud_scores")).scalars())
        letters = conn.execute(text('SELECT reason, stage FROM dead_letters')).all()
    assert ids == {t.transaction_id for t in valid}
    assert len(letters) == dead, (len(letters), dead)
    assert all(reason.strip() for reason, _ in letters)
    assert {stage for _, stage in letters} <= {"decode", "deduplicate", "decode_label", "label_horizon",
                                               "decode_disposition", "disposition"}
    assert sum(1 for _, stage in letters if stage in ("decode_disposition", "disposition")) == len(verdicts)
