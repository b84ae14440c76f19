"""`argus stream reports`: the reports topic -> summaries in the store, effectively once.

    collect     poll the reports topic (summariser.stream_max_records per batch)
    decode      JSON + the Report contract, size <= summariser.max_document_bytes   bad -> dead letter
    summarise   report_steps.summarise_candidates: the batch job's code path (prose check, GX input
                suite, SummarizerPool on Ray, GX output suite)                       bad -> dead letter
    write       summaries + dead letters in ONE store transaction (retried, consumption paused)
    publish     dead letters -> dead-letter topic (reason attached), flushed
    commit      consumer offsets, only now (pipelines/stream_loop.py)

A crash before the commit re-reads the uncommitted batch; summaries are upserted on
(report_id, model_version) and dead letters on (topic, partition, offset), so the tables end up
the same. The dead-letter TOPIC is at-least-once (a replayed failure is published again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipelines.contracts import ContractError, Report, decode
from pipelines.report_steps import Candidate, Result, summarise_candidates
from pipelines.settings import Settings
from pipelines.store import Store
from pipelines.stream_loop import MicroBatchConsumer

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


class ReportStreamJob(MicroBatchConsumer):
    def __init__(self, settings: Settings, store: Store, pool: Any, *, topic: str | None = None,
                 group: str | None = None, mode: str | None = None, name: str = "reports-0"):
        cfg = settings.summariser
        super().__init__(settings, [topic or settings.topics.reports], group or f"{settings.kafka.consumer_group}.reports",
                         max_records=cfg.stream_max_records, name=name)
        from pipelines.kafka_io import DeadLetterPublisher, make_producer

        self.store, self.pool = store, pool
        self.mode = mode or cfg.mode
        self.counts = ReportStreamCounts()
        store.create_schema()
        self.producer = make_producer(settings, linger_ms=2)
        self.dead_letter_out = DeadLetterPublisher(settings, producer=self.producer)

    def handle(self, records: list[Any]) -> None:
        cfg = self.settings.summariser
        candidates = [decode_record(r, cfg.max_document_bytes) for r in records]
        results = summarise_candidates(candidates, self.pool, mode=self.mode, max_sentences=cfg.max_summary_sentences,
                                       max_chars=cfg.max_summary_chars, batch_size=cfg.actor_batch_size,
                                       validation_engine=cfg.validation_engine)
        self.write(results)
        self.publish(results, records)
        self.counts.consumed += len(records)
        self.counts.batches += 1

    def write(self, results: list[Result]) -> None:
        good = [r.summary for r in results if r.ok]
        bad = [r.dead_letter() for r in results if not r.ok]
        self.retry("store write", lambda: self.store.write_batch(summaries=good, dead_letters=bad))
        self.counts.summarised += len(good)
        self.counts.dead_letters += len(bad)
        for r in results:
            if not r.ok:
                log.warning("dead letter %s:%s:%s at %s: %s", r.candidate.source, r.candidate.partition,
                            r.candidate.offset, r.stage, (r.error or "")[:200])

    def publish(self, results: list[Result], records: list[Any]) -> None:
        failed = [(rec, res) for rec, res in zip(records, results, strict=True) if not res.ok]
        if not failed:
            return

        def send_and_flush() -> None:
            for rec, res in failed:
                self.dead_letter_out.publish_record(rec, f"{res.stage}: {res.error}")
            self.dead_letter_out.flush(timeout=10)

        self.retry("dead-letter publish", send_and_flush)

    def close(self) -> None:
        try:
            self.producer.flush(10)
            self.producer.close(5)
        except Exception:  # noqa: BLE001 - closing must not mask the original error
            pass
        super().close()


def run_report_stream(settings: Settings, store_url: str, *, seconds: float | None = None,
                      idle_exit_s: float | None = None, checkpoint: str | None = None, mode: str | None = None,
                      group: str | None = None, ray_num_cpus: int | None = None, on_batch=None) -> ReportStreamCounts:
    """Start Ray + the summariser pool + the job; run until stopped (Ctrl-C), `seconds`, or idle."""
    from services.local_ray import ensure_ray
    from services.summarize_actor import SummarizerPool

    cfg = settings.summariser
    stop_ray = ensure_ray(ray_num_cpus)
    pool = None
    store = Store.from_url(store_url)
    try:
        pool = SummarizerPool(checkpoint if checkpoint is not None else settings.model.summariser_checkpoint,
                              replicas=cfg.replicas, num_cpus=cfg.replica_num_cpus, device=settings.model.device,
                              window_tokens=cfg.window_tokens)
        job = ReportStreamJob(settings, store, pool, mode=mode, group=group)
        run_id = store.start_run(RUN_KIND)
        status = "interrupted"
        try:
            job.run(seconds=seconds, idle_exit_s=idle_exit_s, on_batch=on_batch)
            status = "ok"
        except KeyboardInterrupt:
            pass
        finally:
            store.finish_run(run_id, counts={**job.counts.as_dict(), "model_version": pool.model_version}, status=status)
        return job.counts
    finally:
        if pool is not None:
            pool.close()
        store.close()
        stop_ray()
