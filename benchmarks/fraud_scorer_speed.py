"""Fraud scorer speed by batch size and forward variant, on a fixed thread count.

    python benchmarks/fraud_scorer_speed.py [--checkpoint DIR] [--threads 1] [--variants fused,module,int8]
        [--malloc tuned|default] [--input handbook.csv.gz --rows 200000]

Per (variant, batch): `forward_us_per_tx` (user CPU of the forward on prepared contexts, thread
time) and `sys_us_per_tx` (system CPU: page faults of the activations; see pipelines/allocator.py),
`max_abs_dp` (largest probability difference from the reference - transformers' full native forward
- on that batch), and for the variants the stream can run, `score_tx_s` (the stream API: Transaction
objects in, FraudScore objects out, reasons for rows over the review threshold) and
`score_frame_tx_s` (state advance + forward, the columnar path replay uses). Best of --repeats runs,
so a busy shared machine disturbs the figure less (the load average is printed).

Variants:
  fused     FastFraudForward (models/fraud_fast_forward.py), the CPU default; exact (1e-4 on logits)
  module    FraudModel.fast_logits: transformers' DeepseekV3 modules
  int8      torch dynamic int8 quantisation of the Linear layers, module path (FraudScorer.quantize)
  bf16      the fused forward with every weight and activation in bfloat16 (not exact: see max_abs_dp)
  compiled  torch.compile(FastFraudForward.from_embeds) (inductor; `compile_s`: its first calls)

--matmul also times the largest matmul of the forward in fp32, bf16 and int8.
--malloc default measures with glibc's defaults (what every process had before pipelines/allocator.py).
With --input, also the validation-metric change from int8 on the last --rows rows of a handbook file.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch


def synthetic(n: int, seed: int = 0):
    from models.fraud_state import TxColumns

    rng = np.random.default_rng(seed)
    return TxColumns([f"b{i}" for i in range(n)], 1.52e9 + np.sort(rng.uniform(0, 30 * 86400, n)),
                     [str(x) for x in rng.integers(0, 5000, n)], [str(x) for x in rng.integers(0, 10000, n)],
                     rng.gamma(2, 30, n))


def best_rate(fn, n_tx: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_tx / best


def best_cpu_us(fn, n_tx: int, repeats: int) -> tuple[float, float]:
    """(user, system) CPU microseconds a transaction of this thread, from the run with the least total
    (thread CPU clock; the system part from getrusage, in calls enough for its tick)."""
    fn()
    calls = max(1, 2048 // n_tx)
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        a, c = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time()
        for _ in range(calls):
            fn()
        total, b = time.thread_time() - c, resource.getrusage(resource.RUSAGE_THREAD)
        system = min(b.ru_stime - a.ru_stime, total)
        best = min(best, ((total - system) / (calls * n_tx) * 1e6, system / (calls * n_tx) * 1e6), key=sum)
    return best


def bf16_forward(fast):
    """A copy of a FastFraudForward with its tensors (and its model's embedding) in bfloat16."""
    out = copy.copy(fast)
    cast = lambda v: v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa: E731
    out.layers = []
    for layer in fast.layers:
        layer = copy.copy(layer)
        for k, v in list(vars(layer).items()):
            if isinstance(v, tuple):
                setattr(layer, k, tuple(cast(x) for x in v))
            elif isinstance(v, dict):
                setattr(layer, k, {a: cast(b) for a, b in v.items()})
            else:
                setattr(layer, k, cast(v))
        out.layers.append(layer)
    out.head_w, out.head_b = cast(fast.head_w), cast(fast.head_b)
    out.model, out._rope = copy.deepcopy(fast.model).to(torch.bfloat16), {}
    return out


def matmul_rates(scorer, repeats: int) -> None:
    """The forward's largest matmul (first layer: q + kv rows from the normed input, 16 tokens x 256
    transactions) in fp32, bf16 (casts in and out included) and torch's dynamic int8."""
    fast = scorer.cpu_forward()
    w = fast.layers[0].w_in if fast.layers[0].w_in is not None else fast.layers[0].w_kv
    x = torch.randn(256 * 16, w.shape[1])
    flop = 2 * x.shape[0] * w.shape[0] * w.shape[1]
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data.copy_(w)
    q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    wt, wb = w.t().contiguous(), w.t().contiguous().bfloat16()
    with torch.inference_mode():
        for name, fn in (("fp32", lambda: x @ wt), ("bf16", lambda: (x.bfloat16() @ wb).float()), ("int8", lambda: q(x))):
            user, system = best_cpu_us(fn, 1, repeats)
            print(json.dumps({"matmul": name, "shape": [x.shape[0], w.shape[1], w.shape[0]], "us": round(user + system),
                              "gflop_s": round(flop / (user + system) / 1e3, 1)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,64,512,2048")
    ap.add_argument("--variants", default="fused,module,int8")
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--input", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--matmul", action="store_true",
                    help="also time the first layer's input projection (a 256-transaction pass) in fp32, bf16, int8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from models.fraud_scorer import FraudScorer, context_tensors
    from pipelines.allocator import keep_freed_memory
    from pipelines.contracts import Transaction

    tuned = keep_freed_memory() if args.malloc == "tuned" else False
    print(json.dumps({"load_avg": os.getloadavg(), "threads": args.threads, "malloc_tuned": tuned}), flush=True)
    results = []
    if args.matmul:
        matmul_rates(FraudScorer.load(args.checkpoint), args.repeats)
    for variant in args.variants.split(","):
        scorer = FraudScorer.load(args.checkpoint, quantize=variant == "int8")
        fast = scorer.cpu_forward()
        compile_s = None
        if variant == "module":
            scorer.cpu_forward = lambda: None  # the scorer's fallback: FraudModel.fast_logits
            forward = scorer.model.fast_logits
        elif variant == "int8":
            forward = scorer.model.fast_logits
        elif variant == "bf16":
            fwd16 = bf16_forward(fast)
            forward = lambda t: fwd16.logits({k: v.bfloat16() if v.is_floating_point() else v  # noqa: E731
                                             for k, v in t.items()}).float()
        elif variant == "compiled":
            from models import fraud_fast_forward as fff

            compiled = torch.compile(fast.from_embeds)

            def forward(t):
                n = next(iter(t.values())).shape[0]
                return torch.cat([compiled(scorer.model.embed({k: v[i:i + fff.CHUNK] for k, v in t.items()}))
                                  for i in range(0, n, fff.CHUNK)])
        else:
            forward = fast.logits
        warm = synthetic(20_000)
        for b in [int(x) for x in args.batches.split(",")]:
            state = scorer.new_state()
            scorer.score_frame(warm, state)  # a state with history, like a running stream
            cols = synthetic(b, seed=b)
            ctx = state.context_columns(cols)
            t = context_tensors(ctx)

            def run():
                with torch.inference_mode():
                    return forward(t)

            if variant == "compiled" and compile_s is None:
                start = time.perf_counter()
                run()
                compile_s = round(time.perf_counter() - start, 1)
            with torch.inference_mode():
                ref = torch.sigmoid((scorer._explain_model or scorer.model)(t)).float()
            user, system = best_cpu_us(run, b, args.repeats)
            row = {"model": scorer.model_version, "variant": variant, "batch": b,
                   "forward_us_per_tx": round(user, 1), "sys_us_per_tx": round(system, 1),
                   "max_abs_dp": float((torch.sigmoid(run().float()) - ref).abs().max())}
            if compile_s is not None:
                row["compile_s"] = compile_s
            if variant in ("fused", "module", "int8"):
                txs = [Transaction(transaction_id=f"s{i}", timestamp=datetime.fromtimestamp(cols.ts[i], timezone.utc) + timedelta(days=40),
                                   customer_id=cols.customer_id[i], terminal_id=cols.terminal_id[i], amount=float(cols.amount[i]))
                       for i in range(b)]
                row["score_tx_s"] = round(best_rate(lambda: scorer.score(txs, state, 0.5, 0.2), b, args.repeats))
                row["score_frame_tx_s"] = round(best_rate(lambda: scorer.score_frame(cols, state), b, args.repeats))
            results.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"load_avg": os.getloadavg()}), flush=True)
    if args.input:
        # the validation weeks of train_fraud (same split, same streaming-safe contexts), fp32 vs int8
        from models.train_fraud import TrainConfig, build_contexts, metrics, predict, read_handbook, time_split

        df = read_handbook(args.input)
        split = time_split(df, TrainConfig())
        val = split.val[-args.rows:]
        base = FraudScorer.load(args.checkpoint)
        ctx = build_contexts(df, base.config.customer_history, base.config.terminal_history,
                             base.config.labels_delay_days, progress=False)
        for quant in (False, True):
            scorer = FraudScorer.load(args.checkpoint, quantize=quant)
            p = predict(scorer.model, ctx, val, "cpu")
            print(json.dumps({"model": scorer.model_version, "validation_rows": len(val), **metrics(df.iloc[val], p)}),
                  flush=True)


if __name__ == "__main__":
    main()
