"""Synthetic card transactions with tagged fraud, in the spirit of the ULB/Worldline fraud-detection
handbook simulator (customers with a home location and a spending profile, terminals with locations,
Poisson transaction counts, normal amounts), plus six fraud typologies:

| typology                | what it looks like                                                        |
| ----------------------- | ------------------------------------------------------------------------- |
| card_testing            | a burst of tiny online amounts at one far merchant                        |
| account_takeover        | a few high amounts at terminals the customer never used                   |
| compromised_terminal    | every transaction at a terminal is fraud for `compromise_days`            |
| velocity_burst          | many ordinary-sized transactions by one customer within seconds           |
| geo_impossible          | a transaction at home, then one > 1000 km away moments later              |
| merchant_category_shift | high amounts in a merchant category the customer never uses               |

Everything is vectorised over a block of transactions (polars frame); fraud is injected by
rewriting disjoint row slots of the block, so a block always keeps exactly the asked-for size.
Two ways to drive it: `stream_block()` (a block between two instants, for the Kafka producer, exact
counts) and `simulate_days()` (handbook-style Poisson counts per customer per day, for files).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

# Codes for the handbook CSV column TX_FRAUD_SCENARIO. 1-3 keep the handbook's meaning (1 amount
# over a threshold, 2 compromised terminal, 3 compromised customer ~ account takeover).
SCENARIO_CODES: dict[str, int] = {
    "genuine": 0,
    "amount_threshold": 1,
    "compromised_terminal": 2,
    "account_takeover": 3,
    "card_testing": 4,
    "velocity_burst": 5,
    "geo_impossible": 6,
    "merchant_category_shift": 7,
}
SCENARIO_NAMES: dict[int, str] = {v: k for k, v in SCENARIO_CODES.items()}
TYPOLOGIES = ["card_testing", "account_takeover", "compromised_terminal", "velocity_burst", "geo_impossible",
              "merchant_category_shift"]
# share of the fraud budget per typology
TYPOLOGY_WEIGHTS = np.array([0.18, 0.17, 0.25, 0.15, 0.10, 0.15])
# Named typology mixes (shares in TYPOLOGIES order), for drift scenarios: `mix` before the drift,
# `drift_to` after `drift_after_s` simulated seconds (e.g. large-amount fraud, then compromised
# terminals and cards spending ordinary amounts).
MIXES: dict[str, np.ndarray] = {
    "all": TYPOLOGY_WEIGHTS,
    "large_amounts": np.array([0.0, 0.5, 0.0, 0.0, 0.0, 0.5]),  # account takeover, merchant-category shift
    "normal_amounts": np.array([0.0, 0.0, 0.7, 0.3, 0.0, 0.0]),  # compromised terminals, velocity bursts
}

EVERYDAY_CATEGORIES = ["grocery", "restaurant", "fuel", "retail", "pharmacy", "transport", "travel", "electronics"]
HIGH_RISK_CATEGORIES = ["jewelry", "gambling", "money_transfer", "crypto"]
ONLINE_CATEGORY = "digital_goods"
ATM_CATEGORY = "atm_cash"

# The handbook's 100x100 grid is mapped onto a central-European box; countries by grid cell.
LAT0, LAT1, LON0, LON1 = 42.0, 55.0, -4.0, 20.0
GRID_COUNTRIES = np.array([["FR", "DE", "PL"], ["FR", "CH", "AT"], ["ES", "IT", "HU"]])  # rows: north->south
# Far-away terminals (not reachable for a customer's normal day): geo-impossible travel, takeovers.
REMOTE_SITES = [("US", "USD", 40.7, -74.0), ("BR", "BRL", -23.5, -46.6), ("SG", "SGD", 1.35, 103.8),
                ("NG", "NGN", 6.5, 3.4), ("RU", "RUB", 55.8, 37.6), ("TH", "THB", 13.8, 100.5)]
CURRENCY_BY_COUNTRY = {"PL": "PLN", "CH": "CHF", "HU": "HUF"}  # the rest of the box is EUR


@dataclass
class SimulatorConfig:
    n_customers: int = 5000
    n_terminals: int = 10000
    radius: float = 5.0  # handbook: terminals within this grid distance are "available" to a customer
    fraud_rate: float = 0.01  # target share of fraudulent transactions
    compromise_days: float = 14.0
    remote_terminal_share: float = 0.03
    high_risk_terminal_share: float = 0.03
    online_terminal_share: float = 0.08
    atm_terminal_share: float = 0.05
    seed: int = 0
    id_prefix: str | None = None  # transaction id prefix; default "t<seed>-"
    start: datetime = datetime(2018, 4, 1, tzinfo=timezone.utc)  # simulated clock origin (days mode, CSV)
    mix: str = "all"  # the typology mix (MIXES)
    drift_to: str | None = None  # the mix after the drift (None: no drift)
    drift_after_s: float = 0.0  # simulated seconds after the first transaction at which the mix switches

    def __post_init__(self) -> None:
        for name in (self.mix, self.drift_to):
            if name is not None and name not in MIXES:
                raise ValueError(f"unknown typology mix {name!r}; known: {', '.join(MIXES)}")


@dataclass
class _Population:
    cust_xy: np.ndarray  # (C, 2) grid coordinates
    cust_mean: np.ndarray
    cust_std: np.ndarray
    cust_rate: np.ndarray  # mean transactions per day
    cust_terms: np.ndarray  # (C, K) available terminal indices, padded with -1
    cust_nterms: np.ndarray
    term_lat: np.ndarray
    term_lon: np.ndarray
    term_country: np.ndarray
    term_currency: np.ndarray
    term_category: np.ndarray
    term_kind: np.ndarray  # 0 physical, 1 online, 2 atm, 3 remote
    remote_terms: np.ndarray
    online_terms: np.ndarray
    high_risk_terms: np.ndarray


def _grid_to_latlon(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat = LAT1 - xy[:, 1] / 100.0 * (LAT1 - LAT0)
    lon = LON0 + xy[:, 0] / 100.0 * (LON1 - LON0)
    return lat, lon


def _build_population(cfg: SimulatorConfig, rng: np.random.Generator) -> _Population:
    C, T = cfg.n_customers, cfg.n_terminals
    cust_xy = rng.uniform(0, 100, size=(C, 2))
    cust_mean = rng.uniform(5, 100, size=C)
    cust_std = cust_mean / 2
    cust_rate = rng.uniform(0, 4, size=C)

    term_xy = rng.uniform(0, 100, size=(T, 2))
    lat, lon = _grid_to_latlon(term_xy)
    col = np.minimum((term_xy[:, 0] / (100 / 3)).astype(int), 2)
    row = np.minimum((term_xy[:, 1] / (100 / 3)).astype(int), 2)
    country = GRID_COUNTRIES[row, col].astype(object)
    currency = np.array([CURRENCY_BY_COUNTRY.get(c, "EUR") for c in country], dtype=object)
    kind = np.zeros(T, dtype=np.int8)
    u = rng.uniform(size=T)
    edges = np.cumsum([cfg.remote_terminal_share, cfg.online_terminal_share, cfg.atm_terminal_share, cfg.high_risk_terminal_share])
    kind[u < edges[0]] = 3
    kind[(u >= edges[0]) & (u < edges[1])] = 1
    kind[(u >= edges[1]) & (u < edges[2])] = 2
    high_risk = (u >= edges[2]) & (u < edges[3])
    category = np.array(EVERYDAY_CATEGORIES, dtype=object)[rng.integers(0, len(EVERYDAY_CATEGORIES), T)]
    category[kind == 1] = ONLINE_CATEGORY
    category[kind == 2] = ATM_CATEGORY
    category[high_risk] = np.array(HIGH_RISK_CATEGORIES, dtype=object)[rng.integers(0, len(HIGH_RISK_CATEGORIES), high_risk.sum())]
    remote = np.flatnonzero(kind == 3)
    site = rng.integers(0, len(REMOTE_SITES), remote.size)
    for i, (cc, cur, la, lo) in enumerate(REMOTE_SITES):
        sel = remote[site == i]
        country[sel], currency[sel] = cc, cur
        lat[sel] = la + rng.normal(0, 0.2, sel.size)
        lon[sel] = lo + rng.normal(0, 0.2, sel.size)
        category[sel] = np.array(EVERYDAY_CATEGORIES + [ONLINE_CATEGORY], dtype=object)[rng.integers(0, 9, sel.size)]

    # a customer's available terminals: local, everyday (not remote, not high-risk), within the radius
    usable = np.flatnonzero((kind != 3) & ~high_risk)
    lists = []
    for start in range(0, C, 512):  # chunks keep the distance matrix small
        d = np.linalg.norm(cust_xy[start:start + 512, None, :] - term_xy[None, usable, :], axis=2)
        for row_d in d:
            near = usable[row_d < cfg.radius]
            if near.size == 0:  # nobody goes without: the nearest usable terminal
                near = usable[[int(np.argmin(row_d))]]
            lists.append(near)
    K = max(len(x) for x in lists)
    cust_terms = np.full((C, K), -1, dtype=np.int64)
    for i, near in enumerate(lists):
        cust_terms[i, : near.size] = near
    return _Population(cust_xy, cust_mean, cust_std, cust_rate, cust_terms, np.array([len(x) for x in lists]),
                       lat, lon, country, currency, category, kind, remote, np.flatnonzero(kind == 1),
                       np.flatnonzero(high_risk))


@dataclass
class TransactionSimulator:
    """Stateful generator: the population is fixed by the seed; compromised terminals persist."""

    config: SimulatorConfig = field(default_factory=SimulatorConfig)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.config.seed)
        self.pop = _build_population(self.config, self.rng)
        self.counter = 0
        self.prefix = self.config.id_prefix if self.config.id_prefix is not None else f"t{self.config.seed}-"
        self.compromised: dict[int, float] = {}  # terminal index -> compromised until (epoch seconds)
        self._first_ts: float | None = None  # the drift clock starts at the first transaction
        self._cust_p = self.pop.cust_rate / self.pop.cust_rate.sum()

    # --- base (genuine) transactions ------------------------------------------------------------

    def _genuine(self, customers: np.ndarray, ts: np.ndarray) -> dict[str, np.ndarray]:
        pop, rng = self.pop, self.rng
        n = customers.size
        pick = np.floor(rng.uniform(size=n) * pop.cust_nterms[customers]).astype(np.int64)
        terminals = pop.cust_terms[customers, pick]
        amount = rng.normal(pop.cust_mean[customers], pop.cust_std[customers])
        neg = amount < 0
        amount[neg] = rng.uniform(0, pop.cust_mean[customers][neg] * 2)  # as the handbook does
        amount = np.round(np.maximum(amount, 0.01), 2)
        return {"ts": ts, "customer": customers.astype(np.int64), "terminal": terminals, "amount": amount,
                "scenario": np.zeros(n, dtype=np.int8), "channel": self._channels(terminals)}

    def _channels(self, terminals: np.ndarray) -> np.ndarray:
        kind = self.pop.term_kind[terminals]
        ch = np.where(self.rng.uniform(size=terminals.size) < 0.6, "card_present", "contactless").astype(object)
        ch[kind == 1] = "online"
        ch[kind == 2] = "atm"
        return ch

    # --- fraud injection --------------------------------------------------------------------------

    def _inject(self, b: dict[str, np.ndarray], t_end: float) -> None:
        rng, pop, cfg = self.rng, self.pop, self.config
        n = b["ts"].size
        if n == 0 or cfg.fraud_rate <= 0:
            return
        # compromised terminals: every transaction there is fraud while the compromise lasts
        self.compromised = {t: until for t, until in self.compromised.items() if until > b["ts"][0]}
        budget = cfg.fraud_rate * n * self.mix_at(float(b["ts"][0]))
        if self.compromised:
            hit = np.isin(b["terminal"], np.fromiter(self.compromised, dtype=np.int64)) & (b["scenario"] == 0)
            b["scenario"][hit] = SCENARIO_CODES["compromised_terminal"]
            budget[2] -= hit.sum()
        if budget[2] > 0:
            # new compromises among the terminals of this block, enough to meet the remaining budget
            per_terminal = n / max(1, len(np.unique(b["terminal"])))
            expected = budget[2] / per_terminal
            count = min(64, int(expected) + int(rng.uniform() < expected - int(expected)))
            if count:
                terms = np.unique(b["terminal"][rng.integers(0, n, count)])
                for term in terms.tolist():
                    self.compromised[term] = float(b["ts"][0]) + cfg.compromise_days * 86400
                hit = np.isin(b["terminal"], terms) & (b["scenario"] == 0)
                b["scenario"][hit] = SCENARIO_CODES["compromised_terminal"]

        # the other typologies rewrite disjoint slots of consecutive rows (time-sorted), so counts stay exact
        sizes = {"card_testing": (5, 12), "account_takeover": (2, 4), "velocity_burst": (8, 15),
                 "geo_impossible": (2, 2), "merchant_category_shift": (2, 3)}
        slot = 16
        n_slots = n // slot
        events: list[str] = []
        for k, name in enumerate(TYPOLOGIES):
            if name == "compromised_terminal":
                continue
            lo, hi = sizes[name]
            expected = max(0.0, budget[k]) / ((lo + hi) / 2)
            count = int(expected) + int(rng.uniform() < expected - int(expected))  # stochastic rounding
            events += [name] * count
        if not events or n_slots == 0:
            return
        rng.shuffle(events)
        events = events[:n_slots]
        starts = rng.choice(n_slots, size=len(events), replace=False) * slot
        for name, s in zip(events, starts):
            lo, hi = sizes[name]
            k = int(rng.integers(lo, hi + 1))
            rows = np.arange(s, s + k)
            victim = int(rng.choice(pop.cust_rate.size, p=self._cust_p))
            b["customer"][rows] = victim
            code = SCENARIO_CODES[name]
            if name == "card_testing":
                term = int(rng.choice(pop.online_terms)) if pop.online_terms.size else int(rng.choice(pop.remote_terms))
                b["terminal"][rows] = term
                b["amount"][rows] = np.round(rng.uniform(0.5, 2.5, k), 2)
                b["channel"][rows] = "online"
            elif name == "account_takeover":
                pool = np.concatenate([pop.remote_terms, pop.online_terms])
                b["terminal"][rows] = rng.choice(pool, k)
                b["amount"][rows] = np.round(np.maximum(300.0, pop.cust_mean[victim] * rng.uniform(5, 10, k)), 2)
                b["channel"][rows] = self._channels(b["terminal"][rows])
            elif name == "velocity_burst":
                near = pop.cust_terms[victim, : pop.cust_nterms[victim]]
                b["terminal"][rows] = rng.choice(near, k)
                b["amount"][rows] = np.round(np.abs(rng.normal(pop.cust_mean[victim], pop.cust_std[victim], k)) + 1, 2)
                b["channel"][rows] = self._channels(b["terminal"][rows])
                # squeeze the burst into seconds after its first row
                b["ts"][rows] = b["ts"][s] + np.sort(rng.uniform(0, 1, k)) * min(60.0, max(0.0, b["ts"][min(s + slot, n) - 1] - b["ts"][s]))
            elif name == "geo_impossible":
                near = pop.cust_terms[victim, : pop.cust_nterms[victim]]
                b["terminal"][s] = rng.choice(near)  # the genuine one at home
                b["amount"][s] = np.round(abs(rng.normal(pop.cust_mean[victim], pop.cust_std[victim])) + 1, 2)
                b["channel"][s] = self._channels(b["terminal"][s:s + 1])[0]
                b["scenario"][s] = 0
                far = int(rng.choice(pop.remote_terms))
                b["terminal"][s + 1] = far
                b["amount"][s + 1] = np.round(abs(rng.normal(pop.cust_mean[victim] * 3, pop.cust_std[victim])) + 20, 2)
                b["channel"][s + 1] = "card_present"
                rows = rows[1:]
            elif name == "merchant_category_shift":
                b["terminal"][rows] = rng.choice(pop.high_risk_terms, k)
                b["amount"][rows] = np.round(np.maximum(150.0, pop.cust_mean[victim] * rng.uniform(3, 8, k)), 2)
                b["channel"][rows] = "card_present"
            b["scenario"][rows] = code

    def mix_at(self, ts: float) -> np.ndarray:
        """The typology shares in force at `ts` (epoch seconds): `mix`, then `drift_to` after the drift."""
        cfg = self.config
        if self._first_ts is None:
            self._first_ts = ts
        drifted = cfg.drift_to is not None and ts - self._first_ts >= cfg.drift_after_s
        return MIXES[cfg.drift_to if drifted else cfg.mix]

    # --- frames -------------------------------------------------------------------------------------

    def _frame(self, b: dict[str, np.ndarray]) -> pl.DataFrame:
        pop = self.pop
        n = b["ts"].size
        order = np.argsort(b["ts"], kind="stable")
        b = {k: v[order] for k, v in b.items()}
        ids = np.arange(self.counter, self.counter + n)
        self.counter += n
        t = b["terminal"]
        us = np.round(b["ts"] * 1e6).astype(np.int64)
        return pl.DataFrame({
            "tx_index": ids,
            "transaction_id": pl.Series(ids).cast(pl.String).str.pad_start(10, "0"),
            "timestamp": pl.Series(us).cast(pl.Datetime("us", "UTC")),
            "customer_idx": b["customer"],
            "terminal_idx": t,
            "amount": b["amount"],
            "currency": pop.term_currency[t].tolist(),
            "merchant_category": pop.term_category[t].tolist(),
            "channel": b["channel"].tolist(),
            "country": pop.term_country[t].tolist(),
            "lat": np.round(pop.term_lat[t], 5),
            "lon": np.round(pop.term_lon[t], 5),
            "fraud_code": b["scenario"].astype(np.int8),
        }).with_columns(
            (pl.lit(self.prefix) + pl.col("transaction_id")).alias("transaction_id"),
            ("C" + pl.col("customer_idx").cast(pl.String).str.pad_start(6, "0")).alias("customer_id"),
            ("T" + pl.col("terminal_idx").cast(pl.String).str.pad_start(6, "0")).alias("terminal_id"),
            (pl.col("fraud_code") > 0).alias("is_fraud"),
            pl.col("fraud_code").replace_strict(SCENARIO_NAMES, return_dtype=pl.String).alias("fraud_scenario"),
        ).select(FRAME_COLUMNS)

    def stream_block(self, n: int, t0: float, t1: float) -> pl.DataFrame:
        """Exactly `n` transactions with timestamps in [t0, t1) (epoch seconds), customers drawn in
        proportion to their daily rate (a superposition of per-customer Poisson processes)."""
        customers = self.rng.choice(self._cust_p.size, size=n, p=self._cust_p)
        ts = np.sort(self.rng.uniform(t0, t1, n))
        b = self._genuine(customers, ts)
        self._inject(b, t1)
        return self._frame(b)

    def simulate_days(self, n_days: int) -> pl.DataFrame:
        """Handbook-style: per customer per day a Poisson number of transactions, times ~ N(noon, 20000 s)."""
        frames = []
        origin = self.config.start.timestamp()
        for day in range(n_days):
            counts = self.rng.poisson(self.pop.cust_rate)
            customers = np.repeat(np.arange(counts.size), counts)
            secs = self.rng.normal(43200, 20000, customers.size)
            outside = (secs < 0) | (secs >= 86400)  # the handbook drops these; redraw to keep Poisson counts
            secs[outside] = self.rng.uniform(0, 86400, outside.sum())
            ts = origin + day * 86400 + secs
            order = np.argsort(ts)
            b = self._genuine(customers[order], ts[order])
            self._inject(b, origin + (day + 1) * 86400)
            frames.append(self._frame(b))
        return pl.concat(frames) if frames else self._frame(self._genuine(np.zeros(0, dtype=np.int64), np.zeros(0)))


FRAME_COLUMNS = ["tx_index", "transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "currency",
                 "merchant_category", "channel", "country", "lat", "lon", "is_fraud", "fraud_scenario", "fraud_code",
                 "customer_idx", "terminal_idx"]
TRANSACTION_FIELDS = ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "currency",
                      "merchant_category", "channel", "country", "lat", "lon"]


# --- serialisation ----------------------------------------------------------------------------------

def transactions_ndjson(frame: pl.DataFrame) -> list[bytes]:
    """One JSON document per row, shaped as the `Transaction` contract (fast: polars writes the JSON)."""
    out = frame.select(pl.lit(1).alias("schema_version"), *TRANSACTION_FIELDS).write_ndjson()
    return [line.encode() for line in out.splitlines()]


def labels_frame(frame: pl.DataFrame, delay: timedelta, negatives: bool = False) -> pl.DataFrame:
    """Labels for `frame`: reported_at = transaction time + delay. Only frauds unless `negatives`
    (chargebacks exist only for fraud; a transaction with no label after the delay is genuine)."""
    rows = frame if negatives else frame.filter(pl.col("is_fraud"))
    return rows.select(
        pl.lit(1).alias("schema_version"),
        "transaction_id",
        "is_fraud",
        (pl.col("timestamp") + pl.duration(microseconds=int(delay / timedelta(microseconds=1)))).alias("reported_at"),
        "customer_id",
        "terminal_id",
    )


def labels_ndjson(labels: pl.DataFrame) -> list[bytes]:
    return [line.encode() for line in labels.write_ndjson().splitlines()]


def to_contracts(frame: pl.DataFrame):
    """`Transaction` contracts for each row (for callers that want objects; slower than ndjson)."""
    from pipelines.contracts import Transaction

    return [Transaction.model_validate(row) for row in frame.select(TRANSACTION_FIELDS).iter_rows(named=True)]


def label_contracts(labels: pl.DataFrame):
    from pipelines.contracts import Label

    return [Label.model_validate(row) for row in labels.drop("schema_version").iter_rows(named=True)]


def to_handbook(frame: pl.DataFrame, origin: datetime | None = None) -> pl.DataFrame:
    """The handbook's columns (integer ids, naive datetimes, TX_FRAUD_SCENARIO codes)."""
    origin = origin or frame["timestamp"].min().replace(hour=0, minute=0, second=0, microsecond=0)
    secs = ((pl.col("timestamp") - pl.lit(origin).cast(pl.Datetime("us", "UTC"))).dt.total_seconds()).cast(pl.Int64)
    return frame.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("TRANSACTION_ID"),
        pl.col("timestamp").dt.replace_time_zone(None).dt.strftime("%Y-%m-%d %H:%M:%S").alias("TX_DATETIME"),
        pl.col("customer_idx").alias("CUSTOMER_ID"),
        pl.col("terminal_idx").alias("TERMINAL_ID"),
        pl.col("amount").round(2).alias("TX_AMOUNT"),
        secs.alias("TX_TIME_SECONDS"),
        (secs // 86400).alias("TX_TIME_DAYS"),
        pl.col("is_fraud").cast(pl.Int8).alias("TX_FRAUD"),
        pl.col("fraud_code").cast(pl.Int8).alias("TX_FRAUD_SCENARIO"),
    )


def write_handbook_csv(path: str | Path, n_days: int = 7, config: SimulatorConfig | None = None) -> pl.DataFrame:
    """Write a handbook-shaped CSV (.csv or .csv.gz) for tests and experiments; returns the frame."""
    import gzip

    frame = TransactionSimulator(config or SimulatorConfig()).simulate_days(n_days)
    hb = to_handbook(frame, origin=(config or SimulatorConfig()).start)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            hb.write_csv(fh)
    else:
        hb.write_csv(path)
    return hb


# --- the producer loop ---------------------------------------------------------------------------------

@dataclass
class SimulationResult:
    transactions: int = 0
    frauds: int = 0
    labels: int = 0
    by_scenario: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0  # including the wait for the last labels
    tx_elapsed_s: float = 0.0  # until the last transaction was acknowledged
    destination: str = ""


def run_to_kafka(settings, rate: float, seconds: float, config: SimulatorConfig | None = None,
                 label_delay_s: float = 2.0, label_delay_sim: timedelta | None = None, speedup: float = 1.0,
                 negatives: bool = False, block_s: float = 0.2,
                 progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Produce exactly round(rate * seconds) transactions to the transactions topic, paced per block;
    labels follow on the labels topic `label_delay_s` wall seconds after their transaction (with
    reported_at = transaction time + `label_delay_sim`, default the same delay scaled by `speedup`)."""
    from pipelines.kafka_io import FastProducer

    total = int(round(rate * seconds))
    sim = TransactionSimulator(config or SimulatorConfig())
    delay_sim = label_delay_sim if label_delay_sim is not None else timedelta(seconds=label_delay_s * speedup)
    producer = FastProducer(settings)  # librdkafka: the Python client's per-record cost caps the rate
    topic_tx, topic_lb = settings.topics.transactions, settings.topics.labels
    result = SimulationResult(destination=f"kafka {settings.kafka.bootstrap_servers} {topic_tx}")
    pending: list[tuple[float, int, list[tuple[bytes, bytes]]]] = []  # (due wall time, seq, [(key, value)])
    per_block = max(1, int(round(rate * block_s)))
    wall0 = time.monotonic()
    sim0 = time.time()
    sent, seq = 0, 0

    def flush_labels(now: float, force: bool = False) -> None:
        while pending and (force or pending[0][0] <= now):
            due, _, batch = heapq.heappop(pending)
            if force and due > time.monotonic():
                time.sleep(due - time.monotonic())
            for key, value in batch:
                producer.send(topic_lb, value, key=key)
            result.labels += len(batch)

    try:
        while sent < total:
            n = min(per_block, total - sent)
            t0 = sim0 + (sent / rate) * speedup
            t1 = sim0 + ((sent + n) / rate) * speedup
            frame = sim.stream_block(n, t0, t1)
            keys = frame["customer_id"].to_list()
            for key, value in zip(keys, transactions_ndjson(frame)):
                producer.send(topic_tx, value, key=key)
            sent += n
            result.frauds += int(frame["is_fraud"].sum())
            for name, count in frame.group_by("fraud_scenario").len().iter_rows():
                result.by_scenario[name] = result.by_scenario.get(name, 0) + count
            labels = labels_frame(frame, delay_sim, negatives)
            if labels.height:
                seq += 1
                due = time.monotonic() + label_delay_s
                heapq.heappush(pending, (due, seq, list(zip(labels["customer_id"].to_list(), labels_ndjson(labels)))))
            flush_labels(time.monotonic())
            if progress:
                progress(sent, total)
            # pace: block k must not finish before its share of the wall-clock budget
            ahead = wall0 + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        producer.flush(60)
        result.tx_elapsed_s = time.monotonic() - wall0  # all transactions acknowledged (acks=all)
        flush_labels(time.monotonic(), force=True)
    finally:
        producer.close(30)
    result.transactions = sent
    result.elapsed_s = time.monotonic() - wall0
    return result


def run_to_file(path: str | Path, rate: float, seconds: float, config: SimulatorConfig | None = None,
                label_delay: timedelta = timedelta(days=7), negatives: bool = False) -> SimulationResult:
    """Write round(rate * seconds) transactions (simulated time, no pacing) to .jsonl or .parquet;
    labels go next to it as <stem>.labels.<ext>; .csv/.csv.gz writes the handbook format."""
    path = Path(path)
    cfg = config or SimulatorConfig()
    total = int(round(rate * seconds))
    sim = TransactionSimulator(cfg)
    t0 = cfg.start.timestamp()
    frame = sim.stream_block(total, t0, t0 + seconds)
    labels = labels_frame(frame, label_delay, negatives)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith(".parquet"):
        frame.write_parquet(path)
        labels.write_parquet(path.with_name(name[: -len(".parquet")] + ".labels.parquet"))
    elif name.endswith(".jsonl"):
        path.write_bytes(b"\n".join(transactions_ndjson(frame)) + b"\n")
        path.with_name(name[: -len(".jsonl")] + ".labels.jsonl").write_bytes(b"".join(line + b"\n" for line in labels_ndjson(labels)))
    elif name.endswith(".csv") or name.endswith(".csv.gz"):
        hb = to_handbook(frame, origin=cfg.start)
        if name.endswith(".gz"):
            import gzip

            with gzip.open(path, "wb") as fh:
                hb.write_csv(fh)
        else:
            hb.write_csv(path)
    else:
        from pipelines.errors import ArgusError

        raise ArgusError(f"unsupported output {path}: use .jsonl, .parquet, .csv or .csv.gz")
    by = dict(frame.group_by("fraud_scenario").len().iter_rows())
    return SimulationResult(transactions=frame.height, frauds=int(frame["is_fraud"].sum()), labels=labels.height,
                            by_scenario=by, destination=str(path))
