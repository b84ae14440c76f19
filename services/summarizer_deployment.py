"""The Summarizer Serve deployment: `@serve.batch` around `Summarizer.summarize`.

Documents are long, so batches are small (user_config max_batch_size, default 4); the batch is
run off the event loop so the replica keeps accepting requests. On the engine backend (GPU) the
replica's queue and the engine's batch occupancy are Ray gauges (services/engine_metrics.py) and
part of ready(). `user_config` keys:
max_batch_size, batch_wait_timeout_s, mode (default summary mode when a request names none),
max_new_tokens (the generative path's bound per summary: 48 keeps a REST answer near a second on a
CPU; None lets the summariser choose, several seconds there).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from pipelines.contracts import Report, ReportSummary
from services.engine_metrics import EngineGauges
from services.fraud_scoring import import_attr, resolve_device
from services.loading import BackgroundLoad, BadInput

log = logging.getLogger("ray.serve.argus")  # Serve writes ray.serve.* to the replica log files


@serve.deployment(name="Summarizer", max_ongoing_requests=32)
class SummarizerDeployment:
    def __init__(self, checkpoint: str | None = None, device: str = "auto", mode: str = "extractive",
                 summarizer_class: str = "pipelines.report_summariser:Summarizer", max_new_tokens: int | None = 48,
                 warmup: bool = True):
        self.summarizer_class = summarizer_class
        self.max_new_tokens = max_new_tokens
        self.warmup = warmup
        self.device = device
        self.mode = mode
        self.gauges = EngineGauges()  # queue and engine occupancy (GPU replicas), exported by Ray
        self.queued = 0
        self.model = BackgroundLoad("summarizer", lambda: self._load(checkpoint))

    def _load(self, checkpoint: str | None) -> Any:
        Summarizer = import_attr(self.summarizer_class)
        self.device = resolve_device(self.device)
        summarizer = Summarizer.load(checkpoint, device=self.device)
        if self.warmup:  # the first pass allocates and initialises; keep that out of the first request
            fin = Report(report_id="warmup", domain="finance", text="Revenue rose 12% to $4.2 billion. Margin was 18%.")
            med = Report(report_id="warmup", domain="medical", text="Findings: The lungs are clear. Impression: Normal.")
            self._summarize_items(summarizer, [(fin, "extractive"), (med, "extractive"), (fin, "generative"),
                                               (med, "generative")], 4)  # each domain's path, each mode
        log.info("summarizer %s loaded on %s (backend %s)", summarizer.model_version, self.device,
                 getattr(summarizer, "backend", "transformers"))
        return summarizer

    def reconfigure(self, config: dict[str, Any]) -> None:
        if "max_batch_size" in config:
            self.summarize_batch.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self.summarize_batch.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))
        self.mode = str(config.get("mode", self.mode))
        if "max_new_tokens" in config:
            self.max_new_tokens = None if config["max_new_tokens"] is None else int(config["max_new_tokens"])

    async def ready(self) -> dict[str, Any]:
        status = self.model.status()
        if self.model.ready:
            status["model_version"] = self.model.value.model_version
            status["device"] = self.device
            status["backend"] = getattr(self.model.value, "backend", "transformers")  # engine | transformers
            occupancy = getattr(self.model.value, "engine_occupancy", lambda: None)()
            if occupancy is not None:  # the engine's queue and batch occupancy (GPU replicas)
                status["engine"] = occupancy
        return status

    async def summarize(self, report: Report, mode: str | None = None) -> tuple[ReportSummary, int]:
        """Summarise one report; returns the summary and the size of the batch it ran in."""
        await self.model.get(wait_s=0.0)
        self.queued += 1
        self.gauges.set_queued(self.queued)
        try:
            summary, batch_size = await self.summarize_batch((report, mode or self.mode))
        finally:
            self.queued -= 1
            self.gauges.set_queued(self.queued)
        if isinstance(summary, str):
            raise BadInput(summary)
        return summary, batch_size

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def summarize_batch(self, items: list[tuple[Report, str]]) -> list[tuple[ReportSummary, int]]:
        summarizer = await self.model.get()
        loop = asyncio.get_running_loop()
        summaries = await loop.run_in_executor(None, self._summarize_items, summarizer, items, self.max_new_tokens)
        self.gauges.report(getattr(summarizer, "engine_occupancy", lambda: None)())
        return [(s, len(items)) for s in summaries]

    @staticmethod
    def _summarize_items(summarizer: Any, items: list[tuple[Report, str]],
                         max_new_tokens: int | None = None) -> list[ReportSummary | str]:
        """One bad report must not fail the other callers in its batch: its error travels as a string."""
        import torch

        from pipelines.errors import ArgusError

        out: list[ReportSummary | str] = []
        with torch.inference_mode():
            for report, mode in items:
                try:
                    out.append(summarizer.summarize(report, mode=mode, max_new_tokens=max_new_tokens)
                               if mode == "generative" and max_new_tokens else summarizer.summarize(report, mode=mode))
                except (ArgusError, ValueError) as exc:
                    out.append(f"report {report.report_id}: {type(exc).__name__}: {str(exc)[:200]}")
        return out
