"""Kafka I/O factories and the dead-letter publisher against the real (tansu) broker."""

from __future__ import annotations

import json
import time

import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from pipelines.kafka_io import DeadLetterPublisher, count_records, make_consumer, make_producer

pytestmark = pytest.mark.integration
# a second group member joins after the group's rebalance timeout (= max_poll_interval_ms on tansu)
FAST_GROUP = {"max_poll_interval_ms": 5000}


def _poll_until(consumer, n: int, timeout: float = 30.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(records)
    return got


def test_round_trip_json(kafka_broker, fresh_topic):
    settings = kafka_broker.settings
    producer = make_producer(settings)
    sent = [{"i": i, "text": f"record {i}"} for i in range(200)]
    for rec in sent:
        producer.send(fresh_topic, rec, key=str(rec["i"] % 7))
    producer.send(fresh_topic, b'{"raw": true}')
    producer.flush()
    producer.close()
    consumer = make_consumer(settings, fresh_topic, "rt-group", **FAST_GROUP)
    try:
        got = _poll_until(consumer, 201)
    finally:
        consumer.close()
    values = [json.loads(r.value) for r in got]
    assert len(values) == 201
    assert sorted((v for v in values if "i" in v), key=lambda v: v["i"]) == sent
    assert {"raw": True} in values
    # one key -> one partition, in send order
    by_key = {}
    for r in got:
        if r.key is not None:
            by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())


def test_group_resumes_after_committed_offset(kafka_broker):
    settings = kafka_broker.settings
    topic = kafka_broker.new_topic(partitions=1)
    producer = make_producer(settings)
    for i in range(30):
        producer.send(topic, {"i": i})
    producer.flush()
    producer.close()
    tp = TopicPartition(topic, 0)

    first = make_consumer(settings, topic, "resume-group", **FAST_GROUP)
    try:
        got = _poll_until(first, 12)
        assert [json.loads(r.value)["i"] for r in got[:12]] == list(range(12))
        # commit only what was "written": the first 12 (commit = next offset to read)
        first.commit({tp: OffsetAndMetadata(12, "", -1)})
    finally:
        first.close()

    second = make_consumer(settings, topic, "resume-group", **FAST_GROUP)
    try:
        rest = _poll_until(second, 18)
        assert [json.loads(r.value)["i"] for r in rest] == list(range(12, 30))
        assert second.committed(tp) == 12
    finally:
        second.close()
    # auto-commit is off: a consumer that committed nothing leaves the group offset where it was
    third = make_consumer(settings, topic, "resume-group", **FAST_GROUP)
    try:
        again = _poll_until(third, 18)
        assert json.loads(again[0].value)["i"] == 12
    finally:
        third.close()


@pytest.mark.slow  # a second member waits out the rebalance timeout (max_poll_interval_ms) on tansu
def test_two_consumers_share_partitions(kafka_broker):
    settings = kafka_broker.settings
    topic = kafka_broker.new_topic(partitions=4)
    producer = make_producer(settings)
    for i in range(400):
        producer.send(topic, {"i": i}, key=f"k{i}")
    producer.flush()
    producer.close()
    a = make_consumer(settings, topic, "share-group", **FAST_GROUP)
    b = make_consumer(settings, topic, "share-group", **FAST_GROUP)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            for name, consumer in (("a", a), ("b", b)):
                for records in consumer.poll(timeout_ms=100).values():
                    seen[name].extend(json.loads(r.value)["i"] for r in records)
            pa, pb = a.assignment(), b.assignment()
            if pa and pb and not (pa & pb) and len(pa | pb) == 4:
                break
        pa, pb = a.assignment(), b.assignment()
        assert pa and pb, f"both members need partitions: {pa} / {pb}"
        assert not (pa & pb) and {p.partition for p in pa | pb} == {0, 1, 2, 3}
    finally:
        a.close()
        b.close()


def test_dead_letter_publisher_keeps_payload_and_reason(kafka_broker):
    settings = kafka_broker.settings
    dlq = kafka_broker.new_topic("dlq", partitions=1)
    publisher = DeadLetterPublisher(settings, topic=dlq)
    publisher.publish("malformed json: Expecting value", b"{not json", source_topic="argus.transactions", partition=2, offset=41, key=b"C000001")
    publisher.publish("binary garbage", b"\xff\xfe\x00\x01", source_topic="argus.reports", partition=0, offset=7)
    publisher.close()
    assert publisher.published == 2
    consumer = make_consumer(settings, None, None)
    try:
        consumer.assign([TopicPartition(dlq, 0)])
        letters = [json.loads(r.value) for r in _poll_until(consumer, 2)]
    finally:
        consumer.close()
    assert len(letters) == 2
    text, binary = letters
    assert text["reason"] == "malformed json: Expecting value" and text["source_topic"] == "argus.transactions"
    assert (text["partition"], text["offset"], text["key"]) == (2, 41, "C000001")
    assert text["payload_encoding"] == "text" and DeadLetterPublisher.decode_payload(text) == b"{not json"
    assert binary["payload_encoding"] == "base64" and DeadLetterPublisher.decode_payload(binary) == b"\xff\xfe\x00\x01"


def test_count_records(kafka_broker):
    settings = kafka_broker.settings
    topic = kafka_broker.new_topic(partitions=3)
    producer = make_producer(settings)
    for i in range(123):
        producer.send(topic, {"i": i}, key=str(i))
    producer.flush()
    producer.close()
    assert count_records(settings, topic, idle_timeout_s=2.0) == 123
