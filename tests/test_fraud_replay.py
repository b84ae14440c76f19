"""`argus fraud replay`: a file scored in time order through the stream's state + scorer, no broker."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from tests.fraud_fixtures import write_handbook_csv


@pytest.fixture(scope="module")
def handbook(tmp_path_factory):
    return write_handbook_csv(tmp_path_factory.mktemp("hb") / "hb.csv.gz", n_customers=60, n_terminals=90, days=20)


def test_cli_replay_writes_scores_in_time_order_with_metrics(handbook, tmp_path):
    from services.cli import app

    out = tmp_path / "scores.parquet"
    res = CliRunner().invoke(app, ["fraud", "replay", "--input", str(handbook), "--output", str(out),
                                   "--eval-start", "2018-04-10"])
    assert res.exit_code == 0, res.output
    assert "tx/s" in res.output and "AP " in res.output and "AUC " in res.output
    df = pl.read_parquet(out)
    n = pl.read_csv(handbook).height
    assert df.height == n and df["transaction_id"].n_unique() == n
    assert df.columns == ["transaction_id", "timestamp", "customer_id", "terminal_id", "score", "decision",
                          "model_version", "label"]
    assert df["timestamp"].is_sorted()
    assert df["score"].is_between(0, 1).all()
    assert set(df["decision"].unique()) <= {"approve", "review", "decline"}


def test_replay_uses_the_stream_scoring_path(handbook, tmp_path):
    """Without labels, replay's scores equal FraudScorer.score over the same transactions in
    micro-batches (the stream job's call), against one state."""
    from models.fraud_scorer import FraudScorer
    from pipelines.fraud_replay import load_input, replay
    from pipelines.handbook import iter_transactions

    frame = load_input(handbook).drop("label")
    unlabelled = tmp_path / "tx.parquet"
    frame.write_parquet(unlabelled)
    r = replay(unlabelled, tmp_path / "out.parquet", progress=False, chunk=1000)
    replayed = dict(zip(*pl.read_parquet(r.output).select("transaction_id", "score").to_dict(as_series=False).values()))
    scorer = FraudScorer.load()
    state = scorer.new_state()
    streamed = {}
    for batch in iter_transactions(handbook, batch_size=256):
        for s in scorer.score(batch, state, explain_top_k=0):
            streamed[s.transaction_id] = s.score
    assert replayed.keys() == streamed.keys()
    assert max(abs(replayed[k] - streamed[k]) for k in streamed) < 1e-4


def test_labels_are_not_visible_before_the_delay(handbook, tmp_path):
    """With labels, no score in the first `labels_delay_days` can change: no label is visible yet."""
    from pipelines.fraud_replay import replay

    with_labels = pl.read_parquet(replay(handbook, tmp_path / "a.parquet", progress=False, labels_delay_days=7).output)
    from pipelines.fraud_replay import load_input

    unl = tmp_path / "u.parquet"
    load_input(handbook).drop("label").write_parquet(unl)
    without = pl.read_parquet(replay(unl, tmp_path / "b.parquet", progress=False, labels_delay_days=7).output)
    ts = with_labels["timestamp"].dt.epoch("s").to_numpy()
    early = ts < ts.min() + 7 * 86400
    diff = np.abs(with_labels["score"].to_numpy() - without["score"].to_numpy())
    assert diff[early].max() < 1e-6


def test_missing_input_is_one_clear_error(tmp_path):
    from services.cli import app

    res = CliRunner().invoke(app, ["fraud", "replay", "--input", str(tmp_path / "nope.csv.gz"), "--output",
                                   str(tmp_path / "o.parquet")])
    from pipelines.errors import ArgusError

    assert res.exit_code != 0  # `argus` (services.cli.main) prints ArgusErrors as one line, no traceback
    assert isinstance(res.exception, ArgusError) and "input file not found" in str(res.exception)


@pytest.fixture(scope="module")
def review_checkpoint(tmp_path_factory):
    """A tiny random checkpoint that reads the review fields (strongly, so a disposition moves its scores)."""
    import torch

    from models.checkpoint import save_task_model
    from models.fraud_scorer import FraudModel, FraudModelConfig

    torch.manual_seed(0)
    model = FraudModel(FraudModelConfig.from_preset("tiny", reviews=True))
    with torch.no_grad():
        model.review_num.weight.mul_(50)
    path = tmp_path_factory.mktemp("ckpt") / "fraud-review-tiny"
    save_task_model(path, model, {"task": "fraud", "model_version": "fraud-review-tiny", "fraud": model.config.to_dict()},
                    dtype=None)
    return path


def test_cli_replay_simulates_investigators_and_prints_cp100(handbook, review_checkpoint, tmp_path):
    from services.cli import app

    out = tmp_path / "scores.parquet"
    res = CliRunner().invoke(app, ["fraud", "replay", "--input", str(handbook), "--output", str(out), "--checkpoint",
                                   str(review_checkpoint), "--review-per-day", "5", "--review-latency", "1h",
                                   "--eval-start", "2018-04-10"])
    assert res.exit_code == 0, res.output
    assert "CP@100 " in res.output and "top 5 cards a day" in res.output
    bad = CliRunner().invoke(app, ["fraud", "replay", "--input", str(handbook), "--output", str(out),
                                   "--review-latency", "soon"])
    assert bad.exit_code != 0 and "not a duration" in bad.output


def test_replay_never_uses_a_label_or_verdict_from_the_future(handbook, review_checkpoint, tmp_path):
    """Flip every label from a cut-off time on and replay again: every score before the cut-off is
    bit-identical (their verdicts come at the day's end + latency, chargebacks 7 days late), while later
    scores do move (the investigators' verdicts reach the model)."""
    from pipelines.fraud_replay import load_input, replay

    frame = load_input(handbook)
    cut = frame["timestamp"].sort()[frame.height // 2]
    flipped = frame.with_columns(pl.when(pl.col("timestamp") >= cut).then(~pl.col("label")).otherwise(pl.col("label"))
                                 .alias("label"))
    src = tmp_path / "flipped.parquet"
    flipped.write_parquet(src)
    kw = dict(checkpoint=review_checkpoint, review_per_day=10, review_latency_s=3600, progress=False, chunk=500)
    a = pl.read_parquet(replay(handbook, tmp_path / "a.parquet", **kw).output)
    b = pl.read_parquet(replay(src, tmp_path / "b.parquet", **kw).output)
    before = (a["timestamp"] < cut).to_numpy()
    assert a["score"].to_numpy()[before].tobytes() == b["score"].to_numpy()[before].tobytes()
    assert (a["score"].to_numpy()[~before] != b["score"].to_numpy()[~before]).any()
    none = pl.read_parquet(replay(handbook, tmp_path / "c.parquet", **(kw | {"review_per_day": 0})).output)
    first_verdicts = a["timestamp"].min().replace(hour=0, minute=0, second=0, microsecond=0) + __import__(
        "datetime").timedelta(days=1, hours=1)
    early = (a["timestamp"] < first_verdicts).to_numpy()
    diff = np.abs(a["score"].to_numpy() - none["score"].to_numpy())  # other chunks: float noise only before
    assert diff[early].max() < 1e-6 and diff[~early].max() > 1e-3
