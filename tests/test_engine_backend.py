"""Backend selection and the engine backend's answers against the plain transformers path (CPU, tiny preset).

On CPU the engine backend runs eagerly (no CUDA graphs), which is exactly what lets these tests
check that the summariser's engine generation / window forwards and the fraud scorer's
graph-capturable forward give the plain path's tokens and scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.engine_backend import FraudGraphs, select_backend
from models.fraud_scorer import FraudModel, FraudModelConfig, FraudScorer, context_tensors
from pipelines.report_summariser import Summarizer
from pipelines.errors import ModelError
from pipelines.sentences import split_sentences
from pipelines.simulate_reports import finance_report, medical_report


@pytest.fixture(scope="module")
def summarizers():
    plain = Summarizer.tiny_random(window_tokens=256)
    engine = Summarizer.tiny_random(window_tokens=256, backend="engine")
    return plain, engine


def test_selection_is_transformers_on_cpu_and_explicit_choices_win(summarizers):
    plain, engine = summarizers
    assert plain.backend == "transformers" and plain.engine is None
    assert engine.backend == "engine" and engine.engine is not None
    assert select_backend("auto", "cpu", plain.lm) == "transformers"
    assert select_backend("auto", "cuda", plain.lm) == "engine"
    assert select_backend("auto", "cuda", torch.nn.Linear(2, 2)) == "transformers"  # not a DeepseekV3ForCausalLM
    with pytest.raises(ModelError):
        select_backend("engine", "cpu", torch.nn.Linear(2, 2))
    with pytest.raises(ModelError):
        select_backend("fast", "cpu")


def test_selection_default_reads_settings(monkeypatch):
    from pipelines.settings import get_settings

    monkeypatch.setenv("ARGUS_MODEL__ENGINE_BACKEND", "engine")
    get_settings.cache_clear()
    try:
        assert select_backend(None, "cpu") == "engine"
    finally:
        monkeypatch.delenv("ARGUS_MODEL__ENGINE_BACKEND")
        get_settings.cache_clear()


def test_engine_generation_gives_the_plain_greedy_tokens(summarizers):
    plain, engine = summarizers
    prompts = [plain._prompt("finance", [[5, 6, 7, 8, 9, 10] * 4]), plain._prompt("medical", [[11, 12, 13] * 9])]
    ref = [plain._generate(p, 24) for p in prompts]
    assert engine._generate_many(prompts, 24) == ref  # batched (continuous batching) in the engine
    assert engine._generate(prompts[0], 24) == ref[0]
    assert any(ref), "the tiny model should generate some text"
    occupancy = engine.engine_occupancy()  # what the Summarizer deployment reports as ready()["engine"]
    assert occupancy["decode_steps"] > 0 and occupancy["waiting"] == occupancy["decoding"] == 0
    assert 0.0 < occupancy["batch_occupancy"] <= 1.0 and plain.engine_occupancy() is None


def test_engine_generative_and_extractive_summaries_match_plain(summarizers):
    plain, engine = summarizers
    # long enough for several windows / a map-reduce over chunks at window_tokens=256
    reports = [finance_report(1, words=400), medical_report(2)]
    seen_windows = []
    for report in reports:
        g_plain = plain.summarize(report, mode="generative", max_new_tokens=16)
        g_engine = engine.summarize(report, mode="generative", max_new_tokens=16)
        assert g_engine.summary == g_plain.summary
        sentences = [s.text for s in split_sentences(report.text)]
        s_plain = plain.score_sentences(report.domain.value, sentences)
        s_engine, windows = engine.scorer.score(engine.tokenizer, report.domain.value, sentences, 256, 32)
        seen_windows.append(windows)
        assert s_engine == pytest.approx(plain.scorer.score(
            plain.tokenizer, report.domain.value, sentences, 256, 32)[0], abs=1e-4)
        s_engine = engine.score_sentences(report.domain.value, sentences)
        assert len(s_plain) == len(sentences) > 3
        np.testing.assert_allclose(s_engine, s_plain, atol=1e-4, rtol=0)
        assert engine.summarize(report, mode="extractive").summary == plain.summarize(report, mode="extractive").summary
    assert max(seen_windows) >= 2  # the overlapping-window path ran through the engine too


def _fraud_batch(model: FraudModel, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    t = cfg.customer_history + cfg.terminal_history
    return {
        "hist_num": torch.randn(n, t, len(cfg.hist_fields), generator=g),
        "hist_label": torch.randint(0, 4, (n, t), generator=g),
        "hist_counterpart": torch.randint(0, 100, (n, t), generator=g),
        "cur_num": torch.randn(n, len(cfg.current_fields), generator=g),
        "cur_ids": torch.randint(0, 100, (n, 2), generator=g),
    }


def test_summariser_engine_takes_its_mixed_step_from_settings(summarizers, monkeypatch):
    # model.engine_mixed_step=graph gives the summariser's engine the packed (CUDA-graph) mixed step with
    # model.engine_prefill_budget; "auto" (the default) keeps whole prompts on CPU; explicit arguments win
    from models.engine_backend import SummariserEngine
    from pipelines.settings import get_settings

    _, engine = summarizers
    lm = engine.lm
    assert engine.engine.engine.mixed_step is False and engine.engine.engine.packed_runner is None
    monkeypatch.setenv("ARGUS_MODEL__ENGINE_MIXED_STEP", "graph")
    monkeypatch.setenv("ARGUS_MODEL__ENGINE_PREFILL_BUDGET", "64")
    get_settings.cache_clear()
    try:
        graph = SummariserEngine(lm, 128).engine
        assert graph.mixed_step == "graph" and graph.prefill_budget == 64 and graph.packed_runner.chunk == 64
        assert SummariserEngine(lm, 128, mixed_step="off").engine.packed_runner is None
        monkeypatch.setenv("ARGUS_MODEL__ENGINE_MIXED_STEP", "always")
        get_settings.cache_clear()
        with pytest.raises(ValueError):  # pydantic's error names the setting
            get_settings()
    finally:
        monkeypatch.delenv("ARGUS_MODEL__ENGINE_MIXED_STEP")
        monkeypatch.delenv("ARGUS_MODEL__ENGINE_PREFILL_BUDGET")
        get_settings.cache_clear()


def test_fraud_engine_backend_gives_the_plain_scores():
    torch.manual_seed(0)
    model = FraudModel(FraudModelConfig.from_preset("tiny"))
    plain = FraudScorer(model, "v", "cpu")
    assert plain.backend == "transformers" and plain._graphs is None
    engine = FraudScorer(model, "v", "cpu", backend="engine")
    assert engine.backend == "engine" and engine._graphs is not None and not engine._graphs.use_graphs
    t = _fraud_batch(model, 300)
    with torch.inference_mode():
        ref = torch.sigmoid(model.fast_logits(t)).numpy()
        full = torch.sigmoid(model(t)).numpy()
        got = torch.sigmoid(engine._graphs.logits(t)).numpy()
    np.testing.assert_allclose(ref, full, atol=1e-5)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert got.std() > 1e-4  # scores that differ per row: the comparison means something
    # the patch is undone afterwards: the plain path is transformers' own experts again
    assert all("forward" not in vars(m) for m in model.modules())


def test_fraud_scorer_scores_a_frame_the_same_with_the_engine_backend():
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({
        "transaction_id": [f"t{i}" for i in range(n)],
        "timestamp": np.sort(rng.uniform(0, 5 * 86400, n)),
        "customer_id": [f"c{i}" for i in rng.integers(0, 40, n)],
        "terminal_id": [f"m{i}" for i in rng.integers(0, 30, n)],
        "amount": rng.gamma(2.0, 40.0, n),
    })
    plain = FraudScorer.load(None, backend="transformers")
    engine = FraudScorer.load(None, backend="engine")
    assert (plain.backend, engine.backend) == ("transformers", "engine")
    a = plain.score_frame(frame, plain.new_state(), batch_size=128)
    b = engine.score_frame(frame, engine.new_state(), batch_size=128)
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    assert a.std() > 1e-4
