"""Fraud scorer throughput (tx/s) by batch size, fp32 vs int8 dynamic quantisation, on a fixed thread count.

    python benchmarks/fraud_scorer_speed.py [--checkpoint DIR] [--threads 1] [--input handbook.csv.gz --rows 200000]

Three figures per configuration: `forward` (the model on prepared contexts), `score_frame` (state
advance + forward, the columnar path replay uses) and `score` (the stream API: Transaction objects
in, FraudScore objects out, reasons for rows over the review threshold). Best of --repeats runs, so a
busy shared machine disturbs the figure less. With --input, also the validation-metric change from
int8 on the last --rows rows of a handbook file.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,64,512,2048")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--input", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from models.fraud_scorer import FraudScorer, context_tensors
    from pipelines.contracts import Transaction

    results = []
    for quant in (False, True):
        scorer = FraudScorer.load(args.checkpoint, quantize=quant)
        warm = synthetic(20_000)
        for b in [int(x) for x in args.batches.split(",")]:
            state = scorer.new_state()
            scorer.score_frame(warm, state)  # a state with history, like a running stream
            cols = synthetic(b, seed=b)
            ctx = state.context_columns(cols)
            t = context_tensors(ctx)

            def forward():
                with torch.inference_mode():
                    scorer.model.fast_logits(t)

            txs = [Transaction(transaction_id=f"s{i}", timestamp=datetime.fromtimestamp(cols.ts[i], timezone.utc) + timedelta(days=40),
                               customer_id=cols.customer_id[i], terminal_id=cols.terminal_id[i], amount=float(cols.amount[i]))
                   for i in range(b)]
            row = {"model": scorer.model_version, "batch": b,
                   "forward_tx_s": round(best_rate(forward, b, args.repeats)),
                   "score_tx_s": round(best_rate(lambda: scorer.score(txs, state, 0.5, 0.2), b, args.repeats))}
            row["score_frame_tx_s"] = round(best_rate(lambda: scorer.score_frame(cols, state), b, args.repeats))
            results.append(row)
            print(json.dumps(row), flush=True)
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
