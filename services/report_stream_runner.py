"""`argus stream reports` composed: Ray + the summariser pool + the report stream job (pipelines/report_stream.py)."""

from __future__ import annotations

from pipelines.report_stream import RUN_KIND, ReportStreamCounts, ReportStreamJob
from pipelines.settings import Settings
from pipelines.store import Store
from services.local_ray import ensure_ray
from services.shutdown import stop_on_signals
from services.summarize_actor import SummarizerPool


def run_report_stream(settings: Settings, store_url: str, *, seconds: float | None = None,
                      idle_exit_s: float | None = None, checkpoint: str | None = None, mode: str | None = None,
                      group: str | None = None, ray_num_cpus: int | None = None, on_batch=None) -> ReportStreamCounts:
    """Start Ray + the summariser pool + the job; run until SIGTERM/Ctrl-C (graceful), `seconds`, or idle."""
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
            with stop_on_signals(job.stop) as stop:
                job.run(seconds=seconds, idle_exit_s=idle_exit_s, on_batch=on_batch)
            status = "interrupted" if stop.requested else "ok"
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
