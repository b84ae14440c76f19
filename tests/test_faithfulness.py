"""Figure normalisation and the dropping of unsupported summary sentences."""

import pytest

from pipelines.faithfulness import UnfaithfulSummaryError, assert_source_only, check_sentences, extract_figures

SOURCE = ("Revenue was $1,234.5 million, up 12% year over year. Cash reached $3.4M. Margins rose 40 basis points. "
          "We shipped 1234.5 tonnes in Q1 2021.")


@pytest.mark.parametrize("sentence", [
    "Revenue was $1.2 billion.",          # rounded restatement of 1,234.5 million
    "Revenue of 1234.5 million.",         # no thousands separator
    "Revenue of $1,234.5 million.",
    "Growth of 12 percent.",              # % spelled out
    "Cash of 3.4 million.",               # $3.4M vs 3.4 million
    "Shipped 1,234.5 tonnes in Q1.",      # Q1 is an identifier, not a figure
    "Margins up 40 bps.",
])
def test_supported_figures(sentence):
    res = check_sentences([sentence], SOURCE)
    assert res.dropped == [] and res.figures_checked == res.figures_supported >= 1


@pytest.mark.parametrize("sentence", ["Revenue was $1.3 billion.", "Growth of 13%.", "Cash of $3.5M.", "Margins up 12 bps."])
def test_unsupported_figures(sentence):
    res = check_sentences([sentence], SOURCE)
    assert res.dropped == [0] and res.unsupported


def test_dropped_sentences_are_counted():
    res = check_sentences(["Revenue was $1.2 billion.", "Profit was $99 million.", "No figures here."], SOURCE)
    assert res.kept == [0, 2] and res.dropped == [1]
    report = res.report(extractive_source_only=True)
    assert report["unsupported_dropped"] == 1 and report["figures_checked"] == 2 and report["figures_supported"] == 1
    assert report["unsupported_figures"] == ["$99 million"]


def test_figure_parsing():
    figs = {f.text: f for f in extract_figures("Sales $3.4M, 1.2 billion, 12%, -5.5%, 1,000 and COVID-19.")}
    assert figs["$3.4M"].value == pytest.approx(3.4e6)
    assert figs["1.2 billion"].value == pytest.approx(1.2e9)
    assert figs["12%"].kind == "percent" and figs["1,000"].value == 1000
    assert "19" not in figs  # glued to letters: an identifier


def test_source_only_assertion():
    assert_source_only([("Cash reached $3.4M.", SOURCE.index("Cash"), SOURCE.index("Cash") + 19)], SOURCE)
    with pytest.raises(UnfaithfulSummaryError):
        assert_source_only([("Cash reached $9M.", 0, 17)], SOURCE)
