"""Which inference backend a model runs on, and the adapters that put the models on the fast one.

    backend = select_backend("auto", device, lm)    # "engine" on CUDA for DeepseekV3ForCausalLM, else "transformers"

Backends:
- "transformers": the plain path (transformers' forward and `generate()`); what CPU replicas run.
- "engine": the summariser's LM through `models.engine` (static MLA latent cache, continuous
  batching, CUDA-graph decode; extractive windows through `Engine.prefill_hidden`), and the fraud
  scorer's fixed 16-token forward captured in CUDA graphs per batch-size bucket (`FraudGraphs`).
  On CPU it runs eagerly (no graphs): that is how the tests check it gives the plain path's answers.

`requested`: "auto" | "engine" | "transformers"; None reads `model.engine_backend` from settings
(ARGUS_MODEL__ENGINE_BACKEND). The choice is logged once per model and exposed as `.backend`.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger("argus.engine_backend")

BACKENDS = ("auto", "engine", "transformers")
ENGINE, TRANSFORMERS = "engine", "transformers"
FRAUD_BUCKETS = (8, 32, 128, 512, 2048, 4096)  # batch sizes with a captured graph; larger batches are split


def select_backend(requested: str | None, device: torch.device | str, model: Any = None, kind: str = "model") -> str:
    """"engine" on CUDA (for the summariser: only a DeepseekV3ForCausalLM), "transformers" otherwise;
    an explicit "engine"/"transformers" wins (the engine also runs, eagerly, on CPU)."""
    from models.errors import ModelError

    if requested is None:
        from pipelines.settings import get_settings

        requested = getattr(get_settings().model, "engine_backend", "auto")
    if requested not in BACKENDS:
        raise ModelError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    supported = model is None or type(model).__name__ == "DeepseekV3ForCausalLM"
    if requested == "auto":
        chosen = ENGINE if torch.device(device).type == "cuda" and supported else TRANSFORMERS
    elif requested == ENGINE and not supported:
        raise ModelError(f"the engine backend needs a DeepseekV3ForCausalLM, got {type(model).__name__}")
    else:
        chosen = requested
    log.info("%s backend: %s (requested %s, device %s)", kind, chosen, requested, device)
    return chosen


# ---- summariser: generation and window hidden states through models.engine ----------------------

class SummariserEngine:
    """The summariser's causal LM inside a `models.engine.Engine` (weights shared, not copied)."""

    def __init__(self, lm, max_seq_len: int, max_batch: int = 16, mixed_step: str | None = None,
                 prefill_budget: int | None = None):
        """mixed_step "auto" | "off" | "graph" and its prefill_budget; None: settings model.engine_mixed_step /
        model.engine_prefill_budget. "auto": graph where the engine runs CUDA graphs (`default_mixed_step`)."""
        from models.engine import default_mixed_step, load_engine

        if mixed_step is None or prefill_budget is None:
            from pipelines.settings import get_settings

            model_settings = get_settings().model
            mixed_step = model_settings.engine_mixed_step if mixed_step is None else mixed_step
            prefill_budget = model_settings.engine_prefill_budget if prefill_budget is None else prefill_budget
        if mixed_step == "auto":
            mixed_step = default_mixed_step(next(lm.parameters()).device.type == "cuda")
        graph = mixed_step == "graph"
        self.engine = load_engine(lm, max_batch=max_batch, max_seq_len=max_seq_len,
                                  prefill_budget=prefill_budget if graph else None, mixed_step="graph" if graph else False)
        # every CUDA graph and each kind of step once, at load (before the replica reports ready): else the first
        # request to meet a new bucket or step kind waits for its capture, compile and kernel tuning
        seconds = self.engine.warm_up()
        if seconds:
            log.info("summariser engine: warmed up in %.1f s (CUDA graphs, every step kind; mixed step %s)",
                     seconds, mixed_step)
        self.max_seq_len = max_seq_len

    def fits(self, prompt: Sequence[int], max_new_tokens: int) -> bool:
        return len(prompt) + max_new_tokens <= self.max_seq_len

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos: int | None,
                 repetition_penalty: float, no_repeat_ngram_size: int) -> list[list[int]]:
        """Greedy continuations (continuous batching over all prompts), with the same repetition
        penalty / n-gram ban as the plain `generate()` call; the stop token is kept, as there."""
        return self.engine.generate(
            prompts, max_new_tokens, stop_token_ids=[] if eos is None else [eos],
            logits_processor=_hf_processors(repetition_penalty, no_repeat_ngram_size))

    def occupancy(self) -> dict[str, float | int]:
        """The engine's queue now and its batch occupancy so far (`Engine.occupancy`)."""
        return self.engine.occupancy()

    def hidden(self, ids: Sequence[int]) -> torch.Tensor:
        """Final-normed hidden states [L, H] of one window (transformers' `last_hidden_state[0]`)."""
        return self.engine.prefill_hidden([list(ids)])[0]


def _hf_processors(repetition_penalty: float, no_repeat_ngram_size: int) -> Callable | None:
    """transformers' own logits processors, applied per request row by the engine's sampler."""
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    procs = LogitsProcessorList()
    if repetition_penalty and repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if no_repeat_ngram_size and no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if not procs:
        return None

    def apply(token_ids: list[int], scores: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor([token_ids], device=scores.device)
        return procs(ids, scores[None])[0]

    return apply


# ---- fraud scorer: the fixed-length forward in CUDA graphs ---------------------------------------

def _dense_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' routed-experts sum without its loop over hit experts (which reads the hit list on
    the host, so it cannot be captured): every expert on every token, unrouted pairs weighted 0.
    Exact zeros leave the per-token sum unchanged; the fraud model's experts are tiny, so the extra
    arithmetic costs less than the launches it replaces."""
    gate_up = torch.matmul(hidden_states.unsqueeze(0), self.gate_up_proj.transpose(1, 2))  # [E, T, 2I]
    gate, up = gate_up.chunk(2, dim=-1)
    act = getattr(self, "act_fn", torch.nn.functional.silu)
    out = torch.matmul(act(gate) * up, self.down_proj.transpose(1, 2))  # [E, T, H]
    dense_w = torch.zeros(hidden_states.shape[0], out.shape[0], dtype=out.dtype, device=out.device)
    dense_w.scatter_(1, top_k_index, top_k_weights.to(out.dtype))
    return (out * dense_w.T.unsqueeze(-1)).sum(0)


@contextlib.contextmanager
def dense_experts(module: torch.nn.Module):
    """Routed experts of every MoE layer under `module` computed densely (graph-capturable) inside."""
    patched = [m for m in module.modules() if hasattr(m, "gate_up_proj") and hasattr(m, "down_proj")]
    for m in patched:
        m.forward = types.MethodType(_dense_experts_forward, m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


class FraudGraphs:
    """`FraudModel.fast_logits` over the fixed context length, one CUDA graph per batch bucket: a batch
    is copied into the smallest bucket that holds it (padding rows are zeros, their logits dropped);
    batches above the largest bucket go through in pieces. On CPU: the same dense-expert forward, eager."""

    def __init__(self, model, buckets: Sequence[int] = FRAUD_BUCKETS, use_graphs: bool | None = None):
        self.model = model
        self.buckets = sorted(int(b) for b in buckets)
        self.device = next(model.parameters()).device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}
        self._pool = None

    @torch.inference_mode()
    def logits(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        n = next(iter(t.values())).shape[0]
        if not self.use_graphs:
            with dense_experts(self.model):
                return self.model.fast_logits(t)
        top = self.buckets[-1]
        if n > top:
            return torch.cat([self.logits({k: v[s : s + top] for k, v in t.items()}) for s in range(0, n, top)])
        bucket = next(b for b in self.buckets if b >= n)
        if bucket not in self._graphs:
            try:
                self._capture(bucket, t)
            except RuntimeError as exc:  # e.g. an op that syncs with the host: keep serving, eagerly
                log.warning("fraud forward could not be captured in a CUDA graph (%s); running it eagerly", exc)
                self.use_graphs = False
                return self.logits(t)
        graph, static_in, static_out = self._graphs[bucket]
        for k, v in t.items():
            static_in[k][:n].copy_(v)
            static_in[k][n:].zero_()
        graph.replay()
        return static_out[:n].clone()

    def _capture(self, bucket: int, example: dict[str, torch.Tensor]):
        static_in = {k: torch.zeros((bucket, *v.shape[1:]), dtype=v.dtype, device=self.device) for k, v in example.items()}
        from models.engine.cuda_graphs import capture_graph

        with dense_experts(self.model):  # warm-up runs off the capture stream, as the engine's steps
            (graph, static_out), _ = capture_graph(lambda: self.model.fast_logits(static_in), self._pool)
        self._pool = graph.pool()
        self._graphs[bucket] = (graph, static_in, static_out)
        log.info("fraud forward captured for batch bucket %d", bucket)
        return self._graphs[bucket]
