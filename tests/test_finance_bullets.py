"""Finance bullets keep their figures exactly; the selector, budget and budgeted selection behave.
No data files: the sentences are made here."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.finance_bullets import CallContext, analyst_bullet, call_context
from models.sentence_selector import (N_DENSE, N_HASH, CentralityLead, LengthBudget, SentenceSelector, budget_select,
                                      compress_bullet)
from pipelines.faithfulness import check_sentences

_NUM = re.compile(r"\d[\d,]*(?:\.\d+)?")
CTX = CallContext("q3", "2021")

money = st.builds(lambda a, b: f"${a}.{b:02d}", st.integers(0, 99), st.integers(0, 99))
amount = st.builds(lambda a, b, u: f"${a}.{b} {u}", st.integers(1, 999), st.integers(0, 9), st.sampled_from(["million", "billion"]))
pct = st.builds(lambda a, b: f"{a}.{b}%", st.integers(0, 99), st.integers(0, 9))
templates = st.sampled_from([
    "So, adjusted earnings per share were {m} in the quarter, compared to {m2} last year, driven by volume.",
    "GAAP income from continuing operations was {a} or {m} per diluted share.",
    "Revenue for the quarter was {a}, an increase of {p} compared to last year, which reflects strong demand.",
    "For fiscal 2021, we expect adjusted earnings per share of {m} to {m2}.",
    "We now expect full year revenue of {a} to {a}.",
    "Net sales declined {p} to {a}, as we had expected.",
    "I'm pleased to report that operating margin improved {p} this quarter.",
])


@settings(max_examples=80, deadline=None)
@given(t=templates, m=money, m2=money, a=amount, p=pct)
def test_bullets_keep_figures_exactly(t, m, m2, a, p):
    sentence = t.format(m=m, m2=m2, a=a, p=p)
    for bullet in (analyst_bullet(sentence, CTX), compress_bullet(sentence)):
        for fig in _NUM.findall(re.sub(r"^q[1-4] ", "", bullet)):  # the quarter label is not a figure
            assert fig in sentence, (sentence, bullet, fig)
        for money_fig in re.findall(r"\$\d[\d,.]*\d", bullet):
            assert money_fig in sentence
        assert check_sentences([bullet], sentence).kept == [0], (sentence, bullet)
        assert len(bullet) <= len(sentence) + 30


def test_analyst_templates():
    assert analyst_bullet("Adjusted earnings per share were $1.24, up 10%.", CTX) == "q3 adjusted earnings per share $1.24."
    assert analyst_bullet("For fiscal 2022, we expect GAAP EPS of $2.85 to $3.10.", CTX) == \
        "sees fy 2022 gaap earnings per share $2.85 to $3.10."
    assert analyst_bullet("Revenue grew 7.5% to $1.5 billion.", CTX) == "q3 revenue rose 7.5% to $1.5 billion."
    assert analyst_bullet("We continue to invest in our people.", CTX) == "We continue to invest in our people."
    assert call_context(["Welcome to our third quarter call.", "Third quarter sales were strong in 2021."]) == \
        CallContext("q3", "2021")


def test_bullet_that_invents_a_figure_is_dropped_by_the_faithfulness_check():
    assert check_sentences(["sees fy 2023 earnings per share $9.99."], "We expect EPS of $2.00 in 2022.").kept == []


def test_selector_budget_and_selection():
    sel = SentenceSelector(np.zeros(N_HASH + N_DENSE, np.float32), 0.0)
    sel.weights[N_HASH + 2] = 3.0  # figures
    sents = ["Thank you all for joining.", "Revenue was $5 billion, up 10%.", "We like our strategy a lot."]
    scores = sel.score(sents)
    assert scores[1] == max(scores)
    budget = LengthBudget({"medical": LengthBudget.fit_kind([1000, 2000, 4000], [100, 200, 400], "words")})
    assert 180 <= budget.predict("medical", 2000) <= 220
    assert budget.predict("finance", 100) is None
    long = [" ".join(f"w{chr(97 + i % 26)}{chr(97 + i // 26)}{chr(97 + k)}" for k in range(7)) + " common." for i in range(40)]
    picked = budget_select(long, CentralityLead(0.5).score(long), 50, 10_000)
    assert picked == sorted(picked) and 45 <= sum(len(long[i].split()) for i in picked) <= 60
