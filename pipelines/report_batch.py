"""`argus summarize`: the batch summarisation job over files.

    ReportSource (polars / lines) ──► skip ids done for this model version (output file + store)
      ──► chunks of `summariser.chunk_reports` ──► report_steps.summarise_candidates
          (contract + size + prose checks, GX input suite, SummarizerPool on Ray, GX output suite)
      ──► output file (.jsonl appended / .parquet parts) and, with a store, one transaction per
          chunk: summaries upserted on (report_id, model_version) + dead letters at (file, 0, row)

Long documents need nothing special here: the summariser reads a document in overlapping windows
of whole sentences (memory bounded by the window) and reduces over the whole document.

Resumable: a rerun asks the output file and the store which ids the current model version already
summarised without error and reads only the rest; failed records are retried (their dead letters
are keyed on their position, so a retry that fails again is not recorded twice).
"""

from __future__ import annotations

import hashlib

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from pipelines.contracts import ContractError
from pipelines.report_sources import ReportSource, SourceRecord
from pipelines.report_steps import Candidate, output_row, summarise_candidates, to_report
from pipelines.settings import Settings, get_settings
from pipelines.summary_output import SummaryOutput

RUN_KIND = "summarise-batch"


@dataclass
class BatchResult:
    input: str
    output: str | None
    model_version: str
    total: int = 0  # records in the input
    skipped: int = 0  # already done for this model version
    summarised: int = 0
    failed: int = 0
    stored: int = 0
    dead_letters: int = 0
    output_rows: int = 0
    seconds: float = 0.0
    errors_by_stage: dict[str, int] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def docs_per_s(self) -> float:
        return (self.summarised + self.failed) / self.seconds if self.seconds else 0.0


def candidate(rec: SourceRecord, domain: str | None, max_bytes: int) -> Candidate:
    """A candidate from one source record: the Report, or why there is none."""
    c = Candidate(key=rec.key, source=rec.source, partition=0, offset=rec.position, payload=rec.raw, extra=rec.extra,
                  content_hash=None if rec.text is None else hashlib.sha256(
                      rec.text.encode("utf-8", "surrogatepass")).hexdigest())
    if rec.error:
        c.fail(rec.error, "read")
        return c
    data = {"report_id": rec.report_id, "domain": rec.domain or domain, "title": rec.title, "text": rec.text}
    if data["domain"] is None:
        c.fail("no domain: the record has none; pass --domain finance|medical", "decode")
        return c
    try:
        c.report = to_report(data, max_bytes)
    except ContractError as exc:
        c.fail(exc.reason, "decode")
    if c.error and c.payload is None:
        c.payload = (rec.text or "")[: 256 * 1024]
    return c


def _skip(c: Candidate, is_done: Callable[[Candidate], bool], result: BatchResult) -> bool:
    if is_done(c):
        result.skipped += 1
        return True
    return False


def _chunks(items: Iterator[Any], n: int) -> Iterator[list[Any]]:
    while chunk := list(islice(items, n)):
        yield chunk


def run_batch(input_path: str | Path, output: str | Path | None = None, *, store_url: str | None = None,
              domain: str | None = None, mode: str | None = None, limit: int | None = None,
              checkpoint: str | Path | None = None, settings: Settings | None = None, pool: Any = None,
              ray_num_cpus: int | None = None, show_progress: bool = False,
              on_chunk: Callable[[BatchResult], None] | None = None,
              pool_factory: Callable[..., tuple[Any, Callable[[], None]]] | None = None) -> BatchResult:
    """Summarise every report of `input_path` into `output` and/or the store at `store_url`.

    `pool`: a SummarizerPool to use (tests share one); otherwise `pool_factory(settings, checkpoint,
    ray_num_cpus) -> (pool, stop)` starts one (the CLI passes services.summarize_actor.start_pool:
    Ray is composed in services/, never here) and `stop` ends it. `limit`: at most this many
    records are processed in this run (skipped ones do not count)."""
    from pipelines.errors import ArgusError

    settings = settings or get_settings()
    cfg = settings.summariser
    mode = mode or cfg.mode
    if domain not in (None, "finance", "medical"):
        raise ArgusError(f"unknown domain {domain!r}: use finance or medical")
    if output is None and store_url is None:
        raise ArgusError("nowhere to write: give --output and/or --store")
    source = ReportSource(input_path, chunk_rows=max(64, cfg.chunk_reports))
    sink = SummaryOutput(output) if output is not None else None
    store = None
    stop_ray: Callable[[], None] = lambda: None
    own_pool = pool is None
    try:
        if store_url is not None:
            from pipelines.store import Store

            store = Store.from_url(store_url)
            store.create_schema()
        if own_pool:
            if pool_factory is None:
                raise ArgusError("no summariser pool: pass pool= or pool_factory= (services.summarize_actor.start_pool)")
            pool, stop_ray = pool_factory(settings, checkpoint, ray_num_cpus)
        result = BatchResult(str(input_path), str(output) if output else None, pool.model_version)
        result.run_id = store.start_run(RUN_KIND) if store else None
        _run(source, sink, store, pool, result, domain=domain, mode=mode, limit=limit, settings=settings,
             show_progress=show_progress, on_chunk=on_chunk)
        if sink is not None:
            result.output_rows = sink.finalise()
        if store and result.run_id:
            store.finish_run(result.run_id, counts=_counts(result), status="ok")
        return result
    except BaseException:
        if store is not None and "result" in locals() and result.run_id:
            store.finish_run(result.run_id, counts=_counts(result), status="interrupted")
        raise
    finally:
        stop_ray()  # the factory's stop closes the pool it started
        if store is not None:
            store.close()


def _counts(r: BatchResult) -> dict[str, Any]:
    return {"total": r.total, "skipped": r.skipped, "summarised": r.summarised, "failed": r.failed,
            "dead_letters": r.dead_letters, "errors_by_stage": r.errors_by_stage, "input": r.input,
            "output": r.output, "model_version": r.model_version, "seconds": round(r.seconds, 3)}


def _run(source: ReportSource, sink: SummaryOutput | None, store: Any, pool: Any, result: BatchResult, *,
         domain: str | None, mode: str, limit: int | None, settings: Settings, show_progress: bool,
         on_chunk: Callable[[BatchResult], None] | None) -> None:
    cfg = settings.summariser
    result.total = source.count()
    # Done = summarised without error by this model version in every place this run writes to
    # (a crash between the output append and the store write redoes that chunk, harmlessly).
    # Keyed on id AND content: a report whose text changed since is summarised again.
    ids = source.ids()
    done_maps = []
    if sink is not None:
        done_maps.append(sink.done(pool.model_version))
    if store is not None:
        done_maps.append(store.summaries_done(ids, pool.model_version))
    maybe_done = set.intersection(*(set(m) for m in done_maps)) & set(ids) if done_maps else set()

    def is_done(c: Candidate) -> bool:
        return c.key in maybe_done and all(m.get(c.key) in (None, c.content_hash) for m in done_maps)

    todo = result.total - len(maybe_done) if limit is None else min(limit, result.total - len(maybe_done))
    records = source.records()
    t0 = time.perf_counter()
    progress = _progress(show_progress, todo, result)
    fresh = (c for c in (candidate(r, domain, cfg.max_document_bytes) for r in records) if not _skip(c, is_done, result))
    if limit is not None:
        fresh = islice(fresh, limit)
    try:
        for candidates in _chunks(fresh, cfg.chunk_reports):
            shown = [0]  # advanced as each actor batch returns, the rest when the chunk is done

            def advance(n: int) -> None:
                shown[0] += n
                progress.advance(n)

            results = summarise_candidates(candidates, pool, mode=mode, max_sentences=cfg.max_summary_sentences,
                                           max_chars=cfg.max_summary_chars, batch_size=cfg.actor_batch_size,
                                           validation_engine=cfg.validation_engine, on_batch=advance)
            good = [r for r in results if r.ok]
            bad = [r for r in results if not r.ok]
            if sink is not None:
                sink.append(output_row(r) for r in results)
            if store is not None:
                counts = store.write_batch(summaries=[r.summary.model_copy(update={"content_hash": r.candidate.content_hash})
                                                      for r in good],
                                           dead_letters=[r.dead_letter() for r in bad])
                result.stored += counts.summaries
                result.dead_letters += counts.dead_letters
            result.summarised += len(good)
            result.failed += len(bad)
            for r in bad:
                result.errors_by_stage[r.stage or "unknown"] = result.errors_by_stage.get(r.stage or "unknown", 0) + 1
            result.seconds = time.perf_counter() - t0
            progress.advance(len(results) - shown[0])
            if on_chunk is not None:
                on_chunk(result)
    finally:
        result.seconds = time.perf_counter() - t0
        progress.close()


class _NoProgress:
    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _RichProgress:
    """A rich bar: done/total, docs/s, failures so far, elapsed and ETA."""

    def __init__(self, total: int, result: BatchResult):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.result = result
        self.bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} docs/s"), TextColumn("[red]{task.fields[failed]} failed"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), refresh_per_second=2)
        self.bar.start()
        self.task = self.bar.add_task("summarising", total=total, rate="-", failed=0)

    def advance(self, n: int) -> None:
        task = self.bar.tasks[0]
        done = task.completed + n
        rate = done / task.elapsed if task.elapsed else 0.0
        self.bar.update(self.task, advance=n, rate=f"{rate:.2f}", failed=self.result.failed)

    def close(self) -> None:
        self.bar.stop()


def _progress(show: bool, total: int, result: BatchResult) -> Any:
    return _RichProgress(total, result) if show else _NoProgress()
