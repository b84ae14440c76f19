"""Fused router + fused MoE kernels against the engine's previous path, then the engine with each, one GPU.

    python benchmarks/engine_kernels.py --out $OUT       # lite preset, bf16, random weights (GPU)
    python benchmarks/engine_kernels.py --dry-run        # tiny preset on CPU: the PyTorch references only

1. Ceiling: device-to-device copy bandwidth (bytes read + written).
2. Correctness per token count T (first MoE layer, fresh random inputs): the fused kernels and the old path
   (router + Triton GEMV / grouped GEMM + shared MLP), both under the reference routing, against a float32
   reference: relative error ||out - ref|| / ||ref||; the router kernel's expert sets against the PyTorch
   router (tokens whose sets differ; max weight error where equal).
3. Time per MoE layer, CUDA graphs over all MoE layers (each layer its own weights and inputs, so the
   weights stream from memory as in a decode step): old vs fused (first version and current) MoE forward
   (router .. residual add); the alignment in compiled PyTorch vs its kernel;
   the two expert kernels alone, with their bandwidth over the bytes of the experts touched (routed +
   shared) against the copy ceiling; the router kernel vs the PyTorch router.
4. The engine with the first fused version (alignment in compiled PyTorch, router blocks of 128) and the
   current one (alignment kernel, autotuned router), on the same model: decode ms/step at batch 1/8/32/64 (512-token
   prompts; host loop and graph replay), greedy tokens of a batch compared, a kernel profile of
   eager decode steps at batch 1 and 32 (kernel count and time by name).
Prints a table last; everything goes to $OUT/engine_kernels.json.
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

from models.engine import fused_moe as FM  # noqa: E402
from models.engine import fused_router as FR  # noqa: E402
from models.engine import kernels as K  # noqa: E402
from models.engine import load_engine  # noqa: E402
from models.engine import fused_mla as ML  # noqa: E402
from models.engine.random_init import random_hf_model  # noqa: E402
from models.presets import preset_config  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_serving import set_kernel_version  # noqa: E402
from engine import eager_step_profile, engine_decode, now, rand_prompts, sync  # noqa: E402

R: dict = {}
CUDA = torch.cuda.is_available()



def save(args):
    if args.out:
        with open(os.path.join(args.out, "engine_kernels.json"), "w") as f:
            json.dump(R, f, indent=1, default=str)


def run_phase(phase, fn, args):
    """R[phase] = fn(), timed into R[phase_s] and saved; a phase that fails is recorded under R["errors"]
    and the later phases still run (one device call measures them all)."""
    t0 = time.perf_counter()
    try:
        R[phase] = fn()
    except Exception as exc:  # noqa: BLE001 - keep the other phases' numbers
        traceback.print_exc()
        R.setdefault("errors", {})[phase] = repr(exc)[:500]
    R[f"{phase}_s"] = time.perf_counter() - t0
    save(args)


def graph_ms(fn, iters=50, reps=5):
    """Median ms of fn() replayed from a CUDA graph (captured as the engine captures its steps)."""
    from models.engine.cuda_graphs import capture_graph

    (g, _), _ = capture_graph(fn, None)
    for _ in range(3):
        g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            g.replay()
        b.record()
        sync()
        times.append(a.elapsed_time(b) / iters)
    return statistics.median(times)


def ceiling():
    x = torch.randn(2**30 // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    t0 = now()
    for _ in range(20):
        y.copy_(x)
    R["ceiling_copy_TBps"] = 2 * x.numel() * 2 / ((now() - t0) / 20) / 1e12
    del x, y


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def moe_layers(engine):
    return [b.mlp for b in engine.model.blocks if hasattr(b.mlp, "experts")]


def old_path(moe, x, weights, idx, kk):
    out = moe.experts(x, weights, idx, kk)
    return out + moe.shared(x, kk) if moe.shared is not None else out


def correctness(moe, cfg, tokens, dev, dtype):
    a = moe.args
    res = {}
    for t in tokens:
        g = torch.Generator(device=dev).manual_seed(1000 + t)
        x = torch.randn(t, cfg.hidden_size, device=dev, dtype=dtype, generator=g)
        pe_r, pw_r = FR.route_pairs_reference(x, moe.router.weight, moe.router.bias, a.top_k, a.n_group, a.topk_group,
                                              a.norm_topk_prob, a.routed_scaling_factor, moe.weights.n_shared, K.eager)
        zeros32 = torch.zeros(t, cfg.hidden_size, device=dev)
        ref = FM.fused_moe_reference(x.float(), pe_r, pw_r, moe.weights, zeros32)
        per = pe_r.numel() // t
        idx = pe_r.view(t, per)[:, : a.top_k]
        w = pw_r.view(t, per)[:, : a.top_k]
        old = old_path(moe, x, w, idx, K.eager)
        row = {"old_rel_err": rel(old, ref)}
        if moe.kernels:
            sp, be = K.eager.moe_align(pe_r, moe.weights.n_experts)
            y = FM.fused_moe(x, pe_r, pw_r, moe.weights, sp, be)
            new = FM.combine(y, torch.zeros_like(x), t)
            row["fused_rel_err"] = rel(new, ref)
            row["fused_nan"] = bool(torch.isnan(y).any())
            sp_k, be_k = FM.moe_align_triton(pe_r, moe.weights.n_experts)
            row["align_kernel_equal"] = bool(torch.equal(sp, sp_k) and torch.equal(be, be_k))
        if moe.router_kernel and moe.kernels:
            pe_k, pw_k = moe.route_pairs(x, K.eager)
            pe2, pw2, sp2, be2 = FR.route_and_align(x, moe.gate_weight, moe.router.bias, a.top_k, a.norm_topk_prob,
                                                    a.routed_scaling_factor, moe.weights.n_shared)
            sp3, be3 = K.eager.moe_align(pe2, moe.weights.n_experts)
            row["route_align_pairs_equal"] = bool(torch.equal(pe2, pe_k))
            row["route_align_weight_max_err"] = (pw2 - pw_k).abs().max().item()
            row["route_align_blocks_equal"] = bool(torch.equal(sp2, sp3) and torch.equal(be2, be3))
        if moe.router_kernel:
            pe, pw = moe.route_pairs(x, K.eager)
            s_k, o_k = pe.view(t, per).sort(1)
            s_r, o_r = pe_r.view(t, per).sort(1)
            same = (s_k == s_r).all(1)
            row["router_tokens_differ"] = int((~same).sum())
            if same.any():
                wk, wr = pw.view(t, per).gather(1, o_k), pw_r.view(t, per).gather(1, o_r)
                row["router_weight_max_err"] = (wk[same] - wr[same]).abs().max().item()
        res[t] = row
        print(f"check T={t}: {row}", flush=True)
    return res


def prologue_check(engine, tokens, dev, dtype):
    """The attention prologue kernel vs the compiled PyTorch kernels it replaces: cache rows, q_rope, time."""
    res = {}
    m, a = engine.model, engine.model.args
    attns = [b.attn for b in m.blocks]
    for t in tokens:
        g = torch.Generator(device=dev).manual_seed(7 + t)
        hs = [torch.randn(t, attn.w_in.shape[0], device=dev, dtype=dtype, generator=g) for attn in attns]
        pos = torch.randint(0, m.max_seq_len - 1, (t,), device=dev, generator=g)
        cos, sin = m.rope.cos[pos], m.rope.sin[pos]
        caches = [torch.zeros(t, m.max_seq_len, a.latent_dim, device=dev, dtype=dtype) for _ in range(2)]

        def run(kernel, cache):
            def fn():
                for attn, h in zip(attns, hs):
                    f = ML.mla_prologue if kernel else ML.mla_prologue_reference
                    extra = () if kernel else (K.decode,)
                    f(h[:, : attn.split_in], h[:, attn.split_in :], cos, sin, attn.kv_norm, attn.kv_eps, cache, pos,
                      a.num_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank, a.rope_interleave, *extra)
            return fn
        attn, h = attns[0], hs[0]
        args = (h[:, : attn.split_in], h[:, attn.split_in :], cos, sin, attn.kv_norm, attn.kv_eps)
        tail = (pos, a.num_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank, a.rope_interleave)
        q1 = ML.mla_prologue(*args, caches[0], *tail)
        q2 = ML.mla_prologue_reference(*args, caches[1], *tail, K.decode)
        row = {"q_rope_max_err": (q1.float() - q2.float()).abs().max().item(),
               "cache_max_err": (caches[0].float() - caches[1].float()).abs().max().item(),
               "cache_rows_bitwise_equal": bool(torch.equal(caches[0], caches[1]))}
        row["reference_us"] = graph_ms(run(False, caches[1])) / len(attns) * 1e3
        row["kernel_us"] = graph_ms(run(True, caches[0])) / len(attns) * 1e3
        res[t] = row
        print(f"prologue T={t}: {row}", flush=True)
    return res


def layer_times(layers, cfg, tokens, dev, dtype):
    """ms per MoE layer, graphs over all layers (each its own inputs)."""
    res = {}
    a = layers[0].args
    ew = layers[0].weights
    expert_bytes = 3 * ew.inter * ew.hidden * 2
    for t in tokens:
        g = torch.Generator(device=dev).manual_seed(t)
        xs = [torch.randn(t, cfg.hidden_size, device=dev, dtype=dtype, generator=g) for _ in layers]
        rs = [torch.randn(t, cfg.hidden_size, device=dev, dtype=dtype, generator=g) for _ in layers]
        row = {}

        def run_all(flag, align_kernel=True, router_block_h=None, route_align=True):
            for m in layers:
                m.fused, m.align_kernel, m.router_block_h, m.route_align = flag, align_kernel, router_block_h, route_align

            def fn():
                for m, x, r in zip(layers, xs, rs):
                    m(x, K.decode, residual=r)
            return fn

        row["old_moe_us"] = graph_ms(run_all(False)) / len(layers) * 1e3
        if layers[0].kernels:
            row["fused_v1_moe_us"] = graph_ms(run_all(True, False, 128, False)) / len(layers) * 1e3
            row["fused_v2_moe_us"] = graph_ms(run_all(True, True, None, False)) / len(layers) * 1e3
            row["fused_moe_us"] = graph_ms(run_all(True)) / len(layers) * 1e3

            def route_align():
                for m, x in zip(layers, xs):
                    FR.route_and_align(x, m.gate_weight, m.router.bias, a.top_k, a.norm_topk_prob,
                                       a.routed_scaling_factor, m.weights.n_shared)
            row["route_and_align_us"] = graph_ms(route_align) / len(layers) * 1e3

            def align(kernel):
                pes = [m.route_pairs(x, K.eager)[0] for m, x in zip(layers, xs)]

                def fn():
                    for m, pe in zip(layers, pes):
                        if kernel:
                            FM.moe_align_triton(pe, m.weights.n_experts)
                        else:
                            K.decode.moe_align(pe, m.weights.n_experts)
                return fn
            row["align_torch_us"] = graph_ms(align(False)) / len(layers) * 1e3
            row["align_kernel_us"] = graph_ms(align(True)) / len(layers) * 1e3
            pairs = [m.route_pairs(x, K.eager) for m, x in zip(layers, xs)]
            aligned = [K.eager.moe_align(pe, m.weights.n_experts) for m, (pe, _) in zip(layers, pairs)]
            touched = sum(int(torch.unique(pe).numel()) for pe, _ in pairs)

            def kernels_only():
                for m, x, (pe, pw), (sp, be) in zip(layers, xs, pairs, aligned):
                    FM.fused_moe(x, pe, pw, m.weights, sp, be)
            ms = graph_ms(kernels_only)
            row["expert_kernels_us"] = ms / len(layers) * 1e3
            row["expert_GB_per_layer"] = touched * expert_bytes / len(layers) / 1e9
            row["expert_kernels_TBps"] = touched * expert_bytes / (ms / 1e3) / 1e12
            if "ceiling_copy_TBps" in R:
                row["expert_kernels_of_copy"] = row["expert_kernels_TBps"] / R["ceiling_copy_TBps"]
        if layers[0].router_kernel:
            def router(kernel, block_h=None):
                def fn():
                    for m, x in zip(layers, xs):
                        if kernel:
                            FR.route_pairs(x, m.gate_weight, m.router.bias, a.top_k, a.norm_topk_prob,
                                           a.routed_scaling_factor, m.weights.n_shared, block_h=block_h)
                        else:
                            FR.route_pairs_reference(x, m.router.weight, m.router.bias, a.top_k, a.n_group, a.topk_group,
                                                     a.norm_topk_prob, a.routed_scaling_factor, m.weights.n_shared, K.decode)
                return fn
            row["router_ref_us"] = graph_ms(router(False)) / len(layers) * 1e3
            row["router_kernel_v1_us"] = graph_ms(router(True, 128)) / len(layers) * 1e3
            row["router_kernel_us"] = graph_ms(router(True)) / len(layers) * 1e3
        for m in layers:
            m.fused, m.align_kernel, m.router_block_h, m.route_align = False, m.kernels, None, m.router_kernel and m.kernels
        res[t] = row
        print(f"time T={t}: {row}", flush=True)
    return res


def profile_step(engine, batch, prompt_len, vocab, path):
    avg = eager_step_profile(engine, batch, prompt_len, vocab)
    with open(path, "w") as f:
        f.write(avg.table(sort_by="cuda_time_total", row_limit=30))
    kernels_per_step = sum(e.count for e in avg if e.device_time_total > 0) / 3
    return {"gpu_ms_per_step": sum(e.device_time_total for e in avg) / 3 / 1e3, "kernels_per_step": kernels_per_step}


def profile_prefill(engine, vocab, path, n=16, lo=256, hi=2048):
    """One engine step that prefills n prompts of the serving benchmark's lengths (no decode running):
    wall time, GPU kernel time and the kernel table (where saturation's prefill time goes)."""
    import random

    from torch.profiler import ProfilerActivity, profile

    rng = random.Random(5)

    def prompts(seed):
        rng.seed(seed)
        return [[rng.randrange(2, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]
    for h in [engine.submit(p, 1) for p in prompts(1)]:  # warm (shapes differ; kernels compile once)
        h.result()
    work = prompts(2)
    handles = [engine.submit(p, 1) for p in work]
    t0 = now()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.step()
        sync()
    wall = now() - t0
    while engine.step():
        pass
    assert all(h.request.done.is_set() for h in handles)
    avg = prof.key_averages()
    with open(path, "w") as f:
        f.write(avg.table(sort_by="cuda_time_total", row_limit=30))
    tokens = sum(len(p) for p in work)
    gpu = sum(e.device_time_total for e in avg) / 1e6
    return {"prompts": n, "prompt_tokens": tokens, "wall_s": wall, "gpu_kernel_s": gpu, "tok_s": tokens / wall}


def bench_prefill(hf, cfg, args):
    """Prefill with the eager elementwise kernels vs the compiled ones (same decode kernels): one step
    of 16 serving-length prompts (profiled), and one 32K-token prompt (static figure, best of 2)."""
    out = {}
    vocab = cfg.vocab_size
    long_prompt = rand_prompts(1, 32768, vocab, 11)[0]
    for name, compiled in (("prefill_eager", False), ("prefill_compiled", True)):
        res = {}
        engine = load_engine(hf, max_batch=16, max_seq_len=args.max_seq_len, fused_moe=True)
        K.set_prefill_compiled(compiled)
        try:
            res["serving_prompts"] = profile_prefill(engine, vocab, os.path.join(args.out or "/tmp", f"kernels_{name}.txt"))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            res["serving_prompts"] = {"error": repr(exc)[:300]}
        del engine
        gc.collect()
        torch.cuda.empty_cache()
        engine = load_engine(hf, max_batch=1, max_seq_len=32768 + 64, fused_moe=True)
        times = []
        for _ in range(3):
            t0 = now()
            engine.generate([long_prompt], 1)
            times.append(now() - t0)
        res["prefill_32k_s"] = min(times[1:])
        res["prefill_32k_first_s"] = times[0]
        del engine
        gc.collect()
        torch.cuda.empty_cache()
        out[name] = res
        print(f"{name}: {res}", flush=True)
    K.set_prefill_compiled(True)
    return out


def prefill_accuracy(cfg, dev, layers=4, n=4, length=1024):
    """Eager vs compiled prefill against float32: the lite shape cut to `layers` layers (bf16 model and an
    fp32 copy of the same weights both fit), prefill_hidden of n random prompts; ||x - ref|| / ||ref||."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.num_hidden_layers = layers
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    hf = random_hf_model(cfg, dev, dtype, scaled_residual=True, experts_implementation="grouped_mm")
    ref_model = copy.deepcopy(hf).float()
    ref_engine = load_engine(ref_model, max_batch=n, max_seq_len=length + 64, fused_moe=False, compile=False,
                             use_cuda_graphs=False)
    prompts = rand_prompts(n, length, cfg.vocab_size, 21)
    K.set_prefill_compiled(False)
    with torch.inference_mode():
        ref = ref_engine.prefill_hidden(prompts).float()
    del ref_engine, ref_model
    gc.collect()
    torch.cuda.empty_cache()
    out = {"layers": layers, "prompts": n, "length": length}
    engine = load_engine(hf, max_batch=n, max_seq_len=length + 64)
    for name, compiled in (("eager", False), ("compiled", True)):
        K.set_prefill_compiled(compiled)
        with torch.inference_mode():
            got = engine.prefill_hidden(prompts).float()
        out[f"{name}_rel_err"] = ((got - ref).norm() / ref.norm()).item()
    K.set_prefill_compiled(True)
    print(f"prefill accuracy vs float32: {out}", flush=True)
    return out


def bench_engines(hf, cfg, args, dev):
    vocab = cfg.vocab_size
    check = rand_prompts(8, min(64, args.max_seq_len // 4), vocab, 99)
    out = {}
    for name in ("fused_v2", "fused"):
        t0 = now()
        engine = load_engine(hf, max_batch=64, max_seq_len=args.max_seq_len, fused_moe=True)
        set_kernel_version(engine, name.replace("_", "-"))  # fused_v2: the state of commit bb5a590
        res = {"load_s": now() - t0}
        t0 = now()
        res["check_tokens"] = engine.generate(check, 16)
        res["first_generate_s"] = now() - t0
        for b in args.batches:
            try:
                res[f"decode_b{b}"] = engine_decode(engine, b, args.prompt, args.steps, vocab)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                res[f"decode_b{b}"] = {"error": repr(exc)[:300]}
            print(f"{name} decode b{b}: {res[f'decode_b{b}']}", flush=True)
        if CUDA:
            if name == "fused":
                try:
                    res["prefill_profile"] = profile_prefill(engine, vocab, os.path.join(args.out or "/tmp", "kernels_prefill.txt"))
                    print(f"{name} prefill: {res['prefill_profile']}", flush=True)
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    res["prefill_profile"] = {"error": repr(exc)[:300]}
            for b in (1, 32):
                try:
                    res[f"profile_b{b}"] = profile_step(engine, b, args.prompt, vocab,
                                                        os.path.join(args.out or "/tmp", f"kernels_b{b}_{name}.txt"))
                    print(f"{name} profile b{b}: {res[f'profile_b{b}']}", flush=True)
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    res[f"profile_b{b}"] = {"error": repr(exc)[:300]}
        out[name] = res
        del engine
        gc.collect()
        if CUDA:
            torch.cuda.empty_cache()
    a, b = out["fused_v2"]["check_tokens"], out["fused"]["check_tokens"]
    out["check_tokens_equal"] = [x == y for x, y in zip(a, b)]
    out["check_tokens_first_diff"] = [next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), None) for x, y in zip(a, b)]
    print(f"greedy tokens equal (fused_v2 vs fused), per prompt: {out['check_tokens_equal']} "
          f"first differing step: {out['check_tokens_first_diff']}", flush=True)
    return out


def event_ms(fn, iters=20):
    """Mean ms of fn() over iters runs (events around the loop, after one untimed run)."""
    fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    sync()
    return a.elapsed_time(b) / iters


@torch.inference_mode()
def bench_packed(hf, cfg, args, dev):
    """The packed mixed step (decode rows + a prefill piece of C tokens in one CUDA graph, mixed_batch.PackedStep).
    1. Equivalence: slots prefilled with real prompts; the packed step vs the decode step + the piece's prefill
       run apart (same cache copy): relative error of the decode rows' and the piece's logits, argmax agreement,
       and of the cache rows the piece writes.
    2. Time: packed graph replay at (b, C) vs the decode graph at b (same sequence bucket) and the separate
       prefill of the C-token piece (eager launches, compiled elementwise kernels: the default scheduler's way)."""
    from models.engine.cuda_graphs import PackedRunner

    vocab, out = cfg.vocab_size, {"equivalence": {}, "times": {}}
    engine = load_engine(hf, max_batch=64, max_seq_len=args.max_seq_len)
    model, L = engine.model, args.max_seq_len
    g = torch.Generator().manual_seed(7)
    # every slot holds a real prefix of 1,024 tokens (its rows written by the prefill path)
    n_slots, prefix = 64, 1024
    toks = torch.randint(2, vocab, (n_slots, prefix), generator=g).to(dev)
    for lo in range(0, n_slots, 16):
        model.prefill(toks[lo : lo + 16], engine.cache, torch.arange(lo, lo + 16, device=dev), 0)
    base = engine.cache
    for b, chunk, start in ((1, 256, 0), (16, 512, 1024), (48, 512, 0), (64, 1024, 512)):
        dec_tokens = torch.randint(2, vocab, (b,), generator=g).tolist()
        dec_pos = [prefix] * b
        slot = b if b < n_slots else b - 1  # a piece's slot outside the decode rows (or the last one)
        if slot < b:
            dec_pos[slot] = L - 1  # that row is a dummy
        piece = torch.randint(2, vocab, (chunk,), generator=g).tolist()
        apart = base.clone()
        ref_dec = model.decode(torch.tensor(dec_tokens, device=dev), torch.tensor(dec_pos, device=dev), apart,
                               pick_seq(engine, prefix + 1))
        ref_last = model.logits(model.prefill(torch.tensor([piece], device=dev), apart, torch.tensor([slot], device=dev),
                                              start)[0, -1:])
        packed = base.clone()
        runner = PackedRunner(model, packed, 64, chunk, use_graphs=True)
        dec, last = runner.step(dec_tokens, dec_pos, prefix + 1, [(slot, piece, start)])
        real = [i for i, p in enumerate(dec_pos) if p != L - 1]
        rows = slice(start, start + chunk)
        row = {"decode_rel_err": rel(dec[real], ref_dec[real]), "piece_rel_err": rel(last, ref_last),
               "decode_argmax_agree": float((dec[real].argmax(-1) == ref_dec[real].argmax(-1)).float().mean()),
               "piece_argmax_agree": bool(last.argmax(-1) == ref_last.argmax(-1)),
               "piece_cache_rel_err": rel(packed[:, slot, rows], apart[:, slot, rows]),
               "decode_slots_cache_rel_err": rel(packed[:, real, : L - 1], apart[:, real, : L - 1]),
               # layer by layer (the cache rows each layer writes): bf16 rounding stays small in the first
               # layers if the packed step computes the same function; random-weight routing ties then compound
               "piece_rows_rel_err_by_layer": [rel(packed[i, slot, rows], apart[i, slot, rows]) for i in range(packed.shape[0])],
               "decode_rows_rel_err_by_layer": [rel(packed[i, real, prefix], apart[i, real, prefix]) for i in range(packed.shape[0])]}
        key = f"b{b}_c{chunk}_start{start}"
        out["equivalence"][key] = row
        print(f"packed equivalence {key}: {row}", flush=True)
        del apart, packed, runner
    torch.cuda.empty_cache()
    out["moe_layer_check"] = packed_moe_check(model, vocab, dev)
    # time: graph replays on the prefilled cache (all rows at position 1,024, keys bucket of 2,048 / 2,304),
    # one runner per (chunk, expert-pass variant) on the same model
    for chunk in args.packed_chunks:
        piece = torch.randint(2, vocab, (1, chunk), generator=g).to(dev)
        sep = event_ms(lambda: model.prefill(piece, engine.cache, torch.tensor([63], device=dev), 1024), iters=5)
        dec_ms = {}
        for variant in args.packed_moe:
            set_packed_moe(model, variant)
            runner = PackedRunner(model, engine.cache, 64, chunk, use_graphs=True)
            for b in (1, 16, 32, 64):
                dec_tokens = torch.randint(2, vocab, (b,), generator=g).tolist()
                runner.step(dec_tokens, [prefix] * b, prefix + 1, [(63, piece[0].tolist(), 1024)])
                bb, keys = pick_bucket(runner, b, 1024 + chunk)
                graph, _ = runner.graphs[(bb, chunk, keys)]
                packed_ms = event_ms(graph.replay)
                if b not in dec_ms:
                    engine.runner.step(torch.tensor(dec_tokens, device=dev), torch.full((b,), prefix, device=dev), keys)
                    dgraph, _ = engine.runner.graphs[engine.runner.buckets_for(b, keys)]
                    dec_ms[b] = event_ms(dgraph.replay)
                row = {"packed_ms": packed_ms, "decode_ms": dec_ms[b], "separate_prefill_ms": sep,
                       "decode_plus_prefill_ms": dec_ms[b] + sep, "keys": keys}
                out["times"][f"{variant}_b{b}_c{chunk}"] = row
                print(f"packed time {variant} b{b} C{chunk}: {row}", flush=True)
            out[f"capture_s_{variant}_c{chunk}"] = runner.capture_seconds
            if chunk == 512:  # where the packed step's GPU time goes: kernels of 3 eager runs at b16
                out[f"profile_{variant}_b16_c512_gpu_ms"] = profile_packed(runner, vocab, prefix, piece, variant, args, g)
            del runner
            torch.cuda.empty_cache()
    set_packed_moe(model, "fused")
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return out


@torch.inference_mode()
def latent_attention_bench(hf, args, dev):
    """The fused decode attention (fused_mla.latent_attention) against the PyTorch ops it replaces (cat, scores
    bmm, compiled masked softmax, P . latent bmm) on one layer's cache: relative error of each against a float32
    reference, time of each (CUDA graph); then decode steps (graph replay) with the kernel on and off."""
    from models.engine.cuda_graphs import DecodeRunner

    engine = load_engine(hf, max_batch=64, max_seq_len=args.max_seq_len)
    model, a = engine.model, engine.model.args
    attn = model.blocks[0].attn
    g = torch.Generator(device=dev).manual_seed(5)
    cache = engine.cache
    cache.normal_(generator=g)
    out = {"kernel": {}, "decode": {}}
    for b, s in ((1, 256), (1, 2048), (16, 2048), (64, 2048)):
        q_lat = torch.randn(a.num_heads, b, a.kv_lora_rank, device=dev, dtype=model.dtype, generator=g).transpose(0, 1)
        q_rope = torch.randn(b, a.num_heads, a.qk_rope_head_dim, device=dev, dtype=model.dtype, generator=g)
        pos = torch.randint(s // 2, s, (b,), device=dev, generator=g)
        kv = cache[0, :b, :s]
        ref = ML.latent_attention_reference(q_lat.float(), q_rope.float(), kv.float(), pos, attn.scale)

        def ops():
            q = torch.cat([q_lat, q_rope], dim=-1)
            scores = torch.bmm(q, kv.transpose(1, 2))
            probs = K.decode.masked_softmax_upto(scores, attn.scale, pos)
            return torch.bmm(probs, kv[..., : a.kv_lora_rank])

        row = {"kernel_rel_err": rel(ML.latent_attention(q_lat, q_rope, kv, pos, attn.scale), ref),
               "ops_rel_err": rel(ops(), ref),
               "kernel_us": graph_ms(lambda: ML.latent_attention(q_lat, q_rope, kv, pos, attn.scale)) * 1e3,
               "ops_us": graph_ms(ops) * 1e3, "splits": ML.latent_splits(b, s)}
        out["kernel"][f"b{b}_s{s}"] = row
        print(f"latent attention b{b} S{s}: {row}", flush=True)
    out["piece"] = piece_attention_bench(attn, cache[0, 0], a, model.dtype, dev, g)
    for on in (False, True):
        for block in model.blocks:
            block.attn.attn_kernel = on
        runner = DecodeRunner(model, cache, 64, use_graphs=True)
        for b in (1, 8, 16, 32, 64):
            for keys in (512, 2048):
                tok = torch.randint(2, a.vocab_size, (b,), device=dev, generator=g)
                runner.step(tok, torch.full((b,), keys - 1, device=dev), keys)
                graph, _ = runner.graphs[runner.buckets_for(b, keys)]
                ms = event_ms(graph.replay, iters=50)
                out["decode"][f"{'kernel' if on else 'ops'}_b{b}_s{keys}"] = ms
                print(f"decode graph replay attn {'kernel' if on else 'ops'} b{b} keys {keys}: {ms:.3f} ms", flush=True)
        del runner
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return out


def piece_attention_bench(attn, kv_all, a, dtype, dev, g):
    """A packed step's piece: fused_mla.piece_attention (one causal flash pass, padding rows skipped) against the
    ops the packed step ran before (cat, [C*heads x S] scores bmm, compiled masked softmax, P . latent bmm, over the
    whole sequence bucket), on one layer's slot of S = 2,048 keys: time (CUDA graph) and error against float32."""
    res = {}
    s = 2048
    kv = kv_all[:s]
    for c, start, valid in ((256, 0, 256), (512, 0, 300), (512, 1024, 512), (512, 1536, 512), (1024, 1024, 1024)):
        q_lat = torch.randn(a.num_heads, c, a.kv_lora_rank, device=dev, dtype=dtype, generator=g).transpose(0, 1)
        q_rope = torch.randn(c, a.num_heads, a.qk_rope_head_dim, device=dev, dtype=dtype, generator=g)
        pos = torch.full((c,), s + 100, device=dev)  # padding rows: past the bucket
        pos[:valid] = torch.arange(start, start + valid, device=dev)
        base = torch.full((c,), -1, device=dev)  # padding rows: no slot
        base[:valid] = 0
        ref = ML.piece_attention_reference(q_lat.float(), q_rope.float(), kv.float(), pos, base, attn.scale)

        def ops():
            q = torch.cat([q_lat, q_rope], dim=-1).reshape(1, -1, a.latent_dim)
            scores = torch.bmm(q, kv[None].transpose(1, 2)).view(c, a.num_heads, s)
            probs = K.mixed.masked_softmax_upto(scores, attn.scale, pos)
            return torch.bmm(probs.view(1, -1, s), kv[None, :, : a.kv_lora_rank]).view(c, a.num_heads, -1)

        def kernel():
            return ML.piece_attention(q_lat, q_rope, kv, pos, base, attn.scale)

        real = slice(0, valid)
        row = {"kernel_rel_err": rel(kernel()[real], ref[real]), "ops_rel_err": rel(ops()[real], ref[real]),
               "kernel_us": graph_ms(kernel) * 1e3, "ops_us": graph_ms(ops) * 1e3}
        res[f"c{c}_start{start}_valid{valid}"] = row
        print(f"piece attention C{c} start {start} real {valid} (keys {s}): {row}", flush=True)
    return res


PACKED_MOE_VARIANTS = ("grouped", "fused", "fused16", "fused64", "fused128", "piece-ops")


def set_packed_moe(model, variant):
    """The packed step's expert pass: the grouped GEMM, the fused kernels in the engine's default blocks (`fused`:
    fused_moe.BLOCK_M_LARGE rows, 128), or in 16-, 64- or 128-row blocks (at C 1,024 an expert averages ~130 rows a
    packed step); piece-ops: the default fused kernels with the piece's attention as PyTorch ops instead of
    fused_mla.piece_attention."""
    assert variant in PACKED_MOE_VARIANTS, variant
    for block in model.blocks:
        if hasattr(block.mlp, "packed_fused"):
            block.mlp.packed_fused = variant != "grouped"
            block.mlp.packed_block_m = {"fused16": 16, "fused64": 64, "fused128": 128}.get(variant)  # None: default
        block.attn.piece_kernel = variant != "piece-ops" and block.attn.attn_kernel


def profile_packed(runner, vocab, prefix, piece, variant, args, g):
    from torch.profiler import ProfilerActivity, profile

    runner.use_graphs = False
    runner.step(torch.randint(2, vocab, (16,), generator=g).tolist(), [prefix] * 16, prefix + 1,
                [(63, piece[0].tolist(), 1024)])
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            runner._replay(16, runner.chunk, 2048)
        sync()
    runner.use_graphs = True
    avg = prof.key_averages()
    table = avg.table(sort_by="cuda_time_total", row_limit=30)
    with open(os.path.join(args.out or "/tmp", f"kernels_packed_{variant}_b16_c512.txt"), "w") as f:
        f.write(table)
    print(f"-- packed step kernels, {variant}, b16 C512 (3 eager runs)\n{table[:5000]}", flush=True)
    return sum(e.self_device_time_total for e in avg) / 3 / 1e3


@torch.inference_mode()
def packed_moe_check(model, vocab, dev):
    """One MoE layer at packed-step token counts: the fused kernels (16-, 64- and 128-row blocks) against the grouped
    GEMM path and a float32 reference, same inputs (relative error), and the time of each (CUDA graph). 8,192
    tokens is a prefill chunk's size, past the packed limit: there the limit is lifted for this check only, to
    see whether the fused kernels (SiLU in the gate|up epilogue) would beat the grouped GEMM + silu_mul there."""
    moe = next(b.mlp for b in model.blocks if hasattr(b.mlp, "packed_fused"))
    kk = K.mixed
    g = torch.Generator(device=dev).manual_seed(11)
    res = {}
    sizes = (65, 272, 528, 1088, 2112, 8192)
    moe.PACKED_FUSED_MAX_TOKENS = max(sizes)  # an instance attribute: the class default is untouched
    for t in sizes:
        x = torch.randn(t, model.args.hidden_size, device=dev, dtype=model.dtype, generator=g)
        resid = torch.randn_like(x)
        pe, pw = FR.route_pairs_reference(x, moe.router.weight, moe.router.bias, moe.args.top_k, 1, 1,
                                          moe.args.norm_topk_prob, moe.args.routed_scaling_factor, moe.weights.n_shared, K.eager)
        ref = reference_moe(x.float(), pe, pw, moe.weights, resid.float())
        row = {}
        for variant in ("grouped", "fused16", "fused64", "fused128"):
            set_packed_moe(model, variant)
            y = moe(x, kk, residual=resid, packed=True)
            row[f"{variant}_rel_err"] = rel(y, ref)
            row[f"{variant}_us"] = graph_ms(lambda: moe(x, kk, residual=resid, packed=True), iters=20, reps=3) * 1e3
        res[t] = row
        print(f"packed MoE layer T={t}: {row}", flush=True)
    del moe.PACKED_FUSED_MAX_TOKENS
    set_packed_moe(model, "fused")
    return res


def reference_moe(x, pair_expert, pair_weight, weights, residual):
    """float32 routed + shared experts for pairs laid out by the router (pair p of token p // per_token)."""
    t = x.shape[0]
    per_tok = pair_expert.numel() // t
    y = torch.zeros(pair_expert.numel(), x.shape[1], device=x.device)
    for e in pair_expert.unique().tolist():
        pairs = (pair_expert == e).nonzero()[:, 0]
        wg, wu, wd = (w.float() for w in weights.expert(e))
        xr = x[pairs // per_tok]
        y[pairs] = (torch.nn.functional.silu(xr @ wg.t()) * (xr @ wu.t())) @ wd.t() * pair_weight[pairs, None]
    return residual + y.view(t, per_tok, -1).sum(1)


def pick_seq(engine, need):
    from models.engine.cuda_graphs import pick

    return pick(engine.runner.seq_sizes, need)


def pick_bucket(runner, n, need):
    from models.engine.cuda_graphs import pick

    return pick(runner.batch_sizes, n), pick(runner.seq_sizes, need)


def table():
    print("\nper MoE layer (us), CUDA graphs over all MoE layers:")
    print("T  old_moe  fused_v1  fused_v2  fused_moe  expert_kernels  TB/s  of_copy  align_torch  align_kernel  router_ref  "
          "router_v1  router_kernel  route_and_align  old_err  fused_err  router_diff  align_equal  route_align_equal")
    for t, row in R.get("layer_times", {}).items():
        c = R.get("correctness", {}).get(t, {})

        def f(v, fmt="{:.1f}"):
            return fmt.format(v) if isinstance(v, (int, float)) else "-"
        print(f"{t}  {f(row.get('old_moe_us'))}  {f(row.get('fused_v1_moe_us'))}  {f(row.get('fused_v2_moe_us'))}  "
              f"{f(row.get('fused_moe_us'))}  "
              f"{f(row.get('expert_kernels_us'))}  {f(row.get('expert_kernels_TBps'), '{:.2f}')}  "
              f"{f(row.get('expert_kernels_of_copy'), '{:.2f}')}  {f(row.get('align_torch_us'))}  {f(row.get('align_kernel_us'))}  "
              f"{f(row.get('router_ref_us'))}  {f(row.get('router_kernel_v1_us'))}  {f(row.get('router_kernel_us'))}  "
              f"{f(row.get('route_and_align_us'))}  "
              f"{f(c.get('old_rel_err'), '{:.1e}')}  {f(c.get('fused_rel_err'), '{:.1e}')}  {c.get('router_tokens_differ', '-')}  "
              f"{c.get('align_kernel_equal', '-')}  {c.get('route_align_pairs_equal', '-')}/{c.get('route_align_blocks_equal', '-')}")
    for t, row in R.get("prologue", {}).items():
        print(f"attention prologue T={t}: PyTorch {row['reference_us']:.1f} us, kernel {row['kernel_us']:.1f} us per layer; "
              f"max err q_rope {row['q_rope_max_err']:.2e}, cache {row['cache_max_err']:.2e} (bitwise {row['cache_rows_bitwise_equal']})")
    eng = R.get("engines", {})
    for name in ("fused_v2", "fused"):
        res = eng.get(name)
        if not res:
            continue
        cells = []
        for k, v in res.items():
            if k.startswith("decode_b") and "step_ms" in v:
                cells.append(f"{k[7:]} {v['step_ms']:.2f}/{v.get('graph_replay_ms', float('nan')):.2f}")
        prof = res.get("profile_b1", {})
        print(f"engine {name}: ms/step (loop/replay) {', '.join(cells)}; eager b1 profile "
              f"{prof.get('gpu_ms_per_step', float('nan')):.2f} ms GPU, {prof.get('kernels_per_step', float('nan')):.0f} kernels")


@torch.inference_mode()
def new_kernels_check(dev, dtype, small=False):
    """No model: the grouped-GEMM path's one-pass combine (fused_moe.combine_sorted) against its ops (gather, the
    compiled weighted fp32 sum, two adds) at prefill token counts, and the packed pieces' attention with several
    pieces of distinct slots (fused_mla.piece_attention) against its reference, on lite's shapes."""
    from models.engine.mixed_batch import PackedStep

    out = {"combine": {}, "pieces": {}}
    timed = dev.type == "cuda"
    g = torch.Generator(device=dev).manual_seed(3)
    hidden, k = (64, 6) if small else (2048, 6)
    for t in (5, 33) if small else (512, 4096, 19682):
        ys = torch.randn(t * k, hidden, device=dev, dtype=dtype, generator=g)
        dest = torch.randperm(t * k, device=dev, generator=g)
        w = torch.rand(t, k, device=dev, generator=g)
        sh, res = (torch.randn(t, hidden, device=dev, dtype=dtype, generator=g) for _ in range(2))

        def ops():
            return res + (K.prefill.combine_experts(ys.index_select(0, dest).view(t, k, -1), w) + sh)

        ref = FM.combine_sorted_reference(ys.float(), dest, w, sh.float(), res.float())
        row = {"kernel_rel_err": rel(FM.combine_sorted(ys, dest, w, sh, res), ref), "ops_rel_err": rel(ops(), ref),
               "kernel_us": event_ms(lambda: FM.combine_sorted(ys, dest, w, sh, res)) * 1e3 if timed else None,
               "ops_us": event_ms(ops) * 1e3 if timed else None,
               "bytes_MB": (ys.numel() + 3 * sh.numel()) * 2 / 1e6}
        out["combine"][f"t{t}"] = row
        print(f"combine T{t}: {row}", flush=True)
    heads, rank, rope, slots, seq = (4, 32, 8, 8, 64) if small else (16, 512, 64, 8, 2304)
    cache = torch.randn(slots * seq, rank + rope, device=dev, dtype=dtype, generator=g)
    align = ML.piece_align(heads)
    c = 32 if small else 512
    for lengths in ((c,), (c // 2 + 3, c // 3), (c // 4 + 1, c // 4 - 1, 3, 2)):
        offsets = PackedStep.placement(list(lengths), align)
        if offsets[-1] + lengths[-1] > c:
            continue
        pos, base = torch.full((c,), seq - 1, device=dev), torch.full((c,), -1, device=dev)
        for j, (off, n) in enumerate(zip(offsets, lengths)):
            start = (8 if small else 1024) + 3 * j
            pos[off : off + n] = torch.arange(start, start + n, device=dev)
            base[off : off + n] = (j + 2) * seq
        q_lat = torch.randn(heads, c, rank, device=dev, dtype=dtype, generator=g).transpose(0, 1)
        q_rope = torch.randn(c, heads, rope, device=dev, dtype=dtype, generator=g)
        got = ML.piece_attention(q_lat, q_rope, cache, pos, base, 0.07)
        ref = ML.piece_attention_reference(q_lat.float(), q_rope.float(), cache.float(), pos, base, 0.07)
        real = base >= 0
        row = {"rel_err": rel(got[real], ref[real]), "padding_zero": not bool(got[~real].any()),
               "kernel_us": graph_ms(lambda: ML.piece_attention(q_lat, q_rope, cache, pos, base, 0.07)) * 1e3 if timed else None}
        out["pieces"]["+".join(map(str, lengths))] = row
        print(f"pieces {lengths}: {row}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--tokens", default="1,2,4,8,16,32,64")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-seq-len", type=int, default=2304)
    ap.add_argument("--skip-engines", action="store_true")
    ap.add_argument("--prefill-only", action="store_true", help="only the prefill A/B (eager vs compiled elementwise)")
    ap.add_argument("--prefill-accuracy", action="store_true", help="only eager vs compiled prefill against fp32 (4 layers)")
    ap.add_argument("--packed", action="store_true", help="also the packed mixed step: equivalence and graph times")
    ap.add_argument("--packed-chunks", default="256,512,1024")
    ap.add_argument("--packed-only", action="store_true", help="only the packed mixed step (no MoE kernel tables)")
    ap.add_argument("--attention", action="store_true", help="the fused decode attention kernel vs the ops it replaces")
    ap.add_argument("--new-kernels", action="store_true", help="only the one-pass combine and several-piece attention (no model)")
    ap.add_argument("--packed-moe", default="grouped,fused", help=f"the packed step's expert pass, any of {PACKED_MOE_VARIANTS}")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if CUDA and not args.dry_run else "cpu")
    if args.dry_run:
        args.preset, args.tokens, args.batches, args.prompt, args.steps, args.max_seq_len = "tiny", "1,5", "1,2", 8, 3, 64
    tokens = [int(t) for t in args.tokens.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.packed_chunks = [int(c) for c in args.packed_chunks.split(",")]
    args.packed_moe = args.packed_moe.split(",")
    cfg = preset_config(args.preset)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    import transformers

    R.update({"preset": args.preset, "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__, "args": vars(args)})
    print(json.dumps({k: R[k] for k in ("preset", "gpu", "torch", "transformers")}), flush=True)
    if dev.type == "cuda":
        ceiling()
        print(f"copy ceiling {R['ceiling_copy_TBps']:.2f} TB/s", flush=True)
    if args.new_kernels:
        K.enable_compile() if dev.type == "cuda" else None
        run_phase("new_kernels", lambda: new_kernels_check(dev, dtype, small=args.dry_run), args)
        save(args)
        return R
    if args.prefill_accuracy:
        if args.dry_run:
            args.max_seq_len = 64
        K.enable_compile()
        R["prefill_accuracy"] = prefill_accuracy(cfg, dev, length=32 if args.dry_run else 1024)
        save(args)
        return R
    hf = random_hf_model(cfg, dev, dtype, experts_implementation="grouped_mm" if dev.type == "cuda" else "eager")
    if dev.type == "cuda":
        K.enable_compile()
    if args.prefill_only:
        R["prefill"] = bench_prefill(hf, cfg, args)
        save(args)
        return R
    engine = load_engine(hf, max_batch=8, max_seq_len=64, fused_moe=False, use_cuda_graphs=False)
    layers = moe_layers(engine)
    with torch.inference_mode():
        for phase, fn in () if args.packed_only else (("correctness", lambda: correctness(layers[0], cfg, tokens, dev, dtype)),
                          ("layer_times", lambda: layer_times(layers, cfg, tokens, dev, dtype) if dev.type == "cuda" else {}),
                          ("prologue", lambda: prologue_check(engine, [1, 32], dev, dtype) if dev.type == "cuda" else {})):
            run_phase(phase, fn, args)
    del engine, layers
    gc.collect()
    if args.attention and dev.type == "cuda":
        run_phase("latent_attention", lambda: latent_attention_bench(hf, args, dev), args)
    if args.packed and dev.type == "cuda":
        run_phase("packed", lambda: bench_packed(hf, cfg, args, dev), args)
    if not args.skip_engines:
        run_phase("engines", lambda: bench_engines(hf, cfg, args, dev), args)
    save(args)
    table()
    return R


if __name__ == "__main__":
    main()
