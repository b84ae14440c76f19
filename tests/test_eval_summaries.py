"""ROUGE evaluation: known ordering on a toy set, HTML report, clear error without references."""

import json

import pytest
from typer.testing import CliRunner

from pipelines.eval_summaries import EvalInputError, baseline_systems, evaluate, run_eval, write_html

DOCS = [
    {"id": "1", "domain": "finance", "document": "Revenue rose 10% to $2 billion.\nThanks all.\nWe expect EPS of $1.10.\nBye.",
     "summary": "Revenue rose 10% to $2 billion.\nWe expect EPS of $1.10."},
    {"id": "2", "domain": "finance", "document": "Hello everyone.\nMargins rose to 9%.\nCash was $3 million.\nGoodbye.",
     "summary": "Margins rose to 9%.\nCash was $3 million."},
]


def test_ordering_oracle_beats_baselines_beats_nonsense():
    systems = {
        "oracle": lambda r: r["summary"],
        "nonsense": lambda r: "zebra quantum violin 42%",
        **baseline_systems(),
    }
    rows = {r["system"]: r for r in evaluate(DOCS, systems, progress=False)}
    assert rows["oracle"]["rouge1"] == pytest.approx(100.0)
    assert rows["oracle"]["rouge1"] > rows["LEAD-3"]["rouge1"] > rows["nonsense"]["rouge1"] == 0.0
    assert rows["nonsense"]["figures_in_source"] == 0.0 and rows["oracle"]["figures_in_source"] == 1.0
    assert rows["LEAD-3"]["docs"] == 2


def test_html_report_with_chart(tmp_path):
    rows = evaluate(DOCS, baseline_systems(), progress=False)
    path = write_html(rows, tmp_path / "r.html", "toy")
    html = path.read_text()
    assert "<table>" in html and "data:image/png;base64," in html and "TextRank" in html


def test_reference_free_input_is_a_clear_error(tmp_path):
    data = tmp_path / "noref.jsonl"
    data.write_text(json.dumps({"id": "1", "document": "Some text."}))
    with pytest.raises(EvalInputError, match="no reference 'summary'"):
        run_eval([data], include_model=False, progress=False)


def test_cli_eval_with_tiny_model_writes_report(tmp_path, monkeypatch):
    import models.summariser as summariser
    from services.cli import app

    monkeypatch.setattr(summariser, "SHIPPED_CHECKPOINT", tmp_path / "none")  # tiny random: fast and self-contained
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in DOCS))
    res = CliRunner().invoke(app, ["eval", "summaries", "-i", str(data), "--report", str(tmp_path / "out.html"), "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert "rouge1" in res.output
    html = (tmp_path / "out.html").read_text()
    assert "LEAD-3" in html and "TextRank" in html and "tiny-random-untrained" in html
