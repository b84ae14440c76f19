"""`argus simulate transactions|reports` into the real broker, counted back with a consumer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.contracts import Label, Report, Transaction, decode
from pipelines.kafka_io import count_records, make_consumer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def _argus(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from services.cli import main; main()", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _drain(settings, topic: str, expect: int) -> list[bytes]:
    """Every record on `topic` (all partitions, no group: no join wait), stopping once idle."""
    from kafka import TopicPartition

    consumer = make_consumer(settings, None, None)
    values: list[bytes] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        idle = 0
        while idle < (2 if len(values) >= expect else 20):
            batch = consumer.poll(timeout_ms=250)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                values.extend(r.value for r in records)
    finally:
        consumer.close()
    return values


def test_simulate_transactions_into_broker(kafka_broker, tmp_path):
    tx_topic, label_topic = kafka_broker.new_topic("tx"), kafka_broker.new_topic("labels")
    env = {**os.environ, "ARGUS_HOME": str(tmp_path), "ARGUS_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
           "ARGUS_TOPICS__TRANSACTIONS": tx_topic, "ARGUS_TOPICS__LABELS": label_topic}
    out = _argus(env, "simulate", "transactions", "--rate", "300", "--seconds", "2", "--fraud-rate", "0.05",
                 "--label-delay", "0.5", "--seed", "21", "--customers", "300", "--terminals", "600")
    assert out.returncode == 0, out.stderr
    settings = kafka_broker.settings
    txs = [decode(Transaction, v) for v in _drain(settings, tx_topic, 600)]
    assert len(txs) == 600 and len({t.transaction_id for t in txs}) == 600
    labels = [decode(Label, v) for v in _drain(settings, label_topic, 1)]
    assert labels and all(lb.is_fraud for lb in labels)
    assert {lb.transaction_id for lb in labels} <= {t.transaction_id for t in txs}
    assert f"│ labels" in out.stdout and str(len(labels)) in out.stdout
    assert count_records(settings, tx_topic, idle_timeout_s=2.0) == 600


def test_simulate_reports_into_broker(kafka_broker, tmp_path):
    topic = kafka_broker.new_topic("reports")
    env = {**os.environ, "ARGUS_HOME": str(tmp_path), "ARGUS_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
           "ARGUS_TOPICS__REPORTS": topic}
    out = _argus(env, "simulate", "reports", "--count", "4", "--words", "3000", "--seed", "2")
    assert out.returncode == 0, out.stderr
    reports = [decode(Report, v) for v in _drain(kafka_broker.settings, topic, 4)]
    assert sorted(r.report_id for r in reports) == ["fin-2000006", "fin-2000008", "med-2000007", "med-2000009"]
    assert all(len(r.text.split()) >= 2900 for r in reports)
