"""`argus train fraud` end to end on a small generated handbook file: checkpoint, card, reload, score."""

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from models.train_fraud import TrainConfig, card_precision_at_k, handbook_features, read_handbook, time_split
from services.cli import app
from tests.fraud_fixtures import write_handbook_csv


def test_cli_trains_tiny_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGUS_HOME", str(tmp_path))
    data = write_handbook_csv(tmp_path / "hb.csv.gz")
    out = tmp_path / "ck"
    result = CliRunner().invoke(app, ["train", "fraud", "--preset", "tiny", "--input", str(data), "--output", str(out),
                                      "--epochs", "1", "--seed", "3", "--batch-size", "256"])
    assert result.exit_code == 0, result.output
    assert "lightgbm-handbook" in result.output and "argus-moe" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "fraud" and config["seed"] == 3
    assert set(config["metrics"]) == {"ap", "auc", "cp100"}
    assert set(config["metrics"]["ap"]) == {"argus-moe", "lightgbm-handbook"}
    card = (out / "README.md").read_text()
    assert "Metrics" in card and "validation" in card

    from models.fraud_scorer import FraudScorer
    from pipelines.contracts import Transaction

    scorer = FraudScorer.load(out)
    assert scorer.model_version == config["model_version"]
    [s] = scorer.score([Transaction(transaction_id="z", timestamp=datetime(2018, 6, 1, tzinfo=timezone.utc),
                                    customer_id="1", terminal_id="2", amount=500.0)], scorer.new_state(), 0.5, 0.2)
    assert 0.0 <= s.score <= 1.0


def test_cli_trains_a_model_that_reads_the_spend_fields(tmp_path, monkeypatch):
    from models.fraud_scorer import FraudScorer
    from models.fraud_spend import SPEND_FIELDS

    monkeypatch.setenv("ARGUS_HOME", str(tmp_path))
    data = write_handbook_csv(tmp_path / "hb.csv.gz")
    result = CliRunner().invoke(app, ["train", "fraud", "--preset", "tiny", "--input", str(data), "--output",
                                      str(tmp_path / "ck"), "--epochs", "1", "--batch-size", "256", "--spend",
                                      "--no-baseline"])
    assert result.exit_code == 0, result.output
    scorer = FraudScorer.load(tmp_path / "ck")
    assert scorer.config.spend_fields == list(SPEND_FIELDS) and scorer.new_state().spend is not None
    assert FraudScorer.load(None).new_state().spend is None  # the shipped checkpoint keeps no spend memory


def test_bad_input_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = CliRunner().invoke(app, ["train", "fraud", "--input", str(bad), "--output", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "lacks handbook columns" in str(result.exception) or "lacks handbook columns" in result.output


def test_split_has_a_gap_of_at_least_the_label_delay(tmp_path):
    df = read_handbook(write_handbook_csv(tmp_path / "hb.csv", days=60))
    split = time_split(df, TrainConfig(labels_delay_days=7, val_days=14))
    assert split.val_days[0] - split.train_days[1] - 1 >= 7
    assert df["DAY"].iloc[split.train].max() < df["DAY"].iloc[split.val].min() - 7


def test_handbook_features_are_causal(tmp_path):
    df = read_handbook(write_handbook_csv(tmp_path / "hb.csv", days=30))
    feats = handbook_features(df, 7)
    # changing a label today must not change today's or the next 6 days' terminal risk
    later = df.copy()
    i = len(df) // 2
    later.loc[i, "TX_FRAUD"] = 1 - later.loc[i, "TX_FRAUD"]
    feats2 = handbook_features(later, 7)
    soon = (df["TS"] < df["TS"].iloc[i] + 7 * 86400).to_numpy()
    pd.testing.assert_frame_equal(feats[soon], feats2[soon])
    assert (feats["customer_nb_tx_1d"] >= 1).all()


def test_card_precision_at_k():
    df = pd.DataFrame({"DAY": [0, 0, 0, 1, 1], "CUSTOMER_ID": [1, 2, 3, 1, 2], "TX_FRAUD": [1, 0, 0, 0, 1]})
    assert card_precision_at_k(df, np.array([0.9, 0.1, 0.2, 0.5, 0.4]), k=1) == 0.5
