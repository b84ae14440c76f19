"""Sentence and section splitting keep exact character spans."""

from pipelines.sections import find_section, split_sections
from pipelines.sentences import split_sentences


def _exact(text, sents):
    return all(text[s.start:s.end] == s.text for s in sents)


def test_sentences_spans_and_abbreviations():
    text = "Revenue was $1.5 billion, up 7.5%. Dr. Smith of U.S. Steel Inc. spoke.\nNext line\n\nThe apex.There is no effusion!"
    sents = split_sentences(text)
    assert [s.text for s in sents] == ["Revenue was $1.5 billion, up 7.5%.", "Dr. Smith of U.S. Steel Inc. spoke.",
                                       "Next line", "The apex.", "There is no effusion!"]
    assert _exact(text, sents)
    assert split_sentences("  \n ... \n") == []


def test_radiology_sections():
    text = "EXAM: chest two views\nFINDINGS: The heart is normal. No effusion.\nIMPRESSION: Normal chest."
    secs = split_sections(text)
    assert [s.name for s in secs] == ["preamble", "findings", "impression"]
    assert "".join(s.text(text) for s in secs) == text  # sections tile the document
    assert [s.text for s in find_section(secs, "findings").sentences(text)] == ["The heart is normal.", "No effusion."]
    imp = find_section(secs, "impression").sentences(text)
    assert imp[0].text == "Normal chest." and _exact(text, imp)


def test_10k_items_and_markdown():
    text = "Cover page\nItem 1. Business\nWe sell widgets.\nItem 1A. Risk Factors\nDemand may fall.\nItem 7. MD&A\nSales rose."
    names = [s.name for s in split_sections(text)]
    assert names == ["preamble", "item 1", "item 1a", "item 7"]
    risk = find_section(split_sections(text), "item 1a")
    assert [s.text for s in risk.sentences(text)] == ["Demand may fall."]
    md = "# Summary\nGood.\n## Risk factors\nFX risk."
    assert [s.name for s in split_sections(md)] == ["summary", "risk factors"]


def test_earnings_call_prepared_remarks_vs_qa():
    text = "Good morning.\nRevenue grew 5%.\nQuestion-and-Answer Session\nOperator: Our first question comes from Ann."
    secs = split_sections(text)
    assert [s.name for s in secs] == ["prepared remarks", "q&a"]
    assert secs[0].text(text) == "Good morning.\nRevenue grew 5%.\n"


def test_plain_document_is_one_body_section():
    text = "No headings here. Just text."
    assert [(s.name, s.start, s.end) for s in split_sections(text)] == [("body", 0, len(text))]
