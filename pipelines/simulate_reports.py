"""Synthetic finance and medical reports, deterministic for a seed, any length.

Finance: quarterly results (highlights, segment results, guidance, risk factors), 10-K style annual
reports ("Item 1. Business", "Item 1A. Risk Factors", "Item 7. Management's Discussion ..."), and
earnings calls ("Prepared Remarks" / "Question-and-Answer"). Figures read like
"Revenue rose 12% to $3.4 billion in Q3 2024". Medical: radiology reports (FINDINGS / IMPRESSION)
and discharge summaries.

Every report carries ground truth in `metadata`: `facts` ({kind: [{text, start, end, ...}]}), its sections (title, start, end character
offsets), the figures stated (metric, value, unit, period, change, exact text and offsets), the
guidance and risk-factor sentences, and for medical reports the impression / diagnoses — so the
summariser's faithfulness checks and evaluations can be tested against known facts.
`words` sets the approximate length: ~600 words per page, so `words=60000` is a ~100-page report.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.contracts import Domain, Report

COMPANIES = ["Northwind Holdings", "Aldercrest Industries", "Bluefjord Energy", "Corvid Systems", "Halcyon Foods",
             "Meridian Logistics", "Oakhaven Pharmaceuticals", "Pellucid Semiconductors", "Quarry Point Materials",
             "Silverline Payments", "Tamarack Retail Group", "Vantage Mobility"]
SEGMENTS = ["Consumer", "Enterprise", "Industrial", "Services", "International", "Cloud", "Healthcare", "Payments"]
METRICS = [("Revenue", "billion", (0.8, 40.0)), ("Operating income", "million", (80, 4000)),
           ("Net income", "million", (50, 3000)), ("Free cash flow", "million", (40, 2500)),
           ("Adjusted EBITDA", "million", (100, 6000)), ("Gross margin", "percent", (20, 70)),
           ("Diluted earnings per share", "usd", (0.2, 9.0)), ("Operating expenses", "million", (60, 3500))]
RISKS = ["Our business depends on a limited number of suppliers, and a disruption in supply could reduce our revenue.",
         "Fluctuations in foreign currency exchange rates could adversely affect our reported results.",
         "We are subject to cybersecurity threats that could compromise our systems and customer data.",
         "Changes in interest rates may increase our cost of borrowing and reduce demand for our products.",
         "We face intense competition, and pricing pressure could reduce our gross margin.",
         "New regulations on data privacy could require costly changes to our operations.",
         "Our indebtedness could limit our flexibility in operating our business.",
         "Adverse macroeconomic conditions, including inflation, could reduce customer spending.",
         "We may not successfully integrate acquired businesses or realise the expected synergies.",
         "Litigation and regulatory investigations could result in significant costs and penalties."]
FILLER = ["Management continues to focus on disciplined capital allocation and operational efficiency.",
          "The company invested in product development and expanded its distribution footprint.",
          "Demand trends remained broadly consistent with the prior period across most regions.",
          "The board reviewed the capital return programme and reaffirmed the dividend policy.",
          "Customer retention improved as the company simplified its pricing and onboarding.",
          "Supply chain conditions normalised, although freight costs remained above historical levels.",
          "The company completed the migration of its core systems to a new platform during the period.",
          "Headcount grew modestly, primarily in engineering and customer support functions."]

RADIOLOGY_FINDINGS = {
    "normal": ["The lungs are clear without focal consolidation, pleural effusion or pneumothorax.",
               "The cardiomediastinal silhouette is within normal limits.", "No acute osseous abnormality is seen."],
    "pneumonia": ["There is a focal airspace opacity in the right lower lobe.", "No pleural effusion or pneumothorax.",
                  "The cardiac silhouette is normal in size."],
    "effusion": ["There is a moderate left pleural effusion with adjacent atelectasis.",
                 "The right lung is clear.", "Heart size is mildly enlarged."],
    "cardiomegaly": ["The cardiac silhouette is enlarged.", "There is mild pulmonary vascular congestion.",
                     "No focal consolidation is identified."],
    "nodule": ["A 9 mm nodule is present in the left upper lobe.", "No lymphadenopathy is identified.",
               "The lungs are otherwise clear."],
}
RADIOLOGY_IMPRESSION = {
    "normal": "No acute cardiopulmonary process.",
    "pneumonia": "Right lower lobe opacity, consistent with pneumonia in the appropriate clinical setting.",
    "effusion": "Moderate left pleural effusion with adjacent atelectasis.",
    "cardiomegaly": "Cardiomegaly with mild pulmonary vascular congestion.",
    "nodule": "9 mm left upper lobe pulmonary nodule; follow-up CT in 3 months is recommended.",
}
DIAGNOSES = [("community-acquired pneumonia", "ceftriaxone 1 g IV daily", "amoxicillin 500 mg three times daily"),
             ("acute exacerbation of heart failure", "furosemide 40 mg IV twice daily", "furosemide 40 mg daily"),
             ("diabetic ketoacidosis", "insulin infusion", "insulin glargine 20 units at night"),
             ("cellulitis of the left leg", "cefazolin 2 g IV every 8 hours", "cephalexin 500 mg four times daily"),
             ("acute kidney injury", "intravenous fluids", "no new medications")]

PAGE_WORDS = 600


@dataclass
class _Builder:
    """Accumulates text and records section and fact offsets as it goes."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    words: int = 0
    sections: list[dict] = field(default_factory=list)
    facts: dict[str, list] = field(default_factory=dict)

    def add(self, text: str, kind: str | None = None, **meta) -> None:
        start = self.length
        self.parts.append(text)
        self.length += len(text)
        self.words += len(text.split())
        if kind:
            self.facts.setdefault(kind, []).append({"text": text.strip(), "start": start + (len(text) - len(text.lstrip())),
                                                    "end": start + len(text.rstrip()), **meta})

    def heading(self, title: str) -> None:
        if self.sections:
            self.sections[-1]["end"] = self.length
        if self.parts:
            self.add("\n\n")
        self.sections.append({"title": title, "start": self.length, "end": None})
        self.add(title + "\n\n")

    def sentence(self, text: str, kind: str | None = None, **meta) -> None:
        if self.parts and not self.parts[-1].endswith(("\n", " ")):
            self.add(" ")
        self.add(text, kind, **meta)

    def paragraph_break(self) -> None:
        self.add("\n\n")

    def text(self) -> str:
        if self.sections and self.sections[-1]["end"] is None:
            self.sections[-1]["end"] = self.length
        return "".join(self.parts)


def _money(value: float, unit: str) -> str:
    if unit == "billion":
        return f"${value:.1f} billion"
    if unit == "million":
        return f"${value:,.0f} million"
    if unit == "usd":
        return f"${value:.2f}"
    return f"{value:.1f}%"


def _figure(rng: random.Random, b: _Builder, period: str, metric=None) -> None:
    name, unit, (lo, hi) = metric or rng.choice(METRICS)
    value = round(rng.uniform(lo, hi), 2 if unit == "usd" else 1)
    change = rng.randint(-15, 35)
    if unit == "percent":
        bp = rng.randint(-300, 300)
        verb = "expanded" if bp >= 0 else "contracted"
        text = f"{name} {verb} {abs(bp)} basis points to {value:.1f}% in {period}."
        b.sentence(text, "figure", metric=name, value=value, unit=unit, period=period, change_bp=bp)
        return
    verb = "rose" if change > 0 else ("fell" if change < 0 else "was flat")
    amount = _money(value, unit)
    if change:
        text = f"{name} {verb} {abs(change)}% to {amount} in {period}."
    else:
        text = f"{name} was flat at {amount} in {period}."
    b.sentence(text, "figure", metric=name, value=value, unit=unit, period=period, change_pct=change)


def _guidance(rng: random.Random, b: _Builder, year: int) -> None:
    lo = round(rng.uniform(1, 30), 1)
    hi = round(lo + rng.uniform(0.5, 5), 1)
    growth = rng.randint(2, 15)
    options = [f"For fiscal {year + 1}, the company expects revenue of ${lo:.1f} billion to ${hi:.1f} billion.",
               f"Management raised its full-year {year} outlook and now expects revenue growth of {growth}% to {growth + 3}%.",
               f"The company expects operating margin of approximately {rng.randint(10, 35)}% for fiscal {year + 1}.",
               f"Capital expenditures are expected to be about ${rng.randint(100, 2000):,} million in fiscal {year + 1}."]
    b.sentence(rng.choice(options), "guidance")


def _filler(rng: random.Random, b: _Builder, n: int) -> None:
    for _ in range(n):
        b.sentence(rng.choice(FILLER))


def _grow(rng: random.Random, b: _Builder, words: int, period: str, section_title) -> None:
    """Add segment/discussion sections until the report reaches `words` words."""
    k = 0
    while b.words < words:
        k += 1
        b.heading(section_title(k))
        for _ in range(4):
            _figure(rng, b, period)
            _filler(rng, b, 2)
            b.paragraph_break()


def finance_report(seed: int, kind: str | None = None, words: int = 1500) -> Report:
    rng = random.Random(seed)
    kind = kind or rng.choice(["quarterly_results", "annual_report_10k", "earnings_call"])
    company = rng.choice(COMPANIES)
    year = rng.randint(2019, 2025)
    quarter = rng.randint(1, 4)
    period = f"Q{quarter} {year}" if kind != "annual_report_10k" else f"fiscal {year}"
    b = _Builder()
    if kind == "quarterly_results":
        title = f"{company} reports {period} results"
        b.heading("Highlights")
        _figure(rng, b, period, METRICS[0])
        _figure(rng, b, period, METRICS[1])
        _figure(rng, b, period, METRICS[6])
        b.heading("Segment Results")
        for seg in rng.sample(SEGMENTS, 3):
            b.sentence(f"{seg} segment:")
            _figure(rng, b, period)
            _filler(rng, b, 1)
            b.paragraph_break()
        b.heading("Outlook")
        _guidance(rng, b, year)
        _guidance(rng, b, year)
        b.heading("Risk Factors")
        for risk in rng.sample(RISKS, 3):
            b.sentence(risk, "risk_factor")
        _grow(rng, b, words, period, lambda k: f"Supplementary Discussion {k}")
    elif kind == "annual_report_10k":
        title = f"{company} annual report on Form 10-K for {period}"
        b.heading("Item 1. Business")
        b.sentence(f"{company} operates through {rng.randint(2, 5)} reportable segments.")
        _filler(rng, b, 3)
        b.heading("Item 1A. Risk Factors")
        for risk in rng.sample(RISKS, 5):
            b.sentence(risk, "risk_factor")
            b.paragraph_break()
        b.heading("Item 7. Management's Discussion and Analysis of Financial Condition and Results of Operations")
        for metric in METRICS[:4]:
            _figure(rng, b, period, metric)
        _filler(rng, b, 2)
        _guidance(rng, b, year)
        b.heading("Item 7A. Quantitative and Qualitative Disclosures About Market Risk")
        b.sentence(f"A 100 basis point increase in interest rates would change annual interest expense by about ${rng.randint(5, 90)} million.", "figure",
                   metric="Interest rate sensitivity", unit="million", period=period)
        _grow(rng, b, words, period, lambda k: f"Item 8. Financial Statements and Supplementary Data (Note {k})")
    elif kind == "earnings_call":
        title = f"{company} {period} earnings call"
        b.heading("Prepared Remarks")
        b.sentence(f"Chief Executive Officer: Thank you, and good afternoon. {period} was a solid quarter for {company}.")
        _figure(rng, b, period, METRICS[0])
        _figure(rng, b, period, METRICS[3])
        b.sentence("Chief Financial Officer: Turning to the details.")
        _figure(rng, b, period, METRICS[5])
        _figure(rng, b, period, METRICS[6])
        _guidance(rng, b, year)
        b.heading("Question-and-Answer")
        for _ in range(3):
            b.sentence(f"Analyst: Can you talk about demand in {rng.choice(SEGMENTS)}?")
            b.sentence("Chief Executive Officer: We saw healthy demand.")
            _figure(rng, b, period)
            b.paragraph_break()
        _grow(rng, b, words, period, lambda k: f"Question-and-Answer (continued {k})")
    else:
        raise ValueError(f"unknown finance report kind {kind!r}")
    text = b.text()
    return Report(report_id=f"fin-{seed}", domain=Domain.finance, title=title, text=text,
                  metadata={"kind": kind, "company": company, "period": period, "words": b.words, "seed": seed,
                            "sections": b.sections, "figures": b.facts.get("figure", []),
                            "guidance": b.facts.get("guidance", []), "risk_factors": b.facts.get("risk_factor", []),
                            "facts": b.facts})


def medical_report(seed: int, kind: str | None = None, words: int = 0) -> Report:
    """A radiology report or discharge summary; `words` > its natural length pads the body."""
    rng = random.Random(seed)
    kind = kind or rng.choice(["radiology", "discharge_summary"])
    age, sex = rng.randint(18, 95), rng.choice(["male", "female"])
    b = _Builder()
    meta: dict = {"kind": kind, "seed": seed}
    if kind == "radiology":
        condition = rng.choice(list(RADIOLOGY_FINDINGS))
        title = "Chest radiograph, PA and lateral"
        b.heading("EXAMINATION")
        b.sentence("Chest, two views.")
        b.heading("INDICATION")
        b.sentence(f"{age}-year-old {sex} with {rng.choice(['cough', 'shortness of breath', 'fever', 'chest pain'])}.")
        b.heading("COMPARISON")
        b.sentence(rng.choice(["None.", f"Prior radiograph from {rng.randint(2015, 2023)}."]))
        b.heading("FINDINGS")
        for s in RADIOLOGY_FINDINGS[condition]:
            b.sentence(s, "finding")
        while b.words < words - 20:
            b.sentence(rng.choice(["The visualised upper abdomen is unremarkable.", "Degenerative changes of the thoracic spine are noted.",
                                   "Support devices are absent.", "The trachea is midline."]))
        b.heading("IMPRESSION")
        b.sentence(RADIOLOGY_IMPRESSION[condition], "impression")
        meta["condition"] = condition
    elif kind == "discharge_summary":
        diagnosis, inpatient, discharge = rng.choice(DIAGNOSES)
        days = rng.randint(2, 12)
        title = "Discharge summary"
        b.heading("Admission Diagnosis")
        b.sentence(f"{diagnosis.capitalize()}.", "diagnosis")
        b.heading("History of Present Illness")
        b.sentence(f"The patient is a {age}-year-old {sex} who presented with {rng.randint(2, 7)} days of worsening symptoms.")
        b.heading("Hospital Course")
        b.sentence(f"The patient was treated with {inpatient} and improved over {days} days.", "finding")
        while b.words < words - 40:
            b.sentence(rng.choice(["Vital signs remained stable.", "Renal function was monitored daily.",
                                   "Physical therapy evaluated the patient before discharge.", "Pain was controlled with oral analgesia."]))
        b.heading("Discharge Medications")
        b.sentence(f"{discharge.capitalize()}.", "medication")
        b.heading("Discharge Instructions")
        b.sentence(f"Follow up with the primary care physician in {rng.randint(1, 3)} weeks.", "follow_up")
        meta.update(diagnosis=diagnosis, length_of_stay_days=days)
    else:
        raise ValueError(f"unknown medical report kind {kind!r}")
    text = b.text()
    meta.update(words=b.words, sections=b.sections, facts=b.facts)
    return Report(report_id=f"med-{seed}", domain=Domain.medical, title=title, text=text, metadata=meta)


def generate_reports(count: int, domain: str | None = None, seed: int = 0, words: int | None = None) -> Iterator[Report]:
    """`count` reports; domain None alternates finance and medical. Report i uses seed `seed * 1_000_003 + i`."""
    for i in range(count):
        dom = domain or ("finance" if i % 2 == 0 else "medical")
        s = seed * 1_000_003 + i
        if dom == "finance":
            yield finance_report(s, words=words or 1500)
        elif dom == "medical":
            yield medical_report(s, words=words or 0)
        else:
            from pipelines.errors import ArgusError

            raise ArgusError(f"unknown domain {dom!r}: use finance or medical")


def write_reports(reports: Iterator[Report], output: str | Path) -> int:
    """`.jsonl` -> one Report per line; `.parquet` -> a table; otherwise a directory of <report_id>.txt
    files with a <report_id>.json sidecar holding the metadata."""
    import json

    output = Path(output)
    n = 0
    if output.suffix == ".jsonl":
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("wb") as fh:
            for r in reports:
                fh.write(r.to_json() + b"\n")
                n += 1
    elif output.suffix == ".parquet":
        import polars as pl

        rows = [{"report_id": r.report_id, "domain": r.domain.value, "title": r.title, "text": r.text,
                 "metadata": json.dumps(r.metadata)} for r in reports]
        output.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(rows).write_parquet(output)
        n = len(rows)
    else:
        output.mkdir(parents=True, exist_ok=True)
        for r in reports:
            (output / f"{r.report_id}.txt").write_text(r.text)
            (output / f"{r.report_id}.json").write_text(json.dumps({"report_id": r.report_id, "domain": r.domain.value,
                                                                     "title": r.title, "metadata": r.metadata}, indent=1))
            n += 1
    return n


def produce_reports(settings, reports: Iterator[Report]) -> int:
    """Send reports to the reports topic (keyed by report_id); returns how many were acknowledged."""
    from pipelines.kafka_io import make_producer

    producer = make_producer(settings, max_request_size=max(settings.kafka.max_message_bytes, 16 * 1_048_576))
    n = 0
    try:
        for r in reports:
            producer.send(settings.topics.reports, r.to_json(), key=r.report_id)
            n += 1
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=30)
    return n
