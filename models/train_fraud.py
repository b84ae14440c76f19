"""Train the fraud scorer on a handbook-shaped transaction file, next to a LightGBM baseline.

Streaming-safe preparation: the file is replayed in time order through the same `FraudState`
the stream job uses, so every transaction's context holds only what was known before it; every
label is handed to the state right after its transaction and becomes visible only
`labels_delay_days` later (the state's read-time rule).

Split inside the data's own period, by time: a burn-in week (histories fill up), train days,
a gap of at least the label delay, then the validation days (the last weeks).

Metrics: Average Precision, AUC-ROC and Card Precision@100 (per validation day, the 100 customers
with the highest score that day; the share of them with a fraud that day; averaged over days).

Baseline: LightGBM on the fraud-detection handbook's engineered features (customer count/mean
amount over 1/7/30 days, terminal count and fraud risk over 1/7/30 days behind the label delay,
weekend/night flags) on the same train/validation rows.

Importable without pydantic/polars so it also runs on a bare GPU image.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from models.fraud_state import DAY, FraudContext, FraudState, TxColumns

HANDBOOK_COLUMNS = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]


class TrainDataError(ValueError):
    pass


@dataclass
class TrainConfig:
    preset: str = "tiny"
    epochs: int = 3
    seed: int = 0
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.01
    pos_weight: float = 5.0  # class weight on frauds (~0.8% of rows): imbalance without wrecking calibration
    labels_delay_days: float = 7.0
    burn_in_days: int = 7
    val_days: int = 28
    max_rows: int | None = None
    device: str = "auto"
    grad_checkpointing: bool | None = None  # None: on for CUDA
    baseline: bool = True
    # simulated investigators (models/review_simulator.py): each day the top K cards by `ranker`'s score get
    # their day's true labels at the day's end + the latency; the model reads them (config review_fields)
    review_per_day: int = 0
    review_latency_s: float = 3600.0
    ranker: str | None = None  # checkpoint whose scores rank the cards (None: the shipped fraud-small)
    overrides: dict[str, Any] = field(default_factory=dict)


# --- data -------------------------------------------------------------------------------------------

def read_handbook(path: Path, max_rows: int | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise TrainDataError(f"input {path} does not exist")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, nrows=max_rows)
    missing = [c for c in HANDBOOK_COLUMNS if c not in df.columns]
    if missing:
        raise TrainDataError(f"{path} lacks handbook columns {missing}")
    if max_rows:
        df = df.head(max_rows)
    df = df[HANDBOOK_COLUMNS].copy()
    df["TX_DATETIME"] = pd.to_datetime(df["TX_DATETIME"], utc=True)
    df = df.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable").reset_index(drop=True)
    df["TS"] = (df["TX_DATETIME"] - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
    df["DAY"] = ((df["TS"] - df["TS"].iloc[0] // DAY * DAY) // DAY).astype(int)
    return df


def build_contexts(df: pd.DataFrame, customer_history: int, terminal_history: int, delay_days: float,
                   chunk: int = 8192, progress: bool = True, review_per_day: int = 0, review_latency_s: float = 3600.0,
                   ranker: Callable[[FraudContext], np.ndarray] | None = None, strict_windows: bool = False,
                   spend_memory: bool = False) -> FraudContext:
    """Replay the file through a FraudState in time order; labels are given right after their chunk.

    With `review_per_day` K > 0 the investigators are simulated as they would have acted at each moment
    (models/review_simulator.py): chunks never cross a UTC day, `ranker` (a previous model's scores of
    the day's contexts, as known then) ranks each day's cards, and the top K cards' transactions of that
    day are disposed at the day's end + `review_latency_s`, before the next day is read."""
    from tqdm import tqdm

    from models.review_simulator import day_chunks, review_day

    state = FraudState(customer_history, terminal_history, delay_days, strict_windows=strict_windows,
                       spend_memory=spend_memory)
    cols = TxColumns(df["TRANSACTION_ID"].astype(str).tolist(), df["TS"].to_numpy(np.float64),
                     df["CUSTOMER_ID"].astype(str).tolist(), df["TERMINAL_ID"].astype(str).tolist(),
                     df["TX_AMOUNT"].to_numpy(np.float64))
    fraud = df["TX_FRAUD"].to_numpy().astype(bool)
    reviews = review_per_day > 0
    if reviews and ranker is None:
        raise TrainDataError("simulated reviews need a ranker (a previous model's scores)")
    chunks = day_chunks(cols.ts, chunk) if reviews else \
        [np.arange(s, min(s + chunk, len(df))) for s in range(0, len(df), chunk)]
    parts: list[FraudContext] = []
    day_parts: list[tuple[np.ndarray, FraudContext]] = []
    for n, idx in enumerate(tqdm(chunks, desc="replaying through FraudState", disable=not progress, unit="chunk")):
        ctx = state.advance_columns(cols.take(idx))
        parts.append(ctx)
        state.apply_label_columns([cols.transaction_id[i] for i in idx], fraud[idx])
        if not reviews:
            continue
        day_parts.append((idx, ctx))
        last_of_day = n + 1 == len(chunks) or int(cols.ts[chunks[n + 1][0]] // DAY) != int(cols.ts[idx[0]] // DAY)
        if last_of_day:
            rows = np.concatenate([i for i, _ in day_parts])
            scores = np.concatenate([ranker(c) for _, c in day_parts])
            v = review_day(cols.ts[rows], [cols.transaction_id[i] for i in rows], [cols.customer_id[i] for i in rows],
                           [cols.terminal_id[i] for i in rows], scores, fraud[rows], review_per_day, review_latency_s)
            state.apply_dispositions(v.transaction_id, v.kind, v.decided_at, v.customer_id, v.terminal_id)
            day_parts = []
    return FraudContext.concat(parts)


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    train_days: tuple[int, int]
    val_days: tuple[int, int]
    dates: dict[str, str]


def time_split(df: pd.DataFrame, cfg: TrainConfig) -> Split:
    """Burn-in, train days, a gap >= the label delay, validation = the last days."""
    n_days = int(df["DAY"].max()) + 1
    gap = int(math.ceil(cfg.labels_delay_days))
    val_days = cfg.val_days
    burn = cfg.burn_in_days
    if n_days < burn + gap + val_days + 7:  # short files (tests): shrink burn-in and validation
        burn = min(burn, max(1, n_days // 8))
        val_days = max(2, (n_days - burn - gap) // 3)
    val_start = n_days - val_days
    train_end = val_start - gap
    if train_end <= burn:
        raise TrainDataError(f"{n_days} days of data are too few for a burn-in, a {gap}-day gap and validation")
    day = df["DAY"].to_numpy()
    start = df["TX_DATETIME"].iloc[0].normalize()

    def date(d: int) -> str:
        return str((start + pd.Timedelta(days=d)).date())

    return Split(np.nonzero((day >= burn) & (day < train_end))[0], np.nonzero(day >= val_start)[0],
                 (burn, train_end - 1), (val_start, n_days - 1),
                 {"train": f"{date(burn)} .. {date(train_end - 1)}", "gap": f"{date(train_end)} .. {date(val_start - 1)}",
                  "validation": f"{date(val_start)} .. {date(n_days - 1)}"})


# --- metrics --------------------------------------------------------------------------------------

def card_precision_at_k(df: pd.DataFrame, scores: np.ndarray, k: int = 100) -> float:
    """Per day: the k customers with the highest (max) score; share with a fraud that day; mean over days."""
    d = pd.DataFrame({"day": df["DAY"].to_numpy(), "customer": df["CUSTOMER_ID"].to_numpy(),
                      "score": scores, "fraud": df["TX_FRAUD"].to_numpy()})
    per_cust = d.groupby(["day", "customer"], sort=False).agg(score=("score", "max"), fraud=("fraud", "max")).reset_index()
    top = per_cust.sort_values(["day", "score"], ascending=[True, False]).groupby("day").head(k)
    return float(top.groupby("day")["fraud"].sum().div(k).mean())


def metrics(df: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    from models.extras import require

    sk_metrics = require("sklearn.metrics", "train", "fraud training metrics")
    average_precision_score, roc_auc_score = sk_metrics.average_precision_score, sk_metrics.roc_auc_score

    y = df["TX_FRAUD"].to_numpy()
    if y.min() == y.max():
        return {"ap": float("nan"), "auc": float("nan"), "cp100": card_precision_at_k(df, scores)}
    return {"ap": float(average_precision_score(y, scores)), "auc": float(roc_auc_score(y, scores)),
            "cp100": card_precision_at_k(df, scores)}


# --- LightGBM baseline ------------------------------------------------------------------------------

def handbook_features(df: pd.DataFrame, delay_days: float = 7.0) -> pd.DataFrame:
    """The handbook's engineered features (chapter 3), computed causally with time-based rolling windows."""
    out = pd.DataFrame(index=df.index)
    out["amount"] = df["TX_AMOUNT"].to_numpy()
    out["weekend"] = (df["TX_DATETIME"].dt.dayofweek >= 5).astype(np.int8)
    out["night"] = (df["TX_DATETIME"].dt.hour <= 6).astype(np.int8)
    t = df[["TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]].copy()
    t["one"] = 1.0
    t = t.set_index("TX_DATETIME")
    for w in (1, 7, 30):
        cnt = _per_group_rolling(t, "CUSTOMER_ID", "one", f"{w}D")
        amt = _per_group_rolling(t, "CUSTOMER_ID", "TX_AMOUNT", f"{w}D")
        out[f"customer_nb_tx_{w}d"] = cnt
        out[f"customer_avg_amount_{w}d"] = amt / np.maximum(cnt, 1)
    d = int(delay_days)
    cnt_d = _per_group_rolling(t, "TERMINAL_ID", "one", f"{d}D")
    fr_d = _per_group_rolling(t, "TERMINAL_ID", "TX_FRAUD", f"{d}D")
    for w in (1, 7, 30):
        cnt = _per_group_rolling(t, "TERMINAL_ID", "one", f"{d + w}D") - cnt_d
        fr = _per_group_rolling(t, "TERMINAL_ID", "TX_FRAUD", f"{d + w}D") - fr_d
        out[f"terminal_nb_tx_{w}d"] = cnt
        out[f"terminal_risk_{w}d"] = np.where(cnt > 0, fr / np.maximum(cnt, 1), 0.0)
    return out


def with_state_features(feats: pd.DataFrame, ctx: FraudContext) -> pd.DataFrame:
    """The handbook features plus the state's review fields (what investigators decided, as known then) and, when
    the state keeps a spend memory, its spend fields (the customer's usual amount)."""
    from models.fraud_reviews import REVIEW_FIELDS
    from models.fraud_spend import SPEND_FIELDS

    spend = {f: ctx.spend_num[:, i] for i, f in enumerate(SPEND_FIELDS)} if ctx.spend_num.shape[1] else {}
    return feats.assign(**{f: ctx.review_num[:, i] for i, f in enumerate(REVIEW_FIELDS)}, **spend)


def _per_group_rolling(t: pd.DataFrame, key: str, col: str, window: str) -> np.ndarray:
    """Time-window rolling sum per group, returned in the frame's row order."""
    pos = pd.Series(np.arange(len(t)), index=t.index)
    frame = pd.DataFrame({"k": t[key].to_numpy(), "v": t[col].to_numpy(np.float64), "pos": pos.to_numpy()}, index=t.index)
    frame = frame.sort_values(["k"], kind="stable")  # stable: time order kept inside each group
    rolled = frame.groupby("k", sort=False)["v"].rolling(window).sum().to_numpy()
    res = np.empty(len(t))
    res[frame["pos"].to_numpy()] = rolled
    return res


def train_lightgbm(X: pd.DataFrame, y: np.ndarray, train: np.ndarray, val: np.ndarray, seed: int) -> np.ndarray:
    from models.extras import require

    lgb = require("lightgbm", "train", "the LightGBM baseline (--no-baseline skips it)")

    clf = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31, subsample=0.8, subsample_freq=1,
                             colsample_bytree=0.8, random_state=seed, verbose=-1, n_jobs=max(1, min(8, _cpus())))
    clf.fit(X.iloc[train], y[train])
    return clf.predict_proba(X.iloc[val])[:, 1]


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --- the MoE model -------------------------------------------------------------------------------------

def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def fit_model(ctx: FraudContext, y: np.ndarray, train: np.ndarray, cfg: TrainConfig, device: str, progress: bool = True):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from models.fraud_scorer import FraudModel, FraudModelConfig, context_tensors

    torch.manual_seed(cfg.seed)
    mcfg = FraudModelConfig.from_preset(cfg.preset, labels_delay_days=cfg.labels_delay_days,
                                        **({"reviews": cfg.review_per_day > 0} | cfg.overrides))
    model = FraudModel(mcfg).to(device)
    use_ckpt = cfg.grad_checkpointing if cfg.grad_checkpointing is not None else device.startswith("cuda")
    if use_ckpt:  # transformers >= 5.2x names it activation checkpointing; the old name warns (FutureWarning)
        enable = getattr(model.backbone, "activation_checkpointing_enable", None) or model.backbone.gradient_checkpointing_enable
        enable()
    model.train()
    from models.router_balance import RouterBiasBalancer

    # DeepSeek-V3 aux-loss-free balancing: nudge each router's bias so no expert is idle or overloaded
    balancer = RouterBiasBalancer(model, top_k=model.config.backbone_config().num_experts_per_tok, rate=1e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps_per_epoch * cfg.epochs, pct_start=0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(cfg.pos_weight, device=device))
    all_t = context_tensors(ctx.take(train), device)  # whole training set on the device (small per row)
    y_t = torch.from_numpy(y[train].astype(np.float32)).to(device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    amp = device.startswith("cuda")
    history = []
    with Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  disable=not progress) as bar:
        task = bar.add_task("train", total=steps_per_epoch * cfg.epochs, epoch=0, loss=float("nan"))
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(train), generator=gen).to(device)
            running, n = 0.0, 0
            for s in range(0, len(train), cfg.batch_size):
                idx = perm[s:s + cfg.batch_size]
                batch = {k: v[idx] for k, v in all_t.items()}
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    logits = model(batch)
                loss = loss_fn(logits.float(), y_t[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                balancer.step()
                running += float(loss.detach()) if (n % 50 == 0) else 0.0
                n += 1
                if n % 50 == 0 or s + cfg.batch_size >= len(train):
                    bar.update(task, completed=epoch * steps_per_epoch + n, epoch=epoch + 1, loss=float(loss.detach()))
            history.append(float(loss.detach()))
    balancer.remove()
    if use_ckpt:
        model.backbone.gradient_checkpointing_disable()
    return model.eval(), history


def predict(model, ctx: FraudContext, idx: np.ndarray, device: str, batch: int = 8192) -> np.ndarray:
    from models.fraud_scorer import context_tensors

    out = []
    with torch.inference_mode():
        for s in range(0, len(idx), batch):
            t = context_tensors(ctx.take(idx[s:s + batch]), device)
            out.append(torch.sigmoid(model.fast_logits(t).float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# --- the whole run ---------------------------------------------------------------------------------------

def run(input_path: Path, output: Path, cfg: TrainConfig, progress: bool = True, log=print) -> dict[str, Any]:
    from models.checkpoint import save_task_model

    t0 = time.perf_counter()
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    df = read_handbook(input_path, cfg.max_rows)
    if df["TX_FRAUD"].sum() == 0:
        raise TrainDataError(f"{input_path} has no fraud labels (TX_FRAUD all 0): nothing to learn")
    split = time_split(df, cfg)
    log(f"{len(df):,} transactions over {int(df['DAY'].max()) + 1} days; train {split.dates['train']} "
        f"({len(split.train):,}), gap {split.dates['gap']}, validation {split.dates['validation']} ({len(split.val):,}); device {device}")
    from models.fraud_scorer import FraudModelConfig

    probe = FraudModelConfig.from_preset(cfg.preset, **({"reviews": cfg.review_per_day > 0} | cfg.overrides))
    t1 = time.perf_counter()
    ranker = None
    if cfg.review_per_day > 0:
        from models.fraud_scorer import FraudScorer

        ranking = FraudScorer.load(Path(cfg.ranker) if cfg.ranker else None, device=device)
        ranker = ranking.probabilities
        log(f"investigators simulated: top {cfg.review_per_day} cards a day by {ranking.model_version}, "
            f"verdicts {cfg.review_latency_s / 3600:g} h after the day's end")
    ctx = build_contexts(df, probe.customer_history, probe.terminal_history, cfg.labels_delay_days, progress=progress,
                         review_per_day=cfg.review_per_day, review_latency_s=cfg.review_latency_s, ranker=ranker,
                         strict_windows=probe.strict_windows, spend_memory=bool(probe.spend_fields))
    prep_s = time.perf_counter() - t1
    log(f"contexts built in {prep_s:.1f}s")
    y = df["TX_FRAUD"].to_numpy().astype(np.int64)
    t2 = time.perf_counter()
    model, history = fit_model(ctx, y, split.train, cfg, device, progress)
    train_s = time.perf_counter() - t2
    log(f"MoE trained in {train_s:.1f}s")
    val_df = df.iloc[split.val]
    moe_scores = predict(model, ctx, split.val, device)
    results = {"argus-moe": metrics(val_df, moe_scores)}
    if cfg.baseline:
        t3 = time.perf_counter()
        feats = handbook_features(df, cfg.labels_delay_days)
        if cfg.review_per_day > 0 or ctx.spend_num.shape[1]:  # the same feedback and spend fields as the model's
            feats = with_state_features(feats, ctx)
        log(f"handbook features in {time.perf_counter() - t3:.1f}s")
        lgb_scores = train_lightgbm(feats, y, split.train, split.val, cfg.seed)
        results["lightgbm-handbook"] = metrics(val_df, lgb_scores)
        results["lightgbm-handbook"]["fit_s"] = round(time.perf_counter() - t3, 1)
    results["argus-moe"]["fit_s"] = round(train_s, 1)

    from models.checkpoint import router_stats
    from models.fraud_scorer import context_tensors

    sample = split.val[:: max(1, len(split.val) // 4096)]
    router = {name.replace("backbone.layers.", "layer ").replace(".mlp.gate", ""):
              {k: v[k] for k in ("entropy_ratio", "max_over_mean", "unused_experts")}
              for name, v in router_stats(model, context_tensors(ctx.take(sample), device)).items()}
    n_params = sum(p.numel() for p in model.parameters())
    version = f"fraud-{cfg.preset}-{time.strftime('%Y%m%d')}-s{cfg.seed}"
    metric_table = {m: {name: round(r[m], 5) for name, r in results.items() if m in r} for m in ("ap", "auc", "cp100")}
    config = {
        "task": "fraud", "model_version": version, "seed": cfg.seed, "parameters": n_params,
        "fraud": model.config.to_dict(),
        "metrics": metric_table,
        "split": split.dates,
        "router_load_validation": router,
        "train": {k: v for k, v in cfg.__dict__.items() if k != "overrides"} | {"overrides": cfg.overrides, "device": device},
    }
    card = {
        "description": ("Fraud scorer: each transaction with its customer's last events and its terminal's last events "
                        "as a 16-token sequence through a DeepSeek-V3-style MoE (MLA, 1 shared + 8 routed experts, "
                        "top-2); a linear head on the current transaction's token gives the fraud probability."),
        "data": {"input": Path(input_path).name, "rows": len(df), "frauds": int(y.sum()), **split.dates,
                 "label_delay_days": cfg.labels_delay_days,
                 "preparation": "replayed in time order through FraudState; labels visible only after the delay" + (
                     f"; investigators simulated: each day the top {cfg.review_per_day} cards by "
                     f"{ranking.model_version}'s score get their true labels at the day's end + "
                     f"{cfg.review_latency_s / 3600:g} h (dispositions, visible from then on)"
                     if cfg.review_per_day > 0 else "")},
        "training": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "pos_weight": cfg.pos_weight,
                     "device": device, "mixed_precision": "bf16" if device.startswith("cuda") else "fp32",
                     "final_losses": [round(x, 4) for x in history], "prep_s": round(prep_s, 1),
                     "train_s": round(train_s, 1), "parameters": n_params,
                     "router_balancing": "aux-loss-free bias update (rate 1e-3)",
                     "router_load_on_validation": router},
        "metrics": metric_table,
    }
    save_task_model(output, model, config, card)
    return {"output": str(output), "metrics": results, "split": split.dates, "model_version": version,
            "parameters": n_params, "seconds": round(time.perf_counter() - t0, 1), "device": device}


def main() -> None:  # python -m models.train_fraud INPUT OUTPUT [preset] [epochs] (GPU machine, no typer needed)
    import sys

    args = sys.argv[1:]
    cfg = TrainConfig(preset=args[2] if len(args) > 2 else "small", epochs=int(args[3]) if len(args) > 3 else 3,
                      baseline=len(args) <= 5 or args[5] != "nobaseline")
    if len(args) > 4:  # model overrides, and training settings by name (e.g. "review_per_day": 100)
        extra = json.loads(args[4])
        for k in [k for k in extra if k in TrainConfig.__dataclass_fields__ and k != "overrides"]:
            setattr(cfg, k, extra.pop(k))
        cfg.overrides = extra
    res = run(Path(args[0]), Path(args[1]), cfg)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
