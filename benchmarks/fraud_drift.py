"""Static champion vs scheduled retrain + promotion on a fraud-typology drift (simulated, CPU, minutes).

The Argus simulator produces `--days` days whose fraud is large-amount fraud (account takeover,
merchant-category shift) until `--drift-day`, then compromised terminals and cards spending ordinary
amounts (compromised terminal, velocity burst). Both arms score every day through the same replay
path (the stream's `FraudState` + `FraudScorer`, in time order, labels handed to the state after each
chunk and visible only after the chargeback delay):

* static: the champion trained on the days before the drift, never replaced;
* retrain: every `--retrain-every` days `pipelines.retrain.retrain` trains a challenger on the labels
  known by then (transactions older than the delay), evaluates it beside the champion on the same
  latest labelled days, registers it in a SQLite registry and promotes it when not worse; the arm asks
  a `ModelHolder` for the champion before each day, as the stream does before each batch.

Printed: AP and Card Precision@100 after the drift for both arms (all days from the drift on, and
from the first retrain that could see drifted labels on), per week, and the retrain log.

    nice -n 10 python benchmarks/fraud_drift.py                 # a few minutes on 2 shared cores
    nice -n 10 python benchmarks/fraud_drift.py --days 28 --drift-day 10 --customers 400 --retrain-every 6   # a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--days", type=int, default=56)
    p.add_argument("--drift-day", type=int, default=14)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--terminals", type=int, default=2000)
    p.add_argument("--fraud-rate", type=float, default=0.02)
    p.add_argument("--retrain-every", type=int, default=7, help="days between retrains (from the drift day on)")
    p.add_argument("--window-days", type=int, default=14)
    p.add_argument("--eval-days", type=int, default=3)
    p.add_argument("--delay-days", type=float, default=7.0, help="chargeback delay")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128, help="small batches: enough optimizer steps on few rows")
    p.add_argument("--max-train-rows", type=int, default=6000, help="every fraud of the window + a sample of the rest")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse()
    import polars as pl
    import torch
    from rich.console import Console
    from rich.table import Table

    from models.fraud_scorer import FraudScorer
    from models.train_fraud import card_precision_at_k
    from pipelines.fraud_replay import columns
    from pipelines.model_holder import ModelHolder
    from pipelines.model_registry import ModelRegistry
    from pipelines.retrain import retrain
    from pipelines.simulate_transactions import SimulatorConfig, TransactionSimulator, to_handbook
    from pipelines.store import Store

    torch.set_num_threads(1)
    console = Console(width=120)
    t_start = time.perf_counter()
    start = datetime(2018, 4, 1, tzinfo=timezone.utc)
    cfg = SimulatorConfig(n_customers=args.customers, n_terminals=args.terminals, fraud_rate=args.fraud_rate,
                          seed=args.seed, start=start, mix="large_amounts", drift_to="normal_amounts",
                          drift_after_s=args.drift_day * 86400)
    with console.status("simulating..."):
        frame = TransactionSimulator(cfg).simulate_days(args.days)
    hb = to_handbook(frame, origin=start)
    day = (frame["timestamp"].dt.epoch("s").to_numpy() - int(start.timestamp())) // 86400
    labels = frame["is_fraud"].to_numpy()
    kinds = frame.group_by("fraud_scenario").len().sort("fraud_scenario")
    console.print(f"simulated {frame.height:,} transactions over {args.days} days, {int(labels.sum()):,} frauds "
                  f"({', '.join(f'{k} {n:,}' for k, n in kinds.iter_rows() if k != 'genuine')}); "
                  f"drift on day {args.drift_day}: large amounts -> compromised terminals/cards at ordinary amounts")

    work = Path(tempfile.mkdtemp(prefix="argus-drift-"))
    store = Store.from_url(f"sqlite:///{work / 'registry.db'}")
    store.create_schema()

    def labelled_until(d: int) -> Path:
        """The handbook file of the transactions before day `d` (all labelled)."""
        path = work / f"labelled_{d}.csv"
        hb.filter(pl.col("TX_TIME_DAYS") < d).write_csv(path)
        return path

    log: list[tuple[int, str, bool, str, float]] = []

    def do_retrain(d: int, label_cut: int) -> None:
        t0 = time.perf_counter()
        r = retrain(store, labelled_until(label_cut), work / "models", window_days=args.window_days,
                    eval_days=args.eval_days, preset=args.preset, epochs=args.epochs, seed=args.seed + d,
                    batch_size=args.batch_size, max_train_rows=args.max_train_rows,
                    labels_delay_days=args.delay_days, actor="benchmarks/fraud_drift.py")
        ch, champ = r.metrics["challenger"], r.metrics["champion"]
        figures = f"challenger AP {ch['ap']}, CP@100 {ch['cp100']}" + (
            f"; champion AP {champ['ap']}, CP@100 {champ['cp100']}" if champ else "")
        log.append((d, r.version, r.promoted, f"{r.window['train']} / eval {r.window['evaluation']}: {figures}; {r.reason}",
                    time.perf_counter() - t0))
        console.print(f"day {d}: {'[green]promoted[/]' if r.promoted else '[yellow]kept champion[/]'} {r.version} "
                      f"({time.perf_counter() - t0:.0f} s) {figures}", highlight=False)

    with console.status("training the pre-drift champion..."):
        do_retrain(args.drift_day, args.drift_day)  # offline, on every labelled day before the drift
    champion = ModelRegistry(store).champion()
    static = FraudScorer.load(Path(champion.checkpoint))
    static.model_version = champion.version
    holder = ModelHolder(store, FraudScorer.load(Path(champion.checkpoint)), poll_s=0.0, name="drift-bench")
    holder.version = holder.scorer.model_version = champion.version

    cols = columns(frame.select("transaction_id", "timestamp", "customer_id", "terminal_id", "amount"))
    arms = {"static": (static.new_state(labels_delay_days=args.delay_days), lambda: static),
            "retrain": (holder.scorer.new_state(labels_delay_days=args.delay_days), holder.current)}
    scores = {name: np.empty(frame.height, np.float32) for name in arms}
    versions = {name: np.empty(frame.height, object) for name in arms}
    retrain_days = set(range(args.drift_day + args.retrain_every, args.days, args.retrain_every))
    first_useful = None
    for d in range(args.days):
        if d in retrain_days:  # the scheduler runs with the labels known today
            cut = d - math.ceil(args.delay_days)
            with console.status(f"day {d}: retraining on labels before day {cut}..."):
                do_retrain(d, cut)
            if first_useful is None and cut - args.eval_days >= args.drift_day:
                first_useful = d
        rows = np.nonzero(day == d)[0]
        for name, (state, current) in arms.items():
            scorer = current()  # between days (batches): one model per batch
            for s in range(0, len(rows), 4096):
                idx = rows[s:s + 4096]
                part = cols.take(idx)
                scores[name][idx] = scorer.probabilities(state.advance_columns(part))
                versions[name][idx] = scorer.model_version
                state.apply_label_columns(part.transaction_id, labels[idx])

    def figures(mask: np.ndarray) -> dict[str, tuple[float, float]]:
        from sklearn.metrics import average_precision_score

        df = pd.DataFrame({"DAY": day[mask], "CUSTOMER_ID": frame["customer_id"].to_numpy()[mask],
                           "TX_FRAUD": labels[mask].astype(int)})
        return {name: (float(average_precision_score(labels[mask], scores[name][mask])),
                       card_precision_at_k(df, scores[name][mask])) for name in arms}

    table = Table(title=f"after the drift (day {args.drift_day} on): static champion vs retrain + promote")
    for col in ("days", "transactions", "frauds", "static AP", "retrain AP", "static CP@100", "retrain CP@100"):
        table.add_column(col, justify="right")
    windows = [(f"{args.drift_day}..{args.days - 1} (all after the drift)", day >= args.drift_day)]
    if first_useful is not None:
        windows.append((f"{first_useful}..{args.days - 1} (from the first retrain with drifted labels)",
                        day >= first_useful))
    windows.append((f"0..{args.drift_day - 1} (before the drift)", day < args.drift_day))
    for w in range(args.drift_day, args.days, 7):
        windows.append((f"{w}..{min(w + 6, args.days - 1)}", (day >= w) & (day < w + 7)))
    for label, mask in windows:
        f = figures(mask)
        table.add_row(label, f"{int(mask.sum()):,}", f"{int(labels[mask].sum()):,}", f"{f['static'][0]:.4f}",
                      f"{f['retrain'][0]:.4f}", f"{f['static'][1]:.4f}", f"{f['retrain'][1]:.4f}")
    console.print(table)
    retrain_log = Table(title="retrain log (pipelines.retrain.retrain; promotion when AP and CP@100 are not worse)")
    for col in ("day", "challenger", "promoted", "windows and figures", "s"):
        retrain_log.add_column(col)
    for d, v, promoted, what, secs in log:
        retrain_log.add_row(str(d), v, "yes" if promoted else "no", what, f"{secs:.0f}")
    console.print(retrain_log)
    served = pd.Series(versions["retrain"][day >= args.drift_day]).value_counts()
    console.print("retrain arm, rows scored per model version after the drift: "
                  + ", ".join(f"{v} {n:,}" for v, n in served.items()))
    console.print(f"command: python benchmarks/fraud_drift.py {' '.join(sys.argv[1:])}; total "
                  f"{time.perf_counter() - t_start:.0f} s on {os.cpu_count()} CPUs (torch 1 thread)")
    store.close()


if __name__ == "__main__":
    main()
