"""Summariser replicas for the batch and stream jobs: Ray actors behind one `SummarizerPool`.

Each actor loads `pipelines.report_summariser.Summarizer` once and summarises lists of reports; one bad report
never fails its batch: its error comes back as a string next to the other results. The pool spreads
batches over the actors round-robin (results in submission order) so a job can show
progress as each batch returns. With GPUs in the Ray cluster each actor takes one GPU and runs on
CUDA; otherwise actors run on CPU with `num_cpus` each (torch threads set to match).

Why actors and not Serve handles here: a batch job owns its replicas for its lifetime and streams
thousands of documents through them; the REST service (services/summarizer_deployment.py) keeps
its own autoscaled Serve replicas for interactive traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from pipelines.contracts import Report, ReportSummary


@dataclass(frozen=True)
class Outcome:
    """One report's result: a summary, or the reason it could not be summarised."""

    report_id: str
    summary: ReportSummary | None = None
    error: str | None = None


class SummarizeWorker:
    """The actor body (plain class: tests and `--no-ray` runs can use it in-process)."""

    def __init__(self, checkpoint: str | None, device: str = "cpu", threads: int | None = None,
                 window_tokens: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        from pipelines.report_summariser import Summarizer

        kwargs = {"window_tokens": window_tokens} if window_tokens else {}
        self.summarizer = Summarizer.load(checkpoint, device=device, **kwargs)

    def model_version(self) -> str:
        return self.summarizer.model_version

    def summarize(self, reports: list[Report], mode: str = "extractive", max_sentences: int = 5,
                  max_chars: int = 1200) -> list[Outcome]:
        import torch

        out: list[Outcome] = []
        with torch.inference_mode():
            for report in reports:
                try:
                    summary = self.summarizer.summarize(report, mode=mode, max_sentences=max_sentences,
                                                        max_chars=max_chars)
                    out.append(Outcome(report.report_id, summary=summary))
                except Exception as exc:  # noqa: BLE001 - one report's failure is its own dead letter
                    out.append(Outcome(report.report_id, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"))
        return out


class SummarizerPool:
    """`replicas` summariser actors. GPUs in the cluster: one per actor (replicas defaults to the
    GPU count); else CPU actors with `num_cpus` each."""

    def __init__(self, checkpoint: str | Path | None = None, replicas: int | None = None, num_cpus: float = 1.0,
                 device: str = "auto", window_tokens: int | None = None):
        gpus = int(ray.cluster_resources().get("GPU", 0)) if device in ("auto", "cuda") else 0
        use_gpu = gpus > 0
        self.replicas = max(1, replicas or (gpus if use_gpu else 1))
        self.device = "cuda" if use_gpu else "cpu"
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": 1 if use_gpu else 0, "max_restarts": 1}
        threads = None if use_gpu else max(1, int(round(num_cpus)) or 1)
        Actor = ray.remote(SummarizeWorker).options(**options)
        self.actors = [Actor.remote(None if checkpoint is None else str(checkpoint), self.device, threads, window_tokens)
                       for _ in range(self.replicas)]
        versions = set(ray.get([a.model_version.remote() for a in self.actors]))
        if len(versions) != 1:
            raise RuntimeError(f"replicas loaded different model versions: {sorted(versions)}")
        self.model_version = versions.pop()

    def map(self, batches: Iterable[list[Report]], **kwargs: Any) -> Iterator[list[Outcome]]:
        """Summaries of each batch, in the order given. Batches are submitted round-robin with at
        most two queued per replica, so the input is read lazily (memory follows the queue)."""
        from collections import deque

        pending: deque = deque()
        depth = 2 * len(self.actors)
        for i, batch in enumerate(batches):
            pending.append(self.actors[i % len(self.actors)].summarize.remote(batch, **kwargs))
            if len(pending) >= depth:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())

    def summarize(self, reports: list[Report], batch_size: int = 4, on_batch: Callable[[int], None] | None = None,
                  **kwargs: Any) -> list[Outcome]:
        """All of `reports`, split over the replicas; results in input order. `on_batch(n)` is called
        as each batch of n reports comes back (progress bars)."""
        batches = [reports[i:i + batch_size] for i in range(0, len(reports), batch_size)]
        out: list[Outcome] = []
        for outcomes in self.map(batches, **kwargs):
            out.extend(outcomes)
            if on_batch is not None:
                on_batch(len(outcomes))
        return out

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def start_pool(settings, checkpoint=None, ray_num_cpus: int | None = None):
    """Ray (a running one, or a local one with `ray_num_cpus`) + a SummarizerPool from the settings;
    returns (pool, stop) for `pipelines.report_batch.run_batch(pool_factory=...)`."""
    from services.local_ray import ensure_ray

    cfg = settings.summariser
    stop_ray = ensure_ray(ray_num_cpus)
    try:
        pool = SummarizerPool(checkpoint if checkpoint is not None else settings.model.summariser_checkpoint,
                              replicas=cfg.replicas, num_cpus=cfg.replica_num_cpus, device=settings.model.device,
                              window_tokens=cfg.window_tokens)
    except BaseException:
        stop_ray()
        raise

    def stop() -> None:
        try:
            pool.close()
        finally:
            stop_ray()

    return pool, stop
