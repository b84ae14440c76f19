"""The review loop's accuracy target: the fraud model and LightGBM, each with simulated investigators.

Both see the same feedback rules on the same file, in time order:
  * chargeback labels visible `labels_delay_days` (7) after their transaction,
  * each day the K (100) cards with the highest score that day get their true labels for that day's
    transactions as dispositions decided at the day's end + the latency (1 h), visible from then on
    (models/review_simulator.py), ranked by the model's OWN scores in the evaluation window.

argus-moe: the loop of `argus fraud replay --review-per-day K --review-latency 1h`
(models/review_replay.py, the same code) over the whole file with the checkpoint (the shipped one:
trained only on days before the window; see its model card). Needs no polars (runs on a bare GPU image).
lightgbm: the fraud-detection handbook's features plus the state's spend fields (models/fraud_spend.py)
and review fields, trained on the
same train days as the checkpoint (2018-04-08 .. 2018-06-26: every label known before the window);
before the window its investigators rank by `--pre-ranker` (default: the checkpoint, so both enter
the window with the same verdicts), from the window's first day by LightGBM's own scores.

Metrics over [--eval-start, --eval-end): AP, AUC, Card Precision@100.

    python benchmarks/fraud_review.py --input ../shared/data/fraud/handbook_2018-04-01_to_2018-07-31.csv.gz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lightgbm_with_reviews(df: pd.DataFrame, eval_start: pd.Timestamp, train_end: pd.Timestamp, pre_ranker, k: int,
                          latency_s: float, delay_days: float, seed: int, log=print) -> np.ndarray:
    """LightGBM scores of every row from `eval_start` on (NaN before), its own investigators in the loop."""
    import lightgbm as lgb

    from models.fraud_reviews import REVIEW_FIELDS
    from models.fraud_spend import SPEND_FIELDS
    from models.fraud_state import DAY, FraudState, TxColumns
    from models.review_simulator import day_chunks, review_day
    from models.train_fraud import _cpus, handbook_features

    t0 = time.perf_counter()
    feats = handbook_features(df, delay_days)
    log(f"  handbook features in {time.perf_counter() - t0:.1f}s")
    review = np.zeros((len(df), len(REVIEW_FIELDS)), np.float32)
    spend = np.zeros((len(df), len(SPEND_FIELDS)), np.float32)
    cols = TxColumns(df["TRANSACTION_ID"].astype(str).tolist(), df["TS"].to_numpy(np.float64),
                     df["CUSTOMER_ID"].astype(str).tolist(), df["TERMINAL_ID"].astype(str).tolist(),
                     df["TX_AMOUNT"].to_numpy(np.float64))
    fraud = df["TX_FRAUD"].to_numpy().astype(bool)
    state = FraudState(8, 7, delay_days, spend_memory=True)
    start_s, train_end_s = eval_start.timestamp(), train_end.timestamp()
    scores = np.full(len(df), np.nan)
    clf = None
    chunks = day_chunks(cols.ts, 8192)
    day_rows: list[np.ndarray] = []
    day_ctx = []
    for n, idx in enumerate(chunks):
        ctx = state.advance_columns(cols.take(idx))
        review[idx] = ctx.review_num
        spend[idx] = ctx.spend_num
        state.apply_label_columns([cols.transaction_id[i] for i in idx], fraud[idx])
        day_rows.append(idx)
        day_ctx.append(ctx)
        if n + 1 < len(chunks) and cols.ts[chunks[n + 1][0]] // DAY == cols.ts[idx[0]] // DAY:
            continue
        rows = np.concatenate(day_rows)
        if cols.ts[rows[0]] >= start_s:
            if clf is None:  # the window's first day: fit on the train days (all their labels are known now)
                train = np.nonzero((cols.ts < train_end_s) & (cols.ts >= cols.ts[0] + 7 * DAY))[0]
                X = feats.assign(**{f: review[:, i] for i, f in enumerate(REVIEW_FIELDS)},
                                 **{f: spend[:, i] for i, f in enumerate(SPEND_FIELDS)})
                t1 = time.perf_counter()
                clf = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31, subsample=0.8,
                                         subsample_freq=1, colsample_bytree=0.8, random_state=seed, verbose=-1,
                                         n_jobs=max(1, min(8, _cpus())))
                clf.fit(X.iloc[train], fraud[train].astype(int))
                log(f"  LightGBM fitted on {len(train):,} rows in {time.perf_counter() - t1:.1f}s")
            X_day = feats.iloc[rows].assign(**{f: review[rows, i] for i, f in enumerate(REVIEW_FIELDS)},
                                            **{f: spend[rows, i] for i, f in enumerate(SPEND_FIELDS)})
            day_scores = clf.predict_proba(X_day)[:, 1]
            scores[rows] = day_scores
        else:
            day_scores = np.concatenate([pre_ranker(c) for c in day_ctx])
        v = review_day(cols.ts[rows], [cols.transaction_id[i] for i in rows], [cols.customer_id[i] for i in rows],
                       [cols.terminal_id[i] for i in rows], day_scores, fraud[rows], k, latency_s)
        state.apply_dispositions(v.transaction_id, v.kind, v.decided_at, v.customer_id, v.terminal_id)
        day_rows, day_ctx = [], []
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped fraud-small")
    ap.add_argument("--pre-ranker", type=Path, default=None,
                    help="checkpoint ranking LightGBM's cards before the window (default: --checkpoint, so both "
                         "states enter the window with the same investigators' verdicts)")
    ap.add_argument("--review-per-day", type=int, default=100)
    ap.add_argument("--review-latency-s", type=float, default=3600.0)
    ap.add_argument("--eval-start", default="2018-07-04")
    ap.add_argument("--eval-end", default="2018-08-01")
    ap.add_argument("--train-end", default="2018-06-27", help="LightGBM trains on days before this (exclusive)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--skip-moe", action="store_true")
    ap.add_argument("--skip-lightgbm", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    from models.fraud_scorer import FraudScorer
    from models.fraud_state import TxColumns
    from models.review_replay import replay_columns
    from models.train_fraud import metrics as handbook_metrics
    from models.train_fraud import read_handbook

    k, latency = args.review_per_day, args.review_latency_s
    print(f"# fraud_review: {args.input.name}, reviews top {k} cards/day, verdicts {latency / 3600:g} h after the "
          f"day's end, chargebacks 7 days late; window {args.eval_start} .. {args.eval_end} (exclusive)", flush=True)
    df = read_handbook(args.input, args.limit)
    start = pd.Timestamp(args.eval_start, tz="UTC")
    end = pd.Timestamp(args.eval_end, tz="UTC")
    win = np.nonzero((df["TX_DATETIME"] >= start) & (df["TX_DATETIME"] < end))[0]
    results = {}
    if not args.skip_moe:  # the loop of `argus fraud replay` (models/review_replay.py), without polars
        t0 = time.perf_counter()
        scorer = FraudScorer.load(args.checkpoint, device=args.device)
        cols = TxColumns(df["TRANSACTION_ID"].astype(str).tolist(), df["TS"].to_numpy(np.float64),
                         df["CUSTOMER_ID"].astype(str).tolist(), df["TERMINAL_ID"].astype(str).tolist(),
                         df["TX_AMOUNT"].to_numpy(np.float64))
        scores, disposed = replay_columns(scorer.probabilities, scorer.new_state(), cols,
                                          df["TX_FRAUD"].to_numpy().astype(bool), k, latency)
        m = handbook_metrics(df.iloc[win], scores[win])
        results[scorer.model_version] = {**{x: m[x] for x in ("ap", "auc", "cp100")}, "rows": len(win),
                                         "frauds": int(df["TX_FRAUD"].iloc[win].sum()), "dispositions": disposed,
                                         "seconds": round(time.perf_counter() - t0, 1)}
        print(f"argus-moe {scorer.model_version}: {json.dumps(results[scorer.model_version])}", flush=True)

    if not args.skip_lightgbm:
        run_lightgbm(args, df, start, win, results)
    print(f"\n| model | AP | AUC | CP@100 |\n| --- | --- | --- | --- |")
    for name, m in results.items():
        print(f"| {name} | {m['ap']:.4f} | {m['auc']:.4f} | {m['cp100']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def run_lightgbm(args, df, start, win, results) -> None:
    from models.fraud_scorer import FraudScorer
    from models.train_fraud import metrics as handbook_metrics

    k, latency = args.review_per_day, args.review_latency_s
    t0 = time.perf_counter()
    pre_scorer = FraudScorer.load(args.pre_ranker or args.checkpoint, device=args.device)
    scores = lightgbm_with_reviews(df, start, pd.Timestamp(args.train_end, tz="UTC"), pre_scorer.probabilities, k,
                                   latency, 7.0, 0)
    m = handbook_metrics(df.iloc[win], scores[win])
    results["lightgbm-handbook+spend+reviews"] = {**{x: m[x] for x in ("ap", "auc", "cp100")}, "rows": len(win),
                                            "frauds": int(df["TX_FRAUD"].iloc[win].sum()),
                                            "pre_window_ranker": pre_scorer.model_version,
                                            "seconds": round(time.perf_counter() - t0, 1)}
    print(f"lightgbm-handbook+spend+reviews: {json.dumps(results['lightgbm-handbook+spend+reviews'])}", flush=True)


if __name__ == "__main__":
    main()
