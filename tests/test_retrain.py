"""Champion/challenger retraining (`argus models retrain`) on small simulated files (tiny preset, seconds)
and the simulator's drift option."""

from __future__ import annotations

import csv
from datetime import datetime, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipelines.model_registry import CHALLENGER, CHAMPION, ModelRegistry
from pipelines.retrain import RetrainError, not_worse, retrain
from pipelines.simulate_transactions import MIXES, SimulatorConfig, TransactionSimulator, write_handbook_csv
from pipelines.store import Store


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """21 days, 150 customers, 3% fraud: enough for a tiny model to learn something in seconds."""
    path = tmp_path_factory.mktemp("retrain") / "labelled.csv"
    write_handbook_csv(path, n_days=21, config=SimulatorConfig(n_customers=150, n_terminals=300, fraud_rate=0.03, seed=5))
    return path


def test_first_retrain_becomes_champion_then_a_worse_one_stays_challenger(sqlite_url, labelled, tmp_path):
    store = Store.from_url(sqlite_url)
    store.create_schema()
    first = retrain(store, labelled, tmp_path / "models", window_days=10, eval_days=4, epochs=2, seed=0,
                    max_train_rows=1000)
    assert first.promoted and first.champion is None and first.reason == "no champion yet"
    assert first.rows["train"] > 0 and first.rows["evaluation"] > 0 and first.rows["evaluation_frauds"] > 0
    assert first.window["evaluation"].endswith("2018-04-21") and first.window["train"].startswith("2018-04-08")
    registry = ModelRegistry(store)
    assert registry.champion().version == first.version
    assert registry.get(first.version).data_window["train"] == first.window["train"]
    ch = first.metrics["challenger"]
    assert 0 <= ch["ap"] <= 1 and 0 <= ch["cp100"] <= 1 and first.metrics["champion"] is None
    # a second challenger is compared on the same evaluation days with the champion, and must not be worse
    second = retrain(store, labelled, tmp_path / "models", window_days=10, eval_days=4, epochs=1, seed=1, max_train_rows=1000,
                     tolerance=0.0)
    champ = second.metrics["champion"]
    assert second.champion == first.version and champ == first.metrics["challenger"]  # the same days, the same model
    expect, _ = not_worse(second.metrics["challenger"], champ)
    assert second.promoted == expect
    assert registry.get(second.version).status == (CHAMPION if expect else CHALLENGER)
    assert registry.get(second.version).parent == first.version
    # --no-promote registers only
    third = retrain(store, labelled, tmp_path / "models", window_days=10, eval_days=4, epochs=1, seed=2, promote=False,
                    max_train_rows=1000)
    assert not third.promoted and registry.get(third.version).status == CHALLENGER
    store.close()


def test_promotion_rule():
    champ = {"ap": 0.5, "cp100": 0.3}
    assert not_worse({"ap": 0.5, "cp100": 0.3}, champ)[0]
    assert not not_worse({"ap": 0.49, "cp100": 0.9}, champ)[0]
    assert not not_worse({"ap": 0.9, "cp100": 0.29}, champ)[0]
    assert not_worse({"ap": 0.49, "cp100": 0.29}, champ, tolerance=0.02)[0]
    assert not not_worse({"ap": None, "cp100": 0.9}, champ)[0]
    assert not_worse({"ap": 0.1, "cp100": 0.1}, None) == (True, "no champion yet")


def test_bad_inputs_are_one_line_errors(sqlite_url, labelled, tmp_path):
    store = Store.from_url(sqlite_url)
    store.create_schema()
    for kwargs, message in (({"input_path": tmp_path / "missing.csv"}, "does not exist"),
                            ({"window_days": 0}, "window_days"), ({"eval_days": 40}, "too few")):
        args = {"input_path": labelled, "window_days": 10, "eval_days": 4, **kwargs}
        with pytest.raises(RetrainError, match=message):
            retrain(store, args.pop("input_path"), tmp_path / "m", **args)
    no_fraud = tmp_path / "clean.csv"
    pl.read_csv(labelled).with_columns(pl.lit(0).alias("TX_FRAUD")).write_csv(no_fraud)
    with pytest.raises(RetrainError, match="no fraud label"):
        retrain(store, no_fraud, tmp_path / "m", window_days=10, eval_days=4)
    assert ModelRegistry(store).list() == []
    store.close()


def test_cli_retrain(sqlite_url, labelled, tmp_path):
    from services.cli import app

    res = CliRunner().invoke(app, ["models", "retrain", "--input", str(labelled), "--window-days", "10",
                                   "--eval-days", "4", "--epochs", "1", "--max-train-rows", "1000", "--output", str(tmp_path / "m"),
                                   "--url", sqlite_url], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "promoted" in res.output and "no champion yet" in res.output
    with Store.from_url(sqlite_url) as store:
        assert ModelRegistry(store).champion() is not None


def test_simulator_switches_typology_mix_mid_stream():
    start = datetime(2018, 4, 1, tzinfo=timezone.utc)
    cfg = SimulatorConfig(n_customers=300, n_terminals=600, fraud_rate=0.05, seed=3, start=start,
                          mix="large_amounts", drift_to="normal_amounts", drift_after_s=10 * 86400)
    frame = TransactionSimulator(cfg).simulate_days(20)
    day = ((frame["timestamp"].dt.epoch("s") - int(start.timestamp())) // 86400).to_numpy()
    scen = frame["fraud_scenario"].to_numpy()
    before = set(scen[(day < 10)]) - {"genuine"}
    after = set(scen[(day >= 12)]) - {"genuine"}  # a terminal compromised before stays so for its days
    assert before <= {"account_takeover", "merchant_category_shift"} and before
    assert after <= {"compromised_terminal", "velocity_burst"} and after
    amount = frame["amount"].to_numpy()
    fraud = frame["is_fraud"].to_numpy()
    assert np.median(amount[fraud & (day < 10)]) > 3 * np.median(amount[fraud & (day >= 12)])
    with pytest.raises(ValueError, match="unknown typology mix"):
        SimulatorConfig(mix="nope")
    assert set(MIXES) == {"all", "large_amounts", "normal_amounts"}


cells = st.one_of(st.none(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=40),
                  st.sampled_from(["2018-04-01 00:00:00", "2018-13-45 99:99:99", "1", "-1", "nan", "inf", "1e308"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.fixed_dictionaries({c: cells for c in ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID",
                                                                "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")}),
                     max_size=30),
       raw=st.binary(max_size=300))
def test_hostile_input_files_are_one_line_errors(sqlite_url, tmp_path_factory, rows, raw):
    """Random cells under the right header, and random bytes: a RetrainError in one line, nothing registered."""
    store = Store.from_url(sqlite_url)
    store.create_schema()
    folder = tmp_path_factory.mktemp("hostile")
    header = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]
    with open(folder / "rows.csv", "w", newline="", encoding="utf-8", errors="surrogatepass") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([["" if r[c] is None else str(r[c]) for c in header] for r in rows])
    (folder / "raw.csv").write_bytes(raw)
    for name in ("rows.csv", "raw.csv"):
        with pytest.raises(RetrainError) as info:
            retrain(store, folder / name, folder / "m", window_days=2, eval_days=1, epochs=1, max_train_rows=64)
        assert "\n" not in str(info.value)
    assert ModelRegistry(store).list() == []
    store.close()
