"""Fast MoE inference engine for the Argus model family (any transformers DeepSeek-V3-class checkpoint).

In the spirit of gpt-fast: plain PyTorch, a static preallocated cache, CUDA-graph decode.

API
---
    from models.engine import load_engine

    engine = load_engine(hf_model, max_batch=64, max_seq_len=8192, device="cuda")

    # whole batches (continuous batching inside): generated ids per prompt, prompt excluded
    outs = engine.generate([[1, 2, 3], [4, 5]], max_new_tokens=32)              # greedy
    outs = engine.generate(prompts, 32, temperature=0.8, top_k=50, stop_token_ids=[eos])

    # streaming: a handle per request, iterate for tokens as they come (or pass on_token=callback)
    handle = engine.submit([1, 2, 3], max_new_tokens=64, on_token=lambda req_id, tok: ...)
    for tok in handle: ...
    engine.start()   # optional: the scheduler loop in a background thread (one per replica);
    engine.stop()    # without it, iterating a handle or calling generate() drives the loop

    # prefill-only forward for classification-style heads (fraud scoring, fixed sequence buckets)
    hidden = engine.prefill_hidden(token_ids, lengths)        # [B, L, H], final-normed
    logits = engine.prefill_logits(token_ids, lengths, last_only=True)   # [B, vocab]

`load_engine(hf_model, max_batch, max_seq_len, device=None, compile=None, use_cuda_graphs=None,
prefill_chunk=32768, prefill_chunk_continued=8192, prefill_budget=None, mixed_step=None, fused_moe=None, packed_backlog=None,
packed_fused_moe=None, attention_kernel=None, packed_max_pieces=None, packed_block_m=None)`
takes a `DeepseekV3ForCausalLM` (weights shared, not copied) and returns an `Engine`; for any other model
family it returns a `TransformersEngine` with the same methods over transformers' `generate()`.
`mixed_step="graph"` (with a `prefill_budget` C): while requests decode, a step carries up to
`packed_max_pieces` (default `cuda_graphs.PACKED_MAX_PIECES`, 4) prompt pieces packed first come, first served into an area of C
rows (each of its own slot, each after the first at an aligned row, the last one cut), run with the decode rows
as one packed forward in fixed shapes (decode rows padded to a batch bucket, the area to C/4, C/2 or C rows,
absorbed attention for both), a CUDA graph per bucket; with `packed_backlog` set (default None: off), while more than that many prompt tokens wait
for a free slot, whole prompts are prefilled behind the decode graph instead (measured no faster at saturation). `mixed_step=None` (the default,
`default_mixed_step`) is "graph" with C = `PACKED_CHUNK_DEFAULT` (1,024; also `mixed_step="graph"` without a budget) wherever decode runs in CUDA graphs, else
False (whole prompts behind each decode step; CPU).
`compile` (default: on CUDA) fuses the elementwise kernels of decode and prefill with torch.compile;
`fused_moe` (default: `FUSED_MOE_DEFAULT` on CUDA, off on CPU) runs steps of at most 64 tokens through
the fused router and fused MoE kernels (routed + shared experts in two Triton kernels; on CPU their
PyTorch reference), and with `packed_fused_moe` (default `PACKED_FUSED_MOE_DEFAULT`) the packed mixed steps
too, in blocks of `packed_block_m` rows an expert (default `fused_moe.BLOCK_M_LARGE`, 128; steps of over
`MoE.PACKED_FUSED_MAX_TOKENS` tokens take the grouped GEMM); on CUDA the decode attention's prologue (latent norm, ropes, cache write) is one
Triton kernel too, and with `attention_kernel` (default `ATTENTION_KERNEL_DEFAULT` on CUDA) the decode rows'
attention is one flash-decoding pass over the latent cache (`fused_mla.latent_attention`). `use_cuda_graphs` (default: on CUDA) captures decode steps. On CPU everything runs
eagerly (experts through `torch._grouped_mm`, or a loop over experts where it is missing).

Layout: `config.py` (shape), `kernels.py` (numeric kernels), `layers.py` (MLA attention, router,
grouped experts, MLP, block), `model.py` (decoder, prefill/decode), `cuda_graphs.py` (graph buckets),
`scheduler.py` (continuous batching, streaming, the `Engine`), `fallback.py`, `random_init.py`;
Triton kernels: `fused_router.py` (routing, alignment), `fused_moe.py` (experts), `fused_silu.py` (prefill's SiLU * up), `fused_mla.py`
(decode attention prologue and attention, packed pieces' attention, prefill's query), `triton_moe.py` (the per-pair GEMV of the unfused path).

Cache: per layer and slot, one row per token of [normed kv latent (kv_lora_rank) | roped key
(qk_rope_head_dim)]: 576 values = 1,152 bytes in bf16 for the lite shape, 30.4 KiB/token over 27
layers. Decode uses the absorbed form (W_UK folded into the query, W_UV after attention over the
latent); prefill expands per-head K/V from the latent and runs SDPA (causal, chunked beyond
`prefill_chunk` tokens; 32K chunks measured fastest on an H200), which is transformers' own arithmetic.
"""

from __future__ import annotations

import torch

from .config import EngineArgs, UnsupportedModelError
from .cuda_graphs import PACKED_MAX_PIECES
from .scheduler import Engine, RequestError, RequestHandle

__all__ = ["Engine", "EngineArgs", "RequestError", "RequestHandle", "UnsupportedModelError", "default_mixed_step",
           "load_engine"]

# The fused router + fused MoE kernels for steps of at most 64 tokens (fused_router.py, fused_moe.py), on CUDA;
# on CPU the old path stays the default (the kernels' PyTorch reference is for tests).
FUSED_MOE_DEFAULT = True  # measured on an H100: faster at every batch (benchmarks/ENGINE_NOTES.md)
# Packed mixed steps (hundreds of tokens) through the same kernels in 128-row blocks instead of the grouped GEMM.
PACKED_FUSED_MOE_DEFAULT = True
# Decode attention in one flash-decoding pass over the latent cache (fused_mla.latent_attention), on CUDA.
ATTENTION_KERNEL_DEFAULT = True
# The packed mixed step in CUDA graphs with an area of this many prompt rows, wherever decode is graphed. A
# saturated packed engine is bound by its area (a step takes at most this many prompt tokens): measured on an
# H100 (benchmarks/results/engine_serving_area_h100.json), 48 req/s gave 2,214 / 2,415 / 2,336 output tok/s at
# 512 / 1,024 / 2,048 rows, and 8 req/s TPOT p99 15.0 / 15.0 / 15.8 ms, TTFT p99 146 / 124 / 95 ms.
PACKED_CHUNK_DEFAULT = 1024


def default_mixed_step(cuda_graphs: bool) -> str | bool:
    """The mixed step `load_engine(mixed_step=None)` takes: "graph" where decode runs in CUDA graphs, else False
    (on CPU the packed step runs eagerly and its padding costs more than the prefill it interleaves)."""
    return "graph" if cuda_graphs else False


def load_engine(
    hf_model,
    max_batch: int = 8,
    max_seq_len: int = 4096,
    device: str | torch.device | None = None,
    compile: bool | None = None,
    use_cuda_graphs: bool | None = None,
    prefill_chunk: int = 32768,
    max_prefill_tokens: int = 32768,
    prefill_chunk_continued: int = 8192,
    prefill_budget: int | None = None,
    mixed_step: bool | str | None = None,
    fused_moe: bool | None = None,
    packed_backlog: int | None = None,
    packed_fused_moe: bool | None = None,
    attention_kernel: bool | None = None,
    packed_max_pieces: int | None = None,
    packed_block_m: int | None = None,
):
    """An engine over `hf_model`'s weights; see the module docstring."""
    if device is not None:
        hf_model = hf_model.to(device)
    hf_model.eval()
    dev = next(hf_model.parameters()).device
    from .model import EngineModel

    try:
        model = EngineModel(hf_model, max_seq_len)
    except UnsupportedModelError:
        from .fallback import TransformersEngine

        return TransformersEngine(hf_model, max_batch, max_seq_len)
    on_gpu = dev.type == "cuda"
    model.set_fused_moe((FUSED_MOE_DEFAULT and on_gpu) if fused_moe is None else fused_moe,
                        PACKED_FUSED_MOE_DEFAULT if packed_fused_moe is None else packed_fused_moe, packed_block_m)
    model.set_attention_kernel((ATTENTION_KERNEL_DEFAULT and on_gpu) if attention_kernel is None else attention_kernel)
    if compile if compile is not None else on_gpu:
        from . import kernels

        kernels.enable_compile()
    graphs = on_gpu if use_cuda_graphs is None else use_cuda_graphs
    if mixed_step is None:
        mixed_step = default_mixed_step(graphs)
    if mixed_step == "graph" and prefill_budget is None:
        prefill_budget = PACKED_CHUNK_DEFAULT
    return Engine(
        model,
        max_batch,
        use_cuda_graphs=graphs,
        prefill_chunk=prefill_chunk,
        max_prefill_tokens=max_prefill_tokens,
        prefill_chunk_continued=prefill_chunk_continued,
        prefill_budget=prefill_budget,
        mixed_step=mixed_step,
        packed_backlog=packed_backlog,
        packed_max_pieces=PACKED_MAX_PIECES if packed_max_pieces is None else packed_max_pieces,
    )
