"""Engine vs transformers' generate(), measured in the same run on the same random-weight model.

    python benchmarks/engine.py --preset lite --out $OUT [--hf-compile]     # GPU machine
    python benchmarks/engine.py --preset tiny --device cpu --quick          # dry run of every phase

Phases: ceilings (copy bandwidth, bf16 matmul rate), floors (bytes/FLOPs from the config), engine
decode ms/step at batch 1/8/64, batch-64 throughput with 512-token prompts, prefill 8K and 32K,
a 128K-token context (cache bytes, allocation, prefill + decode), peak memory, compile/capture time;
then the same for transformers (grouped_mm experts; static cache + compile at batch 1 with
--hf-compile). Prints a short table last and writes everything to $OUT/engine_bench.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models.engine import load_engine  # noqa: E402
from models.engine.random_init import random_hf_model  # noqa: E402
from models.presets import count_parameters, preset_config  # noqa: E402

R: dict = {}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def now():
    sync()
    return time.perf_counter()


def peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def reset_peak():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def phase(name):
    def wrap(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            print(f"-- {name}", flush=True)
            try:
                return fn(*a, **k)
            except Exception as exc:  # keep the other phases' numbers
                traceback.print_exc()
                R.setdefault("errors", {})[name] = repr(exc)[:500]
            finally:
                R.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - t0, 2)
        return run
    return wrap


def rand_prompts(n, length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (n, length), generator=g).tolist()


# ---- ceilings and floors -----------------------------------------------------------------------

@phase("ceilings")
def ceilings():
    if not torch.cuda.is_available():
        return
    x = torch.randn(2**30 // 2, dtype=torch.bfloat16, device="cuda")  # 1 GiB, several times the L2
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    t0 = now()
    for _ in range(20):
        y.copy_(x)
    dt = (now() - t0) / 20
    R["ceiling_copy_TBps"] = 2 * x.numel() * 2 / dt / 1e12
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    t0 = now()
    for _ in range(10):
        a @ b
    R["ceiling_bf16_TFLOPs"] = 2 * 8192**3 / ((now() - t0) / 10) / 1e12
    del x, y, a, b


def floors(cfg):
    """Bytes each decode step must read and FLOPs each prefill must do, over the measured ceilings."""
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    total = count_parameters(cfg)
    active = count_parameters(cfg, active=True)
    embed = cfg.vocab_size * h
    expert = 3 * h * cfg.moe_intermediate_size
    n_moe = L - cfg.first_k_dense_replace
    e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    bw = R.get("ceiling_copy_TBps", 4.3) * 1e12
    fl = R.get("ceiling_bf16_TFLOPs", 790) * 1e12
    out = {"total_params": total, "active_params": active}
    base = (active - embed - n_moe * k * expert)  # everything but the table lookup and routed experts
    for b in (1, 8, 64):
        touched = e * (1 - (1 - k / e) ** b)  # expected distinct experts per layer
        byts = 2 * (base + n_moe * touched * expert)
        out[f"decode_b{b}_GB"] = byts / 1e9
        out[f"decode_b{b}_floor_ms"] = byts / bw * 1e3
    qk, v, nh = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.num_attention_heads
    for s in (8192, 32768):
        linear = 2 * (active - 2 * embed) * s
        attn = L * nh * s * s * (qk + v)  # causal: half of 2*S^2 per product
        out[f"prefill_{s}_TFLOP"] = (linear + attn) / 1e12
        out[f"prefill_{s}_floor_s"] = (linear + attn) / fl
    R["floors"] = out


# ---- engine ------------------------------------------------------------------------------------

def engine_decode(engine, batch, prompt_len, steps, vocab, graph_time=True):
    handles = [engine.submit(p, steps + 6) for p in rand_prompts(batch, prompt_len, vocab, batch)]
    t0 = now()
    engine.step()  # prefill + first decode (+ capture of this bucket)
    first = now() - t0
    for _ in range(3):
        engine.step()
    t0 = now()
    for _ in range(steps):
        engine.step()
    step_ms = (now() - t0) / steps * 1e3
    res = {"step_ms": step_ms, "first_step_s": first, "tok_s": batch / step_ms * 1e3}
    if graph_time and engine.runner.use_graphs:  # the captured graph alone: no host work between
        b, s = engine.runner.buckets_for(batch, prompt_len + steps + 4)
        g, _ = engine.runner.graphs[(b, s)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            g.replay()
        end.record()
        sync()
        res["graph_replay_ms"] = start.elapsed_time(end) / 20
    while engine.step():
        pass
    assert all(h.request.done.is_set() for h in handles)
    return res


def engine_eager_step_ms(engine, batch, prompt_len, vocab):
    """One decode step without CUDA graphs (launch-bound), for where-the-time-goes."""
    use = engine.runner.use_graphs
    engine.runner.use_graphs = False
    try:
        res = engine_decode(engine, batch, prompt_len, 4, vocab, graph_time=False)
    finally:
        engine.runner.use_graphs = use
    return res["step_ms"]


def eager_step_profile(engine, batch, prompt_len, vocab):
    """The CUDA profiler's key averages over 3 eager decode steps (graphs off) at `batch` x `prompt_len`."""
    from torch.profiler import ProfilerActivity, profile

    use = engine.runner.use_graphs
    engine.runner.use_graphs = False
    try:
        [engine.submit(p, 8) for p in rand_prompts(batch, prompt_len, vocab, 7)]
        engine.step()
        engine.step()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                engine.step()
        while engine.step():
            pass
    finally:
        engine.runner.use_graphs = use
    return prof.key_averages()


def profile_decode(engine, batch, prompt_len, vocab, path):
    """Kernel time by name for eager decode steps: which kernels the graph's time goes to."""
    avg = eager_step_profile(engine, batch, prompt_len, vocab)
    table = avg.table(sort_by="cuda_time_total", row_limit=25)
    with open(path, "w") as f:
        f.write(table)
    total = sum(e.device_time_total for e in avg) / 3 / 1e3
    return table, total


@phase("engine")
def bench_engine(hf, cfg, args):
    vocab = cfg.vocab_size
    res = R.setdefault("engine", {})
    reset_peak()
    t0 = now()
    engine = load_engine(hf, max_batch=64, max_seq_len=args.seq_short, compile=args.compile)
    res["load_s"] = now() - t0
    res["cache_GiB_b64"] = engine.cache.numel() * 2 / 2**30
    # first use: torch.compile of the fused kernels + first graph captures
    t0 = now()
    engine.generate(rand_prompts(1, args.prompt, vocab, 99), 4)
    res["first_generate_s(compile+capture)"] = now() - t0
    for b in (1, 8, 64):
        res[f"decode_b{b}"] = engine_decode(engine, b, args.prompt, args.steps, vocab)
        print(f"engine decode b{b}: {res[f'decode_b{b}']}", flush=True)
    res["eager_step_ms_b1"] = engine_eager_step_ms(engine, 1, args.prompt, vocab)
    if torch.cuda.is_available():
        table, gpu_ms = profile_decode(engine, 1, args.prompt, vocab, os.path.join(args.out or ".", "engine_decode_b1_kernels.txt"))
        res["profiled_gpu_ms_per_step_b1"] = gpu_ms
        print(table[:6000])
        table, gpu_ms = profile_decode(engine, 64, args.prompt, vocab, os.path.join(args.out or ".", "engine_decode_b64_kernels.txt"))
        res["profiled_gpu_ms_per_step_b64"] = gpu_ms
    # throughput: 64 prompts of 512 tokens, args.new_tokens each (a warm pass first so captures are out)
    prompts = rand_prompts(64, args.tp_prompt, vocab, 5)
    engine.generate(prompts, 8)
    handles = [engine.submit(p, args.new_tokens) for p in prompts]
    t0 = now()
    engine.step()
    t_first = now() - t0
    t1 = now()
    while engine.step():
        pass
    t_rest = now() - t1
    n_out = sum(len(h.result()) for h in handles)
    res["throughput_b64"] = {"prompt_len": args.tp_prompt, "new_tokens": args.new_tokens, "output_tokens": n_out,
                             "prefill_plus_first_step_s": t_first, "total_s": t_first + t_rest,
                             "output_tok_s_end_to_end": n_out / (t_first + t_rest),
                             "output_tok_s_decode": 64 * (args.new_tokens - 1) / t_rest}
    print(f"engine throughput: {res['throughput_b64']}", flush=True)
    res["captured_graphs"] = sorted(engine.runner.graphs)
    res["capture_s_total"] = engine.runner.capture_seconds
    del engine
    gc.collect()
    if torch.cuda.is_available():  # the same graphs with the plain (uncompiled) decode kernels
        from models.engine import kernels

        kernels.disable_compile()
        engine = load_engine(hf, max_batch=64, max_seq_len=args.seq_short, compile=False)
        for b in (1, 64):
            res[f"nocompile_decode_b{b}"] = engine_decode(engine, b, args.prompt, args.steps, vocab)
            print(f"engine (no compile) decode b{b}: {res[f'nocompile_decode_b{b}']}", flush=True)
        if args.compile is not False:
            kernels.enable_compile()
        del engine
    res["peak_GiB_short"] = peak_gib()
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    bench_long(hf, cfg, args)


@phase("engine_long")
def prefill_backends(engine, prompt):
    """One prompt's prefill (one plain causal chunk) with each SDPA backend forced, V padded to Q/K's head dim
    or not (flash needs it padded); a backend that refuses the shapes is recorded with its error. `cudnn` is what
    the engine runs on a card of layers.PREFILL_CUDNN_CAPABILITIES, `cudnn_padv` PyTorch's own choice there before."""
    from torch.nn.attention import SDPBackend

    from models.engine import layers

    out = {}
    for name, backend, pad in (("flash_padv", SDPBackend.FLASH_ATTENTION, True),
                               ("efficient", SDPBackend.EFFICIENT_ATTENTION, False),
                               ("cudnn", SDPBackend.CUDNN_ATTENTION, False),
                               ("cudnn_padv", SDPBackend.CUDNN_ATTENTION, True)):
        layers.PAD_V_FOR_FLASH, layers.PREFILL_SDPA_BACKENDS = pad, (backend,)
        try:
            engine.generate(prompt, 1)  # first use of this backend
            t0 = now()
            engine.generate(prompt, 1)
            out[name] = now() - t0
        except Exception as e:  # noqa: BLE001 - a backend that cannot run these shapes is a result
            out[name] = f"{type(e).__name__}: {str(e)[:160]}"
    layers.PAD_V_FOR_FLASH, layers.PREFILL_SDPA_BACKENDS = True, None
    print(f"prefill backends: {out}", flush=True)
    return out


def prefill_ab(engine, prompt, label, variants, switch):
    """One prompt's prefill under each variant in turn (switch(variant) sets it), twice over, best of two each:
    {variant: s, variant_again: s}. The last variant is left set."""
    out = {}
    for again in ("", "_again"):
        for name in variants:
            switch(name)
            engine.generate(prompt, 1)
            t0 = now()
            engine.generate(prompt, 1)
            out[name + again] = now() - t0
    print(f"prefill {label}: {out}", flush=True)
    return out


def prefill_kernel_ab(engine, prompt, label, modules, switch_attr):
    """The PyTorch ops ("ops") against a Triton kernel ("kernel") behind the boolean `switch_attr` of `modules`, the
    ones where it is on (none: no Triton here, nothing to compare); left on."""
    modules = [m for m in modules if getattr(m, switch_attr, False)]
    if not modules:
        return {}

    def switch(name):
        for m in modules:
            setattr(m, switch_attr, name == "kernel")
    return prefill_ab(engine, prompt, label, ("ops", "kernel"), switch)


def prefill_combine(engine, prompt):
    """The MoE's grouped-GEMM combine as ops (gather, compiled weighted sum, adds) against the one Triton pass
    (fused_moe.combine_sorted)."""
    return prefill_kernel_ab(engine, prompt, "combine", [b.mlp for b in engine.model.blocks], "combine_kernel")


def prefill_query(engine, prompt):
    """The prefill's whole query as the compiled rope and a cat against one Triton pass (fused_mla.prefill_query)."""
    return prefill_kernel_ab(engine, prompt, "query", [b.attn for b in engine.model.blocks], "query_kernel")


def prefill_silu(engine, prompt):
    """SiLU(gate) * up at prefill sizes: the compiled PyTorch version against the Triton pass (fused_silu.py)."""
    from models.engine import kernels as K

    compiled = K._compiled.get("silu_mul")
    triton_pass = K.prefill.silu_mul
    if compiled is None or triton_pass is compiled:  # no Triton pass here: nothing to compare
        return {}

    def switch(name):
        K.prefill.silu_mul = triton_pass if name == "triton" else compiled
    return prefill_ab(engine, prompt, "silu_mul", ("compiled", "triton"), switch)


def profile_prefill(engine, prompt, path):
    """Kernel time by name of one prompt's prefill (written to path); returns the GPU ms."""
    from torch.profiler import ProfilerActivity, profile

    engine.generate(prompt, 1)
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(prompt, 1)
        sync()
    avg = prof.key_averages()
    with open(path, "w") as f:
        f.write(avg.table(sort_by="cuda_time_total", row_limit=30))
    return sum(e.device_time_total for e in avg) / 1e3


def bench_long(hf, cfg, args):
    """Prefill 8K/32K (+ chunking sweep), and one slot of max_seq_len tokens (128K): fit, prefill, decode."""
    vocab = cfg.vocab_size
    res = R.setdefault("engine", {})
    reset_peak()
    engine = load_engine(hf, max_batch=1, max_seq_len=args.seq_long, compile=args.compile)
    res["cache_bytes_per_token"] = engine.model.args.cache_bytes_per_token()
    res["hf_layout_cache_bytes_per_token"] = engine.model.args.hf_cache_bytes_per_token()
    res["long_cache_GiB"] = engine.cache.numel() * 2 / 2**30
    engine.generate(rand_prompts(1, 100, vocab, 11), 4)  # serve a short request first, as a replica would
    for n in args.prefill_lens:
        if n + 1 > args.seq_long:
            continue
        p = rand_prompts(1, n, vocab, n)
        engine.generate(p, 1)  # warm
        times = []
        for _ in range(2 if n <= 8192 else 1):
            t0 = now()
            engine.generate(p, 1)
            times.append(now() - t0)
        res[f"prefill_{n}_s"] = min(times)
        print(f"engine prefill {n}: {times}", flush=True)
    # prefill variants at the longest length: chunk size x (V padded for flash | unequal head dims); on a card of
    # layers.PREFILL_CUDNN_CAPABILITIES a plain chunk takes cuDNN with V unpadded either way, so there the padding
    # changes only the continued chunks (8K)
    from models.engine import layers

    default_chunk, default_cont = engine.prefill_chunk, engine.prefill_chunk_continued
    n = max(args.prefill_lens)
    p = rand_prompts(1, n, vocab, n)
    sweep = {}
    for chunk in (8192, 32768):
        for pad in (True, False):
            layers.PAD_V_FOR_FLASH, engine.prefill_chunk, engine.prefill_chunk_continued = pad, chunk, chunk
            engine.generate(p, 1) if (chunk, pad) == (8192, False) else None  # first use of new kernels
            t0 = now()
            engine.generate(p, 1)
            sweep[f"chunk{chunk}_padv{int(pad)}"] = now() - t0
    layers.PAD_V_FOR_FLASH, engine.prefill_chunk, engine.prefill_chunk_continued = True, default_chunk, default_cont
    res[f"prefill_{n}_variants_s"] = sweep
    print(f"prefill variants: {sweep}", flush=True)
    res[f"prefill_{n}_backends_s"] = prefill_backends(engine, p)
    res[f"prefill_{n}_combine_s"] = prefill_combine(engine, p)
    res[f"prefill_{n}_silu_mul_s"] = prefill_silu(engine, p)
    res[f"prefill_{n}_query_s"] = prefill_query(engine, p)
    if args.out and torch.cuda.is_available():
        res[f"prefill_{n}_gpu_ms"] = profile_prefill(engine, p, os.path.join(args.out, f"engine_prefill_{n}_kernels.txt"))
    if args.only_prefill:
        return
    n_ctx = args.seq_long - 16
    p = rand_prompts(1, n_ctx, vocab, 3)
    h = engine.submit(p[0], 16)
    t0 = now()
    engine.step()
    res["context_long_prefill_s"] = now() - t0
    engine.step()
    engine.step()
    t0 = now()
    k = 0
    while engine.step():
        k += 1
    res["context_long_decode_ms"] = (now() - t0) / max(k, 1) * 1e3
    res["context_long_tokens"] = n_ctx + len(h.result())
    if args.profile_long and torch.cuda.is_available():  # kernel times of one eager step at the 128K bucket
        from torch.profiler import ProfilerActivity, profile

        tok = torch.tensor([5], device="cuda")
        pos = torch.tensor([args.seq_long - 1], device="cuda")
        engine.runner.use_graphs = False
        engine.runner.step(tok, pos, args.seq_long)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            engine.runner.step(tok, pos, args.seq_long)
            sync()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
        print(table)
        if args.out:
            with open(os.path.join(args.out, "engine_decode_128k_kernels.txt"), "w") as f:
                f.write(table)
    res["peak_GiB_long"] = peak_gib()
    res["compile_enabled"] = bool(args.compile if args.compile is not None else torch.cuda.is_available())
    del engine
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


# ---- transformers ------------------------------------------------------------------------------

class StepClock:
    """A logits processor that stamps each generation step (generate syncs on every step)."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


def hf_decode(hf, batch, prompt_len, steps, vocab, **kw):
    from transformers import LogitsProcessorList

    ids = torch.tensor(rand_prompts(batch, prompt_len, vocab, batch), device=hf.device)
    clock = StepClock()
    t0 = now()
    hf.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                logits_processor=LogitsProcessorList([clock]), pad_token_id=0, **kw)
    total = now() - t0
    gaps = [b - a for a, b in zip(clock.stamps[1:], clock.stamps[2:])]
    step_ms = statistics.median(gaps) * 1e3
    return {"step_ms": step_ms, "total_s": total, "tok_s": batch / step_ms * 1e3,
            "prefill_plus_first_s": clock.stamps[0] - t0 if clock.stamps else None}


@phase("transformers")
def bench_hf(hf, cfg, args):
    vocab = cfg.vocab_size
    res = R.setdefault("transformers", {})
    res["config"] = "experts_implementation=grouped_mm, dynamic cache, sdpa, no compile"
    reset_peak()
    hf_decode(hf, 1, args.prompt, 4, vocab)  # warm
    for b in (1, 8, 64):
        res[f"decode_b{b}"] = hf_decode(hf, b, args.prompt, args.hf_steps, vocab)
        print(f"hf decode b{b}: {res[f'decode_b{b}']}", flush=True)
    r = hf_decode(hf, 64, args.tp_prompt, args.hf_steps, vocab)
    n_out = 64 * args.hf_steps
    res["throughput_b64"] = {"prompt_len": args.tp_prompt, "new_tokens": args.hf_steps, "total_s": r["total_s"],
                             "output_tok_s_end_to_end": n_out / r["total_s"], "output_tok_s_decode": r["tok_s"]}
    for n in args.prefill_lens:
        if n > args.hf_prefill_max:
            continue
        ids = torch.tensor(rand_prompts(1, n, vocab, n), device=hf.device)
        with torch.inference_mode():
            hf.model(ids[:, : min(n, 1024)])
            t0 = now()
            hidden = hf.model(ids).last_hidden_state
            hf.lm_head(hidden[:, -1])
            res[f"prefill_{n}_s"] = now() - t0
        del hidden
        print(f"hf prefill {n}: {res[f'prefill_{n}_s']}", flush=True)
    res["peak_GiB"] = peak_gib()


@phase("transformers_compiled")
def bench_hf_compiled(hf, cfg, args):
    res = R.setdefault("transformers_static_compile", {})
    res["config"] = "experts_implementation=grouped_mm, cache_implementation=static, generate() auto-compile"
    t0 = now()
    hf_decode(hf, 1, args.prompt, args.hf_steps, cfg.vocab_size, cache_implementation="static")
    res["first_call_s(compile)"] = now() - t0
    res["decode_b1"] = hf_decode(hf, 1, args.prompt, args.hf_steps, cfg.vocab_size, cache_implementation="static")
    print(f"hf static+compile b1: {res}", flush=True)


def table():
    e, h, hc, f = R.get("engine", {}), R.get("transformers", {}), R.get("transformers_static_compile", {}), R.get("floors", {})

    def g(d, *ks, fmt="{:.2f}"):
        for k in ks:
            d = d.get(k, {}) if isinstance(d, dict) else {}
        return fmt.format(d) if isinstance(d, (int, float)) else "-"

    rows = [("metric", "engine", "HF grouped_mm", "HF static+compile", "floor", "target")]
    for b in (1, 8, 64):
        rows.append((f"decode ms/step b{b}", g(e, f"decode_b{b}", "step_ms"), g(h, f"decode_b{b}", "step_ms"),
                     g(hc, f"decode_b{b}", "step_ms") if b == 1 else "-", g(f, f"decode_b{b}_floor_ms"),
                     "<= 4" if b == 1 else ""))
    rows.append(("no-compile decode ms b1 / b64", g(e, "nocompile_decode_b1", "step_ms") + " / " + g(e, "nocompile_decode_b64", "step_ms"), "", "", "", ""))
    rows.append(("graph replay ms b1 / b64", g(e, "decode_b1", "graph_replay_ms") + " / " + g(e, "decode_b64", "graph_replay_ms"), "", "", "", ""))
    rows.append(("out tok/s b64 x512 decode", g(e, "throughput_b64", "output_tok_s_decode", fmt="{:.0f}"),
                 g(h, "throughput_b64", "output_tok_s_decode", fmt="{:.0f}"), "", g(f, "decode_b64_floor_ms", fmt="{:.1f} ms/step"), ">= 4000"))
    rows.append(("out tok/s b64 x512 end-to-end", g(e, "throughput_b64", "output_tok_s_end_to_end", fmt="{:.0f}"),
                 g(h, "throughput_b64", "output_tok_s_end_to_end", fmt="{:.0f}"), "", "", ""))
    for n in (8192, 32768):
        rows.append((f"prefill {n // 1024}K s", g(e, f"prefill_{n}_s", fmt="{:.3f}"), g(h, f"prefill_{n}_s", fmt="{:.3f}"), "",
                     g(f, f"prefill_{n}_floor_s", fmt="{:.3f}"), "<= 1.5" if n == 32768 else ""))
    rows.append(("long ctx tokens / prefill s / decode ms", g(e, "context_long_tokens", fmt="{:d}") + " / " +
                 g(e, "context_long_prefill_s") + " / " + g(e, "context_long_decode_ms"), "", "", "", "128K fits"))
    rows.append(("cache bytes/token", g(e, "cache_bytes_per_token", fmt="{:d}"), g(e, "hf_layout_cache_bytes_per_token", fmt="{:d}"), "", "", ""))
    rows.append(("peak GiB (short / long)", g(e, "peak_GiB_short", fmt="{:.1f}") + " / " + g(e, "peak_GiB_long", fmt="{:.1f}"),
                 g(h, "peak_GiB", fmt="{:.1f}"), "", "", ""))
    rows.append(("compile+capture s", g(e, "first_generate_s(compile+capture)", fmt="{:.1f}") + " (+" + g(e, "capture_s_total", fmt="{:.1f}") + " capture)",
                 "", g(hc, "first_call_s(compile)", fmt="{:.1f}"), "", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--quick", action="store_true", help="small sizes: a dry run of every phase")
    ap.add_argument("--hf-compile", action="store_true", help="also time transformers' static cache + compile (batch 1)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--only-long", action="store_true", help="only the long-context engine phase (no transformers)")
    ap.add_argument("--only-prefill", action="store_true", help="only prefill 8K/32K, chunking and SDPA backends")
    ap.add_argument("--profile-long", action="store_true", help="kernel profile of a decode step at the longest bucket")
    ap.add_argument("--no-compile", dest="compile", action="store_false", default=None)
    args = ap.parse_args()
    q = args.quick
    args.prompt, args.steps, args.hf_steps = (16, 4, 4) if q else (128, 32, 24)
    args.tp_prompt, args.new_tokens = (32, 8) if q else (512, 128)
    args.seq_short = 64 if q else 1024
    args.seq_long = 512 if q else 131072
    args.prefill_lens = [64, 256] if q else [8192, 32768]
    args.hf_prefill_max = 32768
    dev = torch.device(args.device)
    cfg = preset_config(args.preset)
    import transformers

    R.update({"preset": args.preset, "device": str(dev), "torch": torch.__version__, "transformers_version": transformers.__version__,
              "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "args": vars(args)})
    print(json.dumps({k: R[k] for k in ("preset", "gpu", "torch", "transformers_version")}), flush=True)
    ceilings()
    floors(cfg)
    t0 = now()
    hf = random_hf_model(cfg, dev, torch.float32 if args.quick and dev.type == "cpu" else torch.bfloat16, experts_implementation="grouped_mm" if dev.type == "cuda" else "eager")
    R["build_model_s"] = now() - t0
    if args.only_long or args.only_prefill:
        bench_long(hf, cfg, args)
    else:
        bench_engine(hf, cfg, args)
    if not (args.skip_hf or args.only_long or args.only_prefill):
        bench_hf(hf, cfg, args)
        if args.hf_compile:
            bench_hf_compiled(hf, cfg, args)
    if args.out:
        with open(os.path.join(args.out, "engine_bench.json"), "w") as f:
            json.dump(R, f, indent=1, default=str)
    print("\n== floors:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in R["floors"].items()}))
    print(f"== ceilings: copy {R.get('ceiling_copy_TBps', 0):.2f} TB/s, bf16 matmul {R.get('ceiling_bf16_TFLOPs', 0):.0f} TFLOP/s;"
          f" errors: {R.get('errors', {})}")
    table()


if __name__ == "__main__":
    main()
