"""A tiny handbook-shaped transaction generator for the fraud tests (no shared data, seconds to make)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def handbook_frame(n_customers: int = 120, n_terminals: int = 200, days: int = 40, seed: int = 0) -> pd.DataFrame:
    """Handbook columns; frauds: amount > 220 (scenario 1) and compromised terminals for 14 days (scenario 2)."""
    rng = np.random.default_rng(seed)
    per_day = rng.poisson(1.2, size=(days, n_customers))
    day = np.repeat(np.arange(days), per_day.sum(1))
    cust = np.concatenate([np.repeat(np.arange(n_customers), row) for row in per_day])
    n = len(day)
    secs = day * 86400 + rng.integers(6 * 3600, 23 * 3600, n)
    mean = rng.uniform(10, 90, n_customers)
    amount = np.round(np.abs(rng.normal(mean[cust], mean[cust] / 2)), 2)
    term = (cust * 7 + rng.integers(0, 5, n)) % n_terminals
    fraud = amount > 220
    scenario = np.where(fraud, 1, 0)
    for d in range(0, days, 3):  # a terminal compromised every 3 days for the next 14
        t = rng.integers(0, n_terminals)
        hit = (term == t) & (day >= d) & (day < d + 14)
        fraud |= hit
        scenario = np.where(hit, 2, scenario)
    order = np.argsort(secs, kind="stable")
    start = pd.Timestamp("2018-04-01")
    df = pd.DataFrame({
        "TRANSACTION_ID": np.arange(n),
        "TX_DATETIME": (start + pd.to_timedelta(secs[order], unit="s")).strftime("%Y-%m-%d %H:%M:%S"),
        "CUSTOMER_ID": cust[order], "TERMINAL_ID": term[order], "TX_AMOUNT": amount[order],
        "TX_TIME_SECONDS": secs[order], "TX_TIME_DAYS": day[order],
        "TX_FRAUD": fraud[order].astype(int), "TX_FRAUD_SCENARIO": scenario[order],
    })
    return df


def write_handbook_csv(path: Path, **kwargs) -> Path:
    handbook_frame(**kwargs).to_csv(path, index=False, compression="gzip" if str(path).endswith(".gz") else None)
    return path
