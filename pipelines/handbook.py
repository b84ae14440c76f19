"""Adapter for the ULB/Worldline fraud-detection handbook CSV (.csv or .csv.gz).

Columns: TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_TIME_SECONDS,
TX_TIME_DAYS, TX_FRAUD, TX_FRAUD_SCENARIO. Two ways out:

* `load_frame()` — the fast columnar path: one polars DataFrame in time order with the same column
  names as the simulator's frames (`pipelines.simulate_transactions.FRAME_COLUMNS`), for replay and
  training code that must not build a million pydantic objects.
* `read_handbook()` / `iter_transactions()` — `Transaction` and `Label` contracts.

Labels: only frauds get a label by default (TX_FRAUD=1 -> Label(is_fraud=True, reported_at = tx time
+ delay)), because that is what a chargeback feed carries: a transaction with no label once the
delay has passed is taken as genuine. `negatives=True` also emits is_fraud=False labels (for
evaluation sets that want an explicit label per transaction).

Ids: transaction "hb-<TRANSACTION_ID>", customer "C<6 digits>", terminal "T<6 digits>" (as the
simulator), the original integers stay in customer_idx / terminal_idx / tx_index.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from pipelines.errors import ArgusError
from pipelines.simulate_transactions import FRAME_COLUMNS, SCENARIO_NAMES, TRANSACTION_FIELDS, labels_frame

HANDBOOK_COLUMNS = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_TIME_SECONDS",
                    "TX_TIME_DAYS", "TX_FRAUD", "TX_FRAUD_SCENARIO"]
HANDBOOK_SCHEMA = {"TRANSACTION_ID": pl.Int64, "TX_DATETIME": pl.String, "CUSTOMER_ID": pl.Int64, "TERMINAL_ID": pl.Int64,
                   "TX_AMOUNT": pl.Float64, "TX_TIME_SECONDS": pl.Int64, "TX_TIME_DAYS": pl.Int64, "TX_FRAUD": pl.Int8,
                   "TX_FRAUD_SCENARIO": pl.Int8}
# The handbook's own scenario codes (1 amount > 220, 2 compromised terminal, 3 compromised customer);
# the simulator's extra typologies use 4-7 (pipelines.simulate_transactions.SCENARIO_CODES).
HANDBOOK_SCENARIOS = SCENARIO_NAMES  # handbook 3 "compromised customer" = account_takeover here


class HandbookError(ArgusError):
    """The file is missing or not in the handbook format."""


def scan_handbook(path: str | Path) -> pl.LazyFrame:
    """The raw handbook file as a typed LazyFrame (checks the header, reads nothing else yet)."""
    path = Path(path)
    if not path.is_file():
        raise HandbookError(f"handbook file not found: {path}")
    lf = pl.scan_csv(path, schema_overrides=HANDBOOK_SCHEMA)
    missing = [c for c in HANDBOOK_COLUMNS if c not in lf.collect_schema().names()]
    if missing:
        raise HandbookError(f"{path} is not a handbook CSV: missing columns {', '.join(missing)}")
    return lf


def to_frame(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Handbook columns -> the simulator's frame columns (lazy)."""
    return lf.select(
        pl.col("TRANSACTION_ID").alias("tx_index"),
        ("hb-" + pl.col("TRANSACTION_ID").cast(pl.String)).alias("transaction_id"),
        pl.col("TX_DATETIME").str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us").dt.replace_time_zone("UTC").alias("timestamp"),
        ("C" + pl.col("CUSTOMER_ID").cast(pl.String).str.pad_start(6, "0")).alias("customer_id"),
        ("T" + pl.col("TERMINAL_ID").cast(pl.String).str.pad_start(6, "0")).alias("terminal_id"),
        pl.col("TX_AMOUNT").alias("amount"),
        pl.lit("EUR").alias("currency"),
        pl.lit(None, pl.String).alias("merchant_category"),
        pl.lit(None, pl.String).alias("channel"),
        pl.lit(None, pl.String).alias("country"),
        pl.lit(None, pl.Float64).alias("lat"),
        pl.lit(None, pl.Float64).alias("lon"),
        (pl.col("TX_FRAUD") == 1).alias("is_fraud"),
        pl.col("TX_FRAUD_SCENARIO").replace_strict(HANDBOOK_SCENARIOS, default="unknown", return_dtype=pl.String).alias("fraud_scenario"),
        pl.col("TX_FRAUD_SCENARIO").alias("fraud_code"),
        pl.col("CUSTOMER_ID").alias("customer_idx"),
        pl.col("TERMINAL_ID").alias("terminal_idx"),
    ).select(FRAME_COLUMNS)


def load_frame(path: str | Path, start: datetime | str | None = None, end: datetime | str | None = None,
               limit: int | None = None) -> pl.DataFrame:
    """The handbook as one DataFrame in time order, optionally only [start, end) (dates or datetimes, UTC)."""
    lf = to_frame(scan_handbook(path))
    if start is not None:
        lf = lf.filter(pl.col("timestamp") >= _utc(start))
    if end is not None:
        lf = lf.filter(pl.col("timestamp") < _utc(end))
    lf = lf.sort(["timestamp", "tx_index"])
    if limit is not None:
        lf = lf.head(limit)
    return lf.collect()


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def load_labels(frame: pl.DataFrame, delay_days: float = 7.0, negatives: bool = False) -> pl.DataFrame:
    """Label rows (schema_version, transaction_id, is_fraud, reported_at, customer_id, terminal_id) sorted by reported_at."""
    return labels_frame(frame, timedelta(days=delay_days), negatives).sort("reported_at")


def read_handbook(path: str | Path, delay_days: float = 7.0, negatives: bool = False, **frame_args):
    """(transactions, labels) as contracts; for small files (each row becomes a pydantic object)."""
    from pipelines.simulate_transactions import label_contracts, to_contracts

    frame = load_frame(path, **frame_args)
    return to_contracts(frame), label_contracts(load_labels(frame, delay_days, negatives))


def iter_transactions(path: str | Path, batch_size: int = 10_000, **frame_args) -> Iterator[list]:
    """`Transaction` contracts in time order, `batch_size` at a time."""
    from pipelines.contracts import Transaction

    frame = load_frame(path, **frame_args)
    for offset in range(0, frame.height, batch_size):
        chunk = frame.slice(offset, batch_size).select(TRANSACTION_FIELDS)
        yield [Transaction.model_validate(row) for row in chunk.iter_rows(named=True)]
