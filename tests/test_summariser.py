"""The summariser API on tiny random weights (fast) and on the shipped small checkpoint."""

import pytest

from pipelines.report_summariser import SHIPPED_CHECKPOINT, TINY_RANDOM_VERSION, Summarizer, SummariserInputError
from pipelines.contracts import Report, ReportSummary

FINANCE = (
    "Good morning and welcome to the call.\n"
    "Revenue for the quarter was $1.5 billion, a decrease of 7.5% compared to last year.\n"
    "Revenue for the quarter was $1.5 billion, a decrease of 7.5% compared to the prior year.\n"
    "Adjusted EBITDA margin expanded 40 basis points to 8.3%.\n"
    "For fiscal 2021, we expect earnings per share of $2.85 to $3.10.\n"
    "Supply chain headwinds remain a risk for the second half.\n"
    "Thank you.\n"
)
MEDICAL = ("FINDINGS: The heart size is normal. The lungs are clear. There is no pleural effusion or pneumothorax.\n"
           "IMPRESSION: No acute cardiopulmonary abnormality.")


@pytest.fixture(scope="module")
def tiny():
    return Summarizer.tiny_random()


def _report(text, domain="finance", rid="r1"):
    return Report(report_id=rid, domain=domain, text=text)


def test_extractive_is_source_text_with_exact_spans(tiny):
    for text, domain in [(FINANCE, "finance")]:
        out = tiny.summarize(_report(text, domain), mode="extractive", max_sentences=3)
        assert isinstance(out, ReportSummary) and out.model_version == TINY_RANDOM_VERSION
        assert out.sentences and out.faithfulness["extractive_source_only"] is True
        for s in out.sentences:
            assert len(s.spans) == 1 and text[s.spans[0].start:s.spans[0].end] == s.text
        assert out.summary == "\n".join(s.text for s in out.sentences)
    # a chest radiograph gets the impression writer instead (tests/test_radiology.py): normal findings -> template
    text = MEDICAL
    out = tiny.summarize(_report(text, "medical"), mode="extractive", max_sentences=3)
    assert out.summary == "No acute cardiopulmonary abnormality." and out.faithfulness["abnormal_findings"] is False
    kinds = {f.kind for f in out.key_facts}
    assert {"finding", "impression"} <= kinds
    for f in out.key_facts:
        assert all(text[sp.start:sp.end] in f.text or f.text in text for sp in f.spans)


def test_redundancy_control_and_length_budget(tiny):
    out = tiny.summarize(_report(FINANCE), max_sentences=6, max_chars=10_000)
    texts = [s.text for s in out.sentences]
    # The two near-duplicate revenue sentences never both appear.
    assert sum(t.startswith("Revenue for the quarter") for t in texts) <= 1
    short = tiny.summarize(_report(FINANCE), max_sentences=6, max_chars=120)
    assert len(short.summary) <= 120 and short.sentences
    one = tiny.summarize(_report(FINANCE), max_sentences=1)
    assert len(one.sentences) == 1


def test_finance_key_facts_have_source_spans(tiny):
    out = tiny.summarize(_report(FINANCE))
    figures = [f for f in out.key_facts if f.kind == "figure"]
    assert any(f.text.startswith("$1.5 billion") for f in figures)
    assert any(f.kind == "guidance" for f in out.key_facts) and any(f.kind == "risk_factor" for f in out.key_facts)
    for f in figures:
        assert FINANCE[f.spans[0].start:f.spans[0].end] == f.text.split(" (")[0]


def test_long_document_is_chunked():
    small_window = Summarizer.tiny_random(window_tokens=128, overlap_tokens=32)
    text = "\n".join(f"Segment {i} revenue grew {i % 17 + 1}% on strong demand in region {i}." for i in range(150))
    out = small_window.summarize(_report(text), max_sentences=4)
    assert out.faithfulness["windows"] > 5 and out.faithfulness["sentences_scored"] == 150
    assert all(text[s.spans[0].start:s.spans[0].end] == s.text for s in out.sentences)


@pytest.mark.parametrize("bad", ["\x00\x01 --- ...", "  ###  "])
def test_non_text_document_is_a_clear_error(tiny, bad):
    with pytest.raises(SummariserInputError, match="no sentences"):
        tiny.summarize(_report(bad))


def test_wrong_input_and_mode(tiny):
    with pytest.raises(SummariserInputError, match="expected a pipelines.contracts.Report"):
        tiny.summarize({"text": "hello"})
    with pytest.raises(SummariserInputError, match="unknown mode"):
        tiny.summarize(_report(FINANCE), mode="abstractive")
    with pytest.raises(ValueError):
        Report(report_id="x", domain="finance", text="   ")  # empty text is rejected by the contract


def test_generative_path_returns_report_summary(tiny):
    out = tiny.summarize(_report(FINANCE), mode="generative", max_new_tokens=24)
    assert isinstance(out, ReportSummary) and out.mode == "generative"
    assert out.faithfulness["extractive_source_only"] is False and "figures_checked" in out.faithfulness
    for s in out.sentences:  # spans, where found, point at source text
        for sp in s.spans:
            assert 0 <= sp.start < sp.end <= len(FINANCE)


def test_generative_map_reduce_over_chunks():
    small_window = Summarizer.tiny_random(window_tokens=160, overlap_tokens=0)
    text = "\n".join(f"Segment {i} revenue grew on strong demand in region {i}." for i in range(30))
    out = small_window.summarize(_report(text), mode="generative", max_new_tokens=4)
    assert out.faithfulness["chunks"] > 1


def test_summarize_many_keeps_order(tiny):
    reports = [_report(FINANCE, rid="a"), _report(MEDICAL, "medical", rid="b")]
    outs = tiny.summarize_many(reports)
    assert [o.report_id for o in outs] == ["a", "b"]


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").is_file(), reason="no shipped checkpoint in this checkout")
def test_shipped_checkpoint_loads_and_prefers_figures():
    s = Summarizer.load()
    assert s.model_version.startswith("summariser-small") and s.scorer.head is not None
    out = s.summarize(_report(FINANCE), max_sentences=2)
    # The trained scorer ranks results/guidance above pleasantries.
    assert all(t not in out.summary for t in ("Good morning", "Thank you"))


def test_broken_checkpoint_directory_is_a_model_error(tmp_path):
    from pipelines.errors import ModelError

    with pytest.raises(ModelError):
        Summarizer.load(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError):
        Summarizer.load(tmp_path)


def test_plain_hf_causal_lm_directory_generates(tmp_path, tiny):
    """A user's local HF MoE checkpoint (no Argus head) loads: generative + centroid extractive."""
    tiny.lm.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    s = Summarizer.load(tmp_path, writers=None)  # the MoE path only (no fitted selector / bullets)
    assert s.scorer.head is None and s.model_version.endswith("+centroid-extractive")
    out = s.summarize(_report(FINANCE), max_sentences=2)
    assert all(FINANCE[x.spans[0].start:x.spans[0].end] == x.text for x in out.sentences)
    assert s.summarize(_report(FINANCE), mode="generative", max_new_tokens=4).mode == "generative"
