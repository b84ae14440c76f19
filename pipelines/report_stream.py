"""`argus stream reports`: the reports topic -> summaries in the store, exactly once.

The job is its steps; the loop is the consumer runtime (`pipelines/stream_runtime.py`):

    collect     poll the reports topic (summariser.stream_max_records per batch)
    decode      JSON + the Report contract, size <= summariser.max_document_bytes   bad -> dead letter
    summarise   report_steps.summarise_candidates: the batch job's code path (prose check, GX input
                suite, the summariser pool, GX output suite)                          bad -> dead letter
    write       summaries + dead letters + the partitions' positions in ONE store transaction
    publish     dead letters -> dead-letter topic (reason attached), flushed

Summarising runs on a worker thread while the runtime keeps polling with every partition paused,
so a long report (minutes for 130K tokens on a CPU) never costs the group membership. Positions
live in the store with the rows (claimed on assignment, fenced against a consumer that lost the
partition), so a crash anywhere re-reads exactly what is not in the store. Summaries are upserted
on (report_id, model_version) and dead letters on (topic, partition, offset) besides. The
dead-letter TOPIC is at-least-once (a crash after the write re-publishes).

The Ray side (starting Ray and the summariser pool) is composed in `services/report_stream_runner.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition

from pipelines.contracts import ContractError, Report, decode
from pipelines.kafka_io import DeadLetterPublisher, make_producer
from pipelines.report_steps import Candidate, Result, summarise_candidates
from pipelines.settings import Settings
from pipelines.store import Store
from pipelines.stream_positions import Claim
from pipelines.stream_runtime import Batch, StreamRuntime

log = logging.getLogger("argus.report_stream")
RUN_KIND = "report-stream"


@dataclass
class ReportStreamCounts:
    consumed: int = 0
    summarised: int = 0
    dead_letters: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def decode_record(record: Any, max_bytes: int) -> Candidate:
    """A candidate from one Kafka record: the Report, or the decode failure."""
    key = record.key.decode("utf-8", "replace") if isinstance(record.key, bytes) else str(record.key or "")
    c = Candidate(key=key or f"{record.topic}:{record.partition}:{record.offset}", source=record.topic,
                  partition=record.partition, offset=record.offset, payload=record.value)
    if record.value is None:
        c.fail("empty record (no value)", "decode")
        return c
    try:
        c.report = decode(Report, record.value, max_bytes=max_bytes)
        c.key = c.report.report_id
    except ContractError as exc:
        c.fail(exc.reason, "decode")
    return c


class ReportStreamJob:
    def __init__(self, settings: Settings, store: Store, pool: Any, *, topic: str | None = None,
                 group: str | None = None, mode: str | None = None, name: str = "reports-0"):
        cfg = settings.summariser
        self.settings, self.store, self.pool, self.name = settings, store, pool, name
        self.mode = mode or cfg.mode
        self.counts = ReportStreamCounts()
        store.create_schema()
        self.producer = make_producer(settings, linger_ms=2)
        self.dead_letter_out = DeadLetterPublisher(settings, producer=self.producer)
        self.runtime = StreamRuntime(settings, store, self, [topic or settings.topics.reports],
                                     group or f"{settings.kafka.consumer_group}.reports", name=name,
                                     max_records=cfg.stream_max_records, max_wait_ms=200, slow_process=True)

    def run(self, seconds: float | None = None, idle_exit_s: float | None = None, on_batch=None) -> ReportStreamCounts:
        hook = (lambda rt, batch: on_batch(self)) if on_batch else None
        self.runtime.run(seconds=seconds, idle_exit_s=idle_exit_s, on_batch=hook)
        return self.counts

    def stop(self) -> None:
        self.runtime.stop()

    # -- partitions: no state, so reading starts at the stored position -------------------------

    def restore(self, claims: dict[TopicPartition, Claim]) -> dict[TopicPartition, int | None]:
        return {tp: c.next_offset for tp, c in claims.items()}

    def release(self, tps: set[TopicPartition]) -> None:
        return None

    # -- the steps -------------------------------------------------------------------------------

    def process(self, batch: Batch) -> list[tuple[Any, Result]]:
        cfg = self.settings.summariser
        records = [r for pb in batch.parts.values() for r in pb.live]  # no state: replay is empty
        candidates = [decode_record(r, cfg.max_document_bytes) for r in records]
        results = summarise_candidates(candidates, self.pool, mode=self.mode, max_sentences=cfg.max_summary_sentences,
                                       max_chars=cfg.max_summary_chars, batch_size=cfg.actor_batch_size,
                                       validation_engine=cfg.validation_engine)
        self.counts.consumed += len(batch)
        self.counts.batches += 1
        return list(zip(records, results, strict=True))

    def write(self, out: list[tuple[Any, Result]], also: list) -> None:
        good = [res.summary for _, res in out if res.ok]
        bad = [res.dead_letter() for _, res in out if not res.ok]
        self.store.write_batch(summaries=good, dead_letters=bad, also=also)
        self.counts.summarised += len(good)
        self.counts.dead_letters += len(bad)
        for _, r in out:
            if not r.ok:
                log.warning("dead letter %s:%s:%s at %s: %s", r.candidate.source, r.candidate.partition,
                            r.candidate.offset, r.stage, (r.error or "")[:200])

    def drop(self, out: list[tuple[Any, Result]], tps: set[TopicPartition]) -> list[tuple[Any, Result]]:
        return [(rec, res) for rec, res in out if TopicPartition(rec.topic, rec.partition) not in tps]

    def publish(self, out: list[tuple[Any, Result]]) -> None:
        failed = [(rec, res) for rec, res in out if not res.ok]
        if not failed:
            return
        for rec, res in failed:
            self.dead_letter_out.publish_record(rec, f"{res.stage}: {res.error}")
        self.dead_letter_out.flush(timeout=10)

    def close(self) -> None:
        try:
            self.producer.flush(10)
            self.producer.close(5)
        except Exception:  # noqa: BLE001 - closing must not mask the original error
            pass
