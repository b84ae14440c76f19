"""The engine under a serving load: Poisson arrivals at several rates, the metrics of vLLM's benchmark_serving.

    python benchmarks/engine_serving.py --out $OUT                       # GPU: lite preset, bf16, random weights
    python benchmarks/engine_serving.py --dry-run --out /tmp/x           # tiny preset on CPU, seconds
    python benchmarks/engine_serving.py --engine-path .bench_head \\
        --engine before=engine_head --engine after=models.engine --engine after_b512=models.engine:512

Each engine (`NAME=MODULE[:PREFILL_BUDGET[:mixed|separate|graph[:fused|unfused|KERNEL_VERSION[:OPTIONS]]]]`: a
package with `load_engine`, e.g. a copy of an older models/engine put on `--engine-path`; `none` for whole prompts;
`mixed`: decode rows and prompt pieces in one eager forward per step; `graph`: decode rows and prompt pieces packed
into an area of PREFILL_BUDGET rows per step, in fixed shapes and replayed as a CUDA graph; `fused`: the fused
decode kernels, `fused-v1` / `fused-v2` earlier versions of them; OPTIONS, comma-separated: `backlog=N|off`, the
engine's packed_backlog (`off`, the default: packed steps whatever waits), `pieces=N`, the pieces a packed step carries,
`packed_moe=grouped|16|64|128`, the packed steps' expert pass: the grouped GEMM or the fused kernels' block rows) is built once over the same random-weight model, warmed (every
decode graph bucket captured, a short burst served), then served each rate in turn with its scheduler
loop in a background thread: requests are submitted at seeded exponential inter-arrival times, prompts
of uniform seeded length in [--prompt-min, --prompt-max], --new-tokens each, greedy, no stop tokens.

Per rate (vLLM benchmark_serving's definitions): served req/s and output tok/s (over the time from the
first submission to the last token), TTFT (submission to first token), TPOT ((last - first token time)
/ (output tokens - 1), per request), ITL (every gap between a request's consecutive tokens), E2E
latency; p50 / p90 / p99 and mean. transformers' generate() has no continuous batching, so its figure is
one static batch of --hf-batch prompts from the same distribution (left-padded) in the same run.
Prints a table last and writes everything to $OUT/engine_serving.json (or --json).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.engine.random_init import random_hf_model  # noqa: E402
from models.presets import preset_config  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def workload(n, rate, args, vocab, seed):
    """n (prompt, arrival offset s) pairs: Poisson arrivals at `rate`, seeded lengths and token ids."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        length = rng.randint(args.prompt_min, args.prompt_max)
        out.append(([rng.randrange(2, vocab) for _ in range(length)], t))
        t += rng.expovariate(rate)
    return out


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else None


def summary(xs, scale=1e3):
    xs = [x * scale for x in xs]
    return {"mean": statistics.fmean(xs) if xs else None, "p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99)}


def serve(engine, work, new_tokens, timeout_s):
    """Submit `work` at its arrival times to a running engine; per-request token time stamps."""
    stamps = [[] for _ in work]
    submitted = [0.0] * len(work)
    handles = []
    t0 = time.perf_counter()
    for i, (prompt, at) in enumerate(work):
        wait = t0 + at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        submitted[i] = time.perf_counter()
        handles.append(engine.submit(prompt, new_tokens, on_token=lambda rid, tok, s=stamps[i]: s.append(time.perf_counter())))
    deadline = t0 + timeout_s
    for h in handles:
        h.request.done.wait(max(0.0, deadline - time.perf_counter()))
    done = [h.request.done.is_set() for h in handles]
    return submitted, stamps, done, t0


def metrics(submitted, stamps, done, t0):
    ok = [i for i, d in enumerate(done) if d and stamps[i]]
    end = max(stamps[i][-1] for i in ok) if ok else time.perf_counter()
    duration = end - submitted[0]
    ttft = [stamps[i][0] - submitted[i] for i in ok]
    tpot = [(stamps[i][-1] - stamps[i][0]) / (len(stamps[i]) - 1) for i in ok if len(stamps[i]) > 1]
    itl = [b - a for i in ok for a, b in zip(stamps[i], stamps[i][1:])]
    e2e = [stamps[i][-1] - submitted[i] for i in ok]
    out_tokens = sum(len(stamps[i]) for i in ok)
    return {
        "requests": len(done), "completed": len(ok), "duration_s": duration,
        "served_req_s": len(ok) / duration, "output_tok_s": out_tokens / duration,
        "offered_window_s": submitted[-1] - submitted[0],
        "ttft_ms": summary(ttft), "tpot_ms": summary(tpot), "itl_ms": summary(itl), "e2e_ms": summary(e2e),
    }


def warm(engine, vocab, args):
    """Warm the engine as a replica does at load (Engine.warm_up: every graph, each step kind once; an older engine copy:
    its graphs), then serve a short burst."""
    t0 = time.perf_counter()
    # every decode and packed-step bucket and each step kind once, as a GPU Summarizer replica does at load
    getattr(engine, "warm_up", engine.capture_graphs)()
    capture_s = time.perf_counter() - t0
    static = static_figures(engine, vocab, args)
    engine.start()
    serve(engine, workload(min(16, 2 * args.max_batch), 1e3, args, vocab, seed=12345), min(16, args.new_tokens), 600)
    return {"capture_s": capture_s, "warm_s": time.perf_counter() - t0, **static}


def static_figures(engine, vocab, args):
    """Driven step by step (no background loop): decode ms/step of one request, and one static batch
    of max_batch prompts from the serving distribution (output tok/s end to end, decode ms/step)."""
    def timed(prompts, n):
        stamps = []
        handles = [engine.submit(p, n) for p in prompts]
        sync()
        t0 = time.perf_counter()
        while engine.step():
            sync()
            stamps.append(time.perf_counter())
        assert all(h.request.done.is_set() for h in handles)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        return t0, stamps, gaps

    one = workload(1, 1.0, args, vocab, seed=args.seed + 5)[0][0][: args.prompt_min]
    _, _, gaps = timed([one], min(64, args.new_tokens))
    out = {"decode_b1_ms_step": statistics.median(gaps[2:] or gaps) * 1e3}
    prompts = [p for p, _ in workload(args.max_batch, 1.0, args, vocab, seed=args.seed + 6)]
    t0, stamps, gaps = timed(prompts, args.new_tokens)
    n_out = len(prompts) * args.new_tokens
    out["static_batch"] = {"batch": len(prompts), "output_tok_s": n_out / (stamps[-1] - t0),
                           "decode_ms_step_median": statistics.median(gaps) * 1e3, "steps": len(stamps)}
    return out


# Earlier versions of the decode kernels, for A/B runs in one call (attributes set before any capture).
KERNEL_VERSIONS = {
    # the first fused MoE: alignment in compiled PyTorch, router blocks of 128 (commit 03b88cb)
    "fused-v1": {"mlp": {"align_kernel": False, "router_block_h": 128, "route_align": False},
                 "attn": {"prologue_kernel": False}},
    # alignment kernel + autotuned single-program router; attention prologue in PyTorch (commit bb5a590)
    "fused-v2": {"mlp": {"route_align": False}, "attn": {"prologue_kernel": False}},
    # the decode kernels of commit d30a1b7 (route + align up to 32 tokens) with the prefill eager
    "fused-v3": {"prefill_compiled": False},
    # packed mixed steps' expert pass through the grouped GEMM instead of the fused kernels
    "packed-grouped": {"mlp": {"packed_fused": False}},
    # decode attention as PyTorch ops (cat, bmm, compiled softmax, bmm) instead of fused_mla.latent_attention
    "attn-ops": {"attn": {"attn_kernel": False}},
    # a packed step's piece attention as PyTorch ops instead of fused_mla.piece_attention
    "piece-ops": {"attn": {"piece_kernel": False}},
    # the engine of commit f5518a8: both of the above and the piece's attention as ops (its MoE combine, compiled
    # PyTorch then, is not restored)
    "f5518a8": {"mlp": {"packed_fused": False}, "attn": {"attn_kernel": False, "piece_kernel": False}},
}


def set_kernel_version(engine, version):
    from models.engine import kernels

    spec = KERNEL_VERSIONS.get(version, {})
    kernels.set_prefill_compiled(spec.get("prefill_compiled", True))  # global: engines run one after another
    for part, attrs in spec.items():
        if part == "prefill_compiled":
            continue
        for block in getattr(getattr(engine, "model", None), "blocks", []):
            mod = getattr(block, part)
            for k, v in attrs.items():
                if hasattr(mod, k):
                    setattr(mod, k, v)


def watch_slow_steps(engine, over_ms: float = 60.0) -> list[dict]:
    """Record every engine step that takes longer than over_ms (wall, its read-back included): what it ran.
    A p99 latency is a handful of requests; this says which step held them (a capture, a compile, a prefill)."""
    slow: list[dict] = []
    run = engine._execute

    def timed(out):
        t = time.perf_counter()
        run(out)
        ms = (time.perf_counter() - t) * 1e3
        if ms > over_ms:
            slow.append({"ms": round(ms, 1), "decode_rows": len(out.decode), "pieces": len(out.prefill),
                         "prefill_tokens": out.prefill_tokens, "packed": bool(engine._runs_packed(out)) if out.decode else False,
                         "graphs": len(getattr(engine.packed_runner, "graphs", {}) or {}) + len(engine.runner.graphs)})

    engine._execute = timed
    return slow


def bench_engine(name, spec, hf, vocab, args, rates):
    module, _, rest = spec.partition(":")
    budget, _, rest = rest.partition(":")
    mode, _, rest = rest.partition(":")
    moe, _, options = rest.partition(":")
    mod = importlib.import_module(module)
    kw = {"prefill_budget": int(budget) if budget not in ("", "none") else None} if budget else {}
    if mode:
        if mode not in ("mixed", "separate", "graph"):
            raise SystemExit(f"engine {name}: mode must be 'mixed', 'separate' or 'graph', not {mode!r}")
        kw["mixed_step"] = "graph" if mode == "graph" else mode == "mixed"
    if moe:
        if moe not in ("fused", "unfused", *KERNEL_VERSIONS):
            raise SystemExit(f"engine {name}: kernels must be fused, unfused or one of {sorted(KERNEL_VERSIONS)}, not {moe!r}")
        kw["fused_moe"] = moe != "unfused"
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "backlog" and (value == "off" or value.isdigit()):
            # off: a backlog never reached, so packed steps whatever waits (this engine's default; an older copy on
            # --engine-path may default to the switch on, and None would give it that)
            kw["packed_backlog"] = sys.maxsize if value == "off" else int(value)
        elif key == "pieces" and value.isdigit() and int(value) > 0:
            kw["packed_max_pieces"] = int(value)
        elif key == "packed_moe" and (value == "grouped" or value in ("16", "64", "128")):
            # the packed steps' expert pass: the grouped GEMM, or the fused kernels in blocks of that many rows
            kw.update(packed_fused_moe=False) if value == "grouped" else kw.update(packed_block_m=int(value))
        else:
            raise SystemExit(f"engine {name}: options are backlog=N|off, pieces=N and packed_moe=grouped|16|64|128, "
                             f"comma-separated, not {option!r}")
    if args.device == "cpu":
        kw["use_cuda_graphs"] = False
    engine = mod.load_engine(hf, max_batch=args.max_batch, max_seq_len=args.max_seq_len, **kw)
    set_kernel_version(engine, moe)
    # greedy tokens of a fixed batch served from idle (compared across engines in main)
    check = [p for p, _ in workload(8, 1.0, args, vocab, seed=args.seed + 99)]
    tokens = engine.generate(check, min(16, args.new_tokens))
    res = {"module": module, "prefill_budget": getattr(engine, "prefill_budget", "none (whole prompts)"),
           "mixed_step": getattr(engine, "mixed_step", False), "fused_moe": kw.get("fused_moe"),
           "check_tokens": tokens, **warm(engine, vocab, args), "rates": {}}
    print(f"== {name} ({spec}): warm {res['warm_s']:.1f} s, decode b1 {res['decode_b1_ms_step']:.2f} ms/step, "
          f"static batch {res['static_batch']}", flush=True)
    slow = watch_slow_steps(engine)
    for rate in rates:
        n = max(args.min_requests, min(args.max_requests, int(rate * args.duration)))
        work = workload(n, rate, args, vocab, seed=args.seed + int(rate * 1000))
        before = dict(engine.stats)
        slow.clear()
        m = metrics(*serve(engine, work, args.new_tokens, args.timeout))
        m["slowest_steps"] = sorted(slow, key=lambda r: -r["ms"])[:8]
        st = {k: v if k.startswith("max_") else v - before.get(k, 0) for k, v in engine.stats.items()}
        if st.get("decode_steps") and "decode_slots" in st:
            st["mean_decode_batch"] = st["decode_slots"] / st["decode_steps"]
            st["decode_density"] = st["decode_slots"] / max(1, st["decode_rows"])  # real rows / rows run
        m["engine_stats"] = st
        m["offered_req_s"] = rate
        res["rates"][str(rate)] = m
        print(f"{name} rate {rate}: served {m['served_req_s']:.2f} req/s, {m['output_tok_s']:.0f} tok/s, "
              f"TTFT p50/p99 {m['ttft_ms']['p50']:.0f}/{m['ttft_ms']['p99']:.0f} ms, "
              f"TPOT p50/p99 {m['tpot_ms']['p50']:.1f}/{m['tpot_ms']['p99']:.1f} ms, "
              f"ITL p50/p99 {m['itl_ms']['p50']:.1f}/{m['itl_ms']['p99']:.1f} ms, {st}", flush=True)
        print(f"{name} rate {rate} slowest steps: {m['slowest_steps'][:5]}", flush=True)
    engine.stop()
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


class StepClock:
    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


@torch.inference_mode()
def bench_hf_static(hf, vocab, args):
    """One static batch through transformers' generate(): left-padded prompts, greedy."""
    from transformers import LogitsProcessorList

    work = workload(args.hf_batch, 1.0, args, vocab, seed=args.seed + 7)
    width = max(len(p) for p, _ in work)
    ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in work], device=hf.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in work], device=hf.device)
    clock = StepClock()
    sync()
    t0 = time.perf_counter()
    hf.generate(ids, attention_mask=mask, max_new_tokens=args.hf_new_tokens, min_new_tokens=args.hf_new_tokens,
                do_sample=False, pad_token_id=0, logits_processor=LogitsProcessorList([clock]))
    sync()
    total = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    n_out = args.hf_batch * args.hf_new_tokens
    return {"config": "generate(), experts grouped_mm on GPU, dynamic cache, sdpa, no compile; one static batch",
            "batch": args.hf_batch, "new_tokens": args.hf_new_tokens, "padded_prompt_len": width,
            "total_s": total, "output_tok_s": n_out / total, "ttft_ms": (clock.stamps[0] - t0) * 1e3,
            "tpot_ms_median": statistics.median(gaps) * 1e3 if gaps else None}


def table(results):
    rows = [("engine", "offered", "served req/s", "out tok/s", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "ITL p50/p99 ms", "batch")]
    for name, res in results["engines"].items():
        for rate, m in res["rates"].items():
            mb = m["engine_stats"].get("mean_decode_batch")
            rows.append((name, rate, f"{m['served_req_s']:.2f}", f"{m['output_tok_s']:.0f}",
                         f"{m['ttft_ms']['p50']:.0f} / {m['ttft_ms']['p99']:.0f}",
                         f"{m['tpot_ms']['p50']:.1f} / {m['tpot_ms']['p99']:.1f}",
                         f"{m['itl_ms']['p50']:.1f} / {m['itl_ms']['p99']:.1f}", f"{mb:.1f}" if mb else "-"))
    for name, res in results["engines"].items():
        sb = res["static_batch"]
        rows.append((f"{name} static", f"b{sb['batch']}", "-", f"{sb['output_tok_s']:.0f}", "-",
                     f"{sb['decode_ms_step_median']:.1f}", f"b1 {res['decode_b1_ms_step']:.2f}", str(sb["batch"])))
    hf = results.get("transformers_static")
    if hf:
        rows.append(("transformers static", f"b{hf['batch']}", "-", f"{hf['output_tok_s']:.0f}", f"{hf['ttft_ms']:.0f}",
                     f"{hf['tpot_ms_median']:.1f}" if hf["tpot_ms_median"] else "-", "-", str(hf["batch"])))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--json", default=None, help="output file (default: OUT/engine_serving.json)")
    ap.add_argument("--dry-run", action="store_true", help="tiny preset on CPU, small sizes: seconds")
    ap.add_argument("--engine", action="append", default=None,
                    help="NAME=MODULE[:PREFILL_BUDGET[:mixed|separate|graph[:fused|unfused|KERNEL_VERSION[:backlog=N|off,pieces=N,packed_moe=grouped|16|64|128]]]], repeatable")
    ap.add_argument("--engine-path", action="append", default=[], help="prepended to sys.path (older engine copies)")
    ap.add_argument("--rates", default="2,8,24,48")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals per rate (clamped by min/max requests)")
    ap.add_argument("--min-requests", type=int, default=30)
    ap.add_argument("--max-requests", type=int, default=200)
    ap.add_argument("--prompt-min", type=int, default=256)
    ap.add_argument("--prompt-max", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-seq-len", type=int, default=2304)
    ap.add_argument("--timeout", type=float, default=300.0, help="per rate")
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--hf-new-tokens", type=int, default=64)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.dry_run:
        args.preset, args.device = "tiny", "cpu"
        args.rates, args.duration, args.min_requests, args.max_requests = "20,200", 0.3, 6, 10
        args.prompt_min, args.prompt_max, args.new_tokens = 8, 40, 6
        args.max_batch, args.max_seq_len, args.hf_batch, args.hf_new_tokens = 4, 64, 2, 4
    for p in args.engine_path:
        sys.path.insert(0, os.path.abspath(p))
    engines = args.engine or ["engine=models.engine"]
    rates = [float(r) if "." in r else int(r) for r in args.rates.split(",")]
    sys.setswitchinterval(0.0005)  # the submitting thread wakes on time while the scheduler thread runs
    dev = torch.device(args.device)
    cfg = preset_config(args.preset)
    import transformers

    results = {"preset": args.preset, "device": str(dev), "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
               "torch": torch.__version__, "transformers": transformers.__version__, "args": vars(args), "engines": {}}
    print(json.dumps({k: results[k] for k in ("preset", "gpu", "torch", "transformers")}), flush=True)
    t0 = time.perf_counter()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    hf = random_hf_model(cfg, dev, dtype, experts_implementation="grouped_mm" if dev.type == "cuda" else "eager")
    results["build_model_s"] = time.perf_counter() - t0
    for spec in engines:
        name, _, target = spec.partition("=")
        try:
            results["engines"][name] = bench_engine(name, target or name, hf, cfg.vocab_size, args, rates)
        except Exception as exc:  # keep the other engines' numbers
            import traceback

            traceback.print_exc()
            results.setdefault("errors", {})[name] = repr(exc)[:500]
    first = next(iter(results["engines"].values()), {}).get("check_tokens")
    results["check_tokens_equal"] = {n: r["check_tokens"] == first for n, r in results["engines"].items()}
    print(f"greedy tokens of an idle batch equal to the first engine's: {results['check_tokens_equal']}", flush=True)
    if not args.skip_hf:
        results["transformers_static"] = bench_hf_static(hf, cfg.vocab_size, args)
        print(f"transformers static: {results['transformers_static']}", flush=True)
    path = args.json or (os.path.join(args.out, "engine_serving.json") if args.out else None)
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1, default=str)
    table(results)
    return results


if __name__ == "__main__":
    main()
