"""Champion/challenger retraining: a challenger on the latest labelled window, promoted only when not worse.

The trainer is `models/train_fraud.py` (its public functions: read_handbook, build_contexts,
fit_model, predict, metrics); this module only chooses the rows, compares and registers:

    labelled file (what is known now)  ->  replay it through FraudState (the stream's features,
                                           labels visible only after the delay)
    evaluation = the last `eval_days` days; train = the `window_days` days before them
                                           (`gap_days` apart, 0 by default: the file already ends
                                           where labels are known); with `max_train_rows`, every
                                           fraud of the window and a random sample of the rest
    challenger = fit_model(train rows);   champion and challenger scored on the SAME evaluation rows
    register the challenger (parent = the champion, data window, both metrics); promote it when its
    AP and CP@100 are each at least the champion's minus `tolerance` (no champion: promote)

The input is a handbook-shaped file (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT,
TX_FRAUD; .csv, .csv.gz or .parquet) holding only transactions whose labels are known (older than the
chargeback delay): the store keeps scores, not chargebacks.
"""

from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines.errors import ArgusError
from pipelines.model_registry import ModelRegistry, one_line
from pipelines.store import Store


class RetrainError(ArgusError):
    exit_code = 8


@dataclass
class RetrainResult:
    version: str
    checkpoint: str
    promoted: bool
    reason: str
    champion: str | None
    metrics: dict[str, dict[str, float | None]]
    window: dict[str, Any]
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)


def _finite(m: dict[str, float]) -> dict[str, float | None]:
    return {k: (round(float(v), 5) if v is not None and np.isfinite(v) else None) for k, v in m.items()}


def not_worse(challenger: dict[str, float | None], champion: dict[str, float | None] | None,
              tolerance: float = 0.0) -> tuple[bool, str]:
    """The promotion rule: AP and CP@100 each at least the champion's minus `tolerance`."""
    if champion is None:
        return True, "no champion yet"
    for key, name in (("ap", "AP"), ("cp100", "CP@100")):
        ch, cur = challenger.get(key), champion.get(key)
        if ch is None or cur is None:
            return False, f"{name} undefined on the evaluation days (no fraud in them?)"
        if ch < cur - tolerance:
            return False, f"{name} {ch:.4f} < champion's {cur:.4f}" + (f" - {tolerance}" if tolerance else "")
    return True, (f"AP {challenger['ap']:.4f} vs {champion['ap']:.4f}, "
                  f"CP@100 {challenger['cp100']:.4f} vs {champion['cp100']:.4f}")


def retrain(store: Store, input_path: Path, output_root: Path, *, window_days: int = 28, eval_days: int = 7,
            gap_days: int = 0, preset: str = "tiny", epochs: int = 3, seed: int = 0, labels_delay_days: float = 7.0,
            tolerance: float = 0.0, promote: bool = True, actor: str = "argus models retrain",
            batch_size: int = 1024, device: str = "cpu", progress: bool = False, max_train_rows: int | None = None,
            log: Callable[[str], None] = lambda _msg: None, load: Callable[[str], Any] | None = None) -> RetrainResult:
    """Train, compare, register (and maybe promote) one challenger; see the module docstring."""
    from models.fraud_scorer import FraudModelConfig, FraudScorer
    from models.train_fraud import TrainConfig, TrainDataError, build_contexts, fit_model, metrics, read_handbook
    import pandas as pd

    from models.checkpoint import save_task_model

    if window_days < 1 or eval_days < 1 or gap_days < 0:
        raise RetrainError("window_days and eval_days must be >= 1, gap_days >= 0")
    t0 = time.perf_counter()
    load = load or (lambda path: FraudScorer.load(Path(path), device="cpu"))
    registry = ModelRegistry(store, load)
    try:
        with warnings.catch_warnings():  # pandas' date-format guesses: a bad date fails below in one line
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            df = read_handbook(Path(input_path))
        df["TX_AMOUNT"] = pd.to_numeric(df["TX_AMOUNT"], errors="raise").astype(np.float64)
        df["TX_FRAUD"] = pd.to_numeric(df["TX_FRAUD"], errors="raise")
    except TrainDataError as exc:
        raise RetrainError(str(exc)) from None
    except (OSError, ValueError, TypeError, OverflowError, IndexError, KeyError) as exc:  # e.g. no rows at all
        raise RetrainError(f"cannot read {input_path}: {one_line(exc, 200)}") from None
    if not df.empty:
        bad = [name for name, ok in (
            ("TX_FRAUD must be 0 or 1", df["TX_FRAUD"].isin([0, 1]).all()),
            ("TX_AMOUNT must be finite and >= 0", bool(np.isfinite(df["TX_AMOUNT"]).all() and (df["TX_AMOUNT"] >= 0).all())),
            ("TX_DATETIME must be set", not df["TX_DATETIME"].isna().any()),
            ("TRANSACTION_ID, CUSTOMER_ID and TERMINAL_ID must be set",
             not df[["TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID"]].isna().any().any())) if not ok]
        if bad:
            raise RetrainError(f"{Path(input_path).name}: {'; '.join(bad)}")
        df["TX_FRAUD"] = df["TX_FRAUD"].astype(np.int64)
    if df.empty:
        raise RetrainError(f"{input_path} has no transactions")
    last_day = int(df["DAY"].max())
    eval_start = last_day - eval_days + 1
    train_end = eval_start - gap_days  # exclusive
    train_start = max(0, train_end - window_days)
    day = df["DAY"].to_numpy()
    train_idx = np.nonzero((day >= train_start) & (day < train_end))[0]
    eval_idx = np.nonzero(day >= eval_start)[0]
    y = df["TX_FRAUD"].to_numpy().astype(np.int64)
    if train_end <= 0 or len(train_idx) == 0 or len(eval_idx) == 0:
        raise RetrainError(f"{last_day + 1} days of data are too few for {window_days} train days, a {gap_days}-day "
                           f"gap and {eval_days} evaluation days")
    if y[train_idx].sum() == 0:
        raise RetrainError("no fraud label in the train window: nothing to learn")
    if max_train_rows is not None and len(train_idx) > max_train_rows:  # every fraud, a sample of the rest
        rng = np.random.default_rng(seed)
        frauds, genuine = train_idx[y[train_idx] == 1], train_idx[y[train_idx] == 0]
        keep = rng.choice(genuine, size=max(0, min(len(genuine), max_train_rows - len(frauds))), replace=False)
        train_idx = np.sort(np.concatenate([frauds, keep]))
    origin = df["TX_DATETIME"].iloc[0].normalize()

    def date(d: int) -> str:
        return str((origin + pd.Timedelta(days=int(d))).date())

    window = {"train": f"{date(train_start)} .. {date(train_end - 1)}",
              "evaluation": f"{date(eval_start)} .. {date(last_day)}", "source": Path(input_path).name,
              "window_days": window_days, "eval_days": eval_days, "gap_days": gap_days}
    log(f"{len(df):,} labelled transactions; train {window['train']} ({len(train_idx):,}), "
        f"evaluation {window['evaluation']} ({len(eval_idx):,})")

    contexts: dict[tuple[int, int], Any] = {}

    def context_for(cfg: Any) -> Any:  # one replay per history shape (usually one for both models)
        key = (cfg.customer_history, cfg.terminal_history)
        if key not in contexts:
            contexts[key] = build_contexts(df, *key, labels_delay_days, progress=progress)
        return contexts[key]

    cfg = TrainConfig(preset=preset, epochs=epochs, seed=seed, batch_size=batch_size, device=device,
                      labels_delay_days=labels_delay_days, baseline=False)
    probe = FraudModelConfig.from_preset(preset, labels_delay_days=labels_delay_days)
    ctx = context_for(probe)
    model, history = fit_model(ctx, y, train_idx, cfg, device, progress=progress)
    eval_df = df.iloc[eval_idx]

    champion = registry.champion()
    champion_m = None
    if champion is not None:
        try:
            current = load(champion.checkpoint)
            champion_m = _finite(metrics(eval_df, current.probabilities(context_for(current.config).take(eval_idx))))
        except Exception as exc:  # noqa: BLE001 - a champion that cannot score is no reason to keep it
            log(f"champion {champion.version} not evaluated ({one_line(exc, 200)}): the challenger is compared with nothing")
    version = f"fraud-{preset}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    out = Path(output_root) / version
    config = {"task": "fraud", "model_version": version, "seed": seed, "fraud": model.config.to_dict(),
              "split": window, "parent": champion.version if champion else None,
              "train": {k: v for k, v in cfg.__dict__.items() if k != "overrides"}}
    save_task_model(out, model, config)
    # the challenger is measured as it will be served: loaded back from its checkpoint (bf16 weights)
    challenger_m = _finite(metrics(eval_df, load(str(out)).probabilities(ctx.take(eval_idx))))
    all_metrics = {"challenger": challenger_m, "champion": champion_m,
                   "champion_version": champion.version if champion else None}
    config["metrics"] = {k: {"argus-moe": v} for k, v in challenger_m.items()}
    card = {"description": "Fraud scorer retrained on the latest labelled window (champion/challenger).",
            "data": window, "training": {"epochs": epochs, "final_losses": [round(x, 4) for x in history]},
            "metrics": all_metrics}
    save_task_model(out, model, config, card)
    registry.register(version, out, actor=actor, parent=champion.version if champion else None, data_window=window,
                      metrics=all_metrics)
    ok, reason = not_worse(challenger_m, champion_m, tolerance)
    if champion is not None and champion_m is None:
        ok, reason = True, "the champion could not be evaluated"
    promoted = False
    if ok and promote:
        registry.promote(version, actor=actor, detail=f"retrain: {reason}")
        promoted = True
    elif not ok:
        reason = f"not promoted: {reason}"
    log(f"{version}: {reason}")
    return RetrainResult(version=version, checkpoint=str(out), promoted=promoted, reason=reason,
                         champion=champion.version if champion else None, metrics=all_metrics, window=window,
                         seconds=round(time.perf_counter() - t0, 1),
                         rows={"train": int(len(train_idx)), "evaluation": int(len(eval_idx)),
                               "train_frauds": int(y[train_idx].sum()), "evaluation_frauds": int(y[eval_idx].sum())})
