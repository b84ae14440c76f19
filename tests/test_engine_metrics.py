"""The Summarizer replica's engine metrics: queue and batch occupancy gauges (services/engine_metrics.py)."""

from __future__ import annotations

import asyncio

import pytest

from services.engine_metrics import ENGINE_KEYS, EngineGauges


class RecordingGauge:
    """Unit-test stand-in for ray.util.metrics.Gauge: keeps every value set."""

    def __init__(self, name: str, description: str):
        self.name, self.description, self.values = name, description, []

    def set(self, value: float) -> None:
        self.values.append(value)


def test_gauges_carry_the_engine_occupancy_and_skip_a_replica_without_engine():
    made = {}
    gauges = EngineGauges(gauge=lambda name, desc: made.setdefault(name, RecordingGauge(name, desc)))
    assert set(made) == {"argus_summarizer_queued"} | {f"argus_summarizer_engine_{k}" for k in ENGINE_KEYS}
    gauges.report(None)  # transformers backend: nothing to report
    assert all(not g.values for g in made.values())
    gauges.report({"decoding": 3, "prefilling": 1, "waiting": 7, "batch_occupancy": 0.25, "mean_decode_batch": 4.0,
                   "slots": 16, "steps": 9})
    assert made["argus_summarizer_engine_waiting"].values == [7.0]
    assert made["argus_summarizer_engine_batch_occupancy"].values == [0.25]
    gauges.set_queued(2)
    assert made["argus_summarizer_queued"].values == [2.0]
    with pytest.raises(KeyError):
        gauges.report({"decoding": 1})  # an occupancy without the figures is a bug, not a silent zero


class TinyEngineSummarizer:
    """`summarizer_class` for the replica below: the tiny random summariser on the engine backend."""

    @staticmethod
    def load(checkpoint, device="cpu"):
        from pipelines.report_summariser import Summarizer

        return Summarizer.tiny_random(device, window_tokens=256, backend="engine")


def test_summarizer_replica_on_the_engine_reports_its_occupancy():
    """The deployment's own class (outside Serve) on the engine backend: after a generative summary
    the gauges hold the engine's figures, and ready() shows them."""
    from pipelines.simulate_reports import finance_report
    from services.summarizer_deployment import SummarizerDeployment

    cls = SummarizerDeployment.func_or_class
    replica = cls(summarizer_class=f"{__name__}:TinyEngineSummarizer", device="cpu", warmup=False, max_new_tokens=8)
    batch_body = cls.summarize_batch.__wrapped__  # @serve.batch needs a replica context: one item, one batch

    async def one_item_batch(item):
        return (await batch_body(replica, [item]))[0]

    replica.summarize_batch = one_item_batch
    made = {}
    replica.gauges = EngineGauges(gauge=lambda name, desc: made.setdefault(name, RecordingGauge(name, desc)))

    async def run():
        await replica.model.get(wait_s=120)
        return await replica.summarize(finance_report(1, words=120), "generative"), await replica.ready()

    (summary, batch), status = asyncio.run(run())
    assert batch == 1 and status["backend"] == "engine"
    assert status["engine"]["decode_steps"] > 0 and status["engine"]["waiting"] == 0
    assert made["argus_summarizer_engine_mean_decode_batch"].values[-1] == status["engine"]["mean_decode_batch"] > 0
    assert made["argus_summarizer_queued"].values == [1.0, 0.0]
