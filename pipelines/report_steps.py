"""The summarisation steps shared by the batch job (files) and the report stream (Kafka).

    candidates ──► check_input (contract, size, domain, prose) ──► validate_reports (GX)
               ──► SummarizerPool (Ray actors) ──► validate_summaries (GX) ──► Result per candidate

A `Candidate` is one input record with where it came from; it either holds a `Report` or already
failed (unreadable, not JSON, ...). `summarise_candidates` returns one `Result` per candidate, in
order: a validated `ReportSummary`, or an error with the stage it failed at. Nothing is dropped, so
every failure can become a dead letter and an `error` row.

Bad input, decided here:
* empty / blank text, unknown domain, missing id: the `Report` contract rejects it (stage decode);
* more than `summariser.max_document_bytes` of UTF-8: rejected (stage decode, reason `oversized`) -
  10 MB of text is ~2M words, far beyond the 128K-token range the summariser is built for;
* no prose sentences (only tables / figures): rejected (stage validate_input) - a summary of a
  table would be the table;
* anything the summariser raises for one report: that report fails (stage summarize).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, islice
from typing import Any

from pipelines.contracts import ContractError, Report, ReportSummary, decode
from pipelines.store import DeadLetter

STAGES = ("read", "decode", "validate_input", "summarize", "validate_output")

_ALPHA_WORD = re.compile(r"[^\W\d_]{2,}")
# `len(_ALPHA_WORD.findall(s)) >= 3` without the list: three runs of 2+ letters, between them anything
# but such a run (other characters, single letters). Runs are taken whole (possessive) and a try
# starts only at a run's start, so a failed try is one of the last two runs': linear.
_THREE_WORDS = re.compile(r"(?<![^\W\d_])(?:[^\W\d_]{2,}+(?:[\W\d_]|[^\W\d_](?![^\W\d_]))*+){2}[^\W\d_]{2}")
# A table-like line is one of: `| ... |`; a rule made of - = : | + and blanks; or at least two `cell |`.
# Each test is linear (one run, or runs of disjoint classes); the former single pattern
# `^\s*(\|.*\||[-=:|+\s]+|(?:[^\s|]+\s*\|\s*){2,}.*)\s*$` overlapped three blank runs: 800 blanks and a
# letter took 1 s.
_RULE_LINE = re.compile(r"[-=:|+\s]+")
_CELLS = re.compile(r"\s*[^\s|]+\s*\|\s*[^\s|]+\s*\|")


def is_table_line(line: str) -> bool:
    """Whether one line (no line break in it) looks like part of a table rather than prose."""
    stripped = line.strip()
    if len(stripped) >= 2 and stripped[0] == "|" and stripped[-1] == "|":
        return True
    return bool(line) and (_RULE_LINE.fullmatch(line) is not None or _CELLS.match(line) is not None)


@dataclass
class Candidate:
    key: str  # report id, or a stand-in naming the position
    source: str  # topic or file path
    partition: int | None
    offset: int | None
    report: Report | None = None
    error: str | None = None
    stage: str | None = None
    payload: bytes | str | None = None  # kept for the dead letter
    extra: dict[str, Any] = field(default_factory=dict)  # input fields the output keeps
    content_hash: str | None = None  # sha256 of the document text (resume: id + content)

    def fail(self, reason: str, stage: str) -> None:
        self.report, self.error, self.stage = None, reason, stage


@dataclass
class Result:
    candidate: Candidate
    summary: ReportSummary | None = None
    error: str | None = None
    stage: str | None = None

    @property
    def ok(self) -> bool:
        return self.summary is not None

    def dead_letter(self) -> DeadLetter:
        c = self.candidate
        payload = c.payload
        if payload is None and c.report is not None:
            payload = c.report.to_json()
        return DeadLetter(source=c.source, partition=c.partition, offset=c.offset, payload=payload,
                          reason=f"{c.key}: {self.error}", stage=self.stage or "unknown")


def has_prose(text: str) -> bool:
    """True when some sentence outside table-like lines has at least three words of letters."""
    from pipelines.sentences import sentence_texts

    # A sentence never spans lines, so only the lines with three words (found in bulk, no Python step
    # per line) can hold one; they are tested as tables and split in batches that double (the first
    # line with prose answers at once; n such lines take about log2(n) splits). A million one-word
    # lines cost 2 us each before.
    lines = text.splitlines()
    candidates = (line for line in compress(lines, map(_THREE_WORDS.search, lines)) if not is_table_line(line))
    size = 1
    while batch := list(islice(candidates, size)):
        if any(map(_THREE_WORDS.search, sentence_texts("\n".join(batch)))):
            return True
        size *= 2
    return False


def to_report(data: dict[str, Any], max_bytes: int) -> Report:
    """A `Report` from plain fields, or ContractError with the reason."""
    text = data.get("text")
    if isinstance(text, str):
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise ContractError(f"oversized: {size} bytes of text > summariser.max_document_bytes ({max_bytes})")
    return decode(Report, data)


def check_prose(candidates: Iterable[Candidate]) -> None:
    for c in candidates:
        if c.report is not None and not has_prose(c.report.text):
            c.fail("no sentences: the document holds only tables, figures or symbols, nothing to summarise",
                   "validate_input")


def validate_input(candidates: Sequence[Candidate], engine: str = "gx") -> None:
    """great-expectations `reports` suite over the candidates that hold a report."""
    from pipelines.validation import validate_reports

    live = [c for c in candidates if c.report is not None]
    if not live:
        return
    result = validate_reports([c.report for c in live], engine=engine)
    failed = {id(row): reason for row, reason in result.failures}
    for c in live:
        if id(c.report) in failed:
            c.fail(failed[id(c.report)], "validate_input")


def summarise_candidates(candidates: Sequence[Candidate], pool: Any, *, mode: str = "extractive",
                         max_sentences: int = 5, max_chars: int = 1200, batch_size: int = 4,
                         validation_engine: str = "gx", on_batch: Any = None) -> list[Result]:
    """One `Result` per candidate, in order (see the module docstring for the steps)."""
    check_prose(candidates)
    validate_input(candidates, validation_engine)
    live = [c for c in candidates if c.report is not None]
    outcomes = pool.summarize([c.report for c in live], batch_size=batch_size, mode=mode, on_batch=on_batch,
                              max_sentences=max_sentences, max_chars=max_chars) if live else []
    by_candidate: dict[int, Result] = {}
    for c, outcome in zip(live, outcomes, strict=True):
        if outcome.summary is None:
            by_candidate[id(c)] = Result(c, error=outcome.error, stage="summarize")
        elif not outcome.summary.summary.strip():
            by_candidate[id(c)] = Result(c, error="empty summary: no sentence survived selection and the "
                                                  "faithfulness checks", stage="summarize")
        else:
            by_candidate[id(c)] = Result(c, summary=outcome.summary)
    good = [r for r in by_candidate.values() if r.ok]
    if good:
        from pipelines.validation import validate_summaries

        check = validate_summaries([r.summary for r in good],
                                   sources={r.candidate.report.report_id: r.candidate.report.text for r in good},
                                   engine=validation_engine)
        for summary, reason in check.failures:
            for r in good:
                if r.summary is summary:
                    r.summary, r.error, r.stage = None, reason, "validate_output"
    return [by_candidate.get(id(c)) or Result(c, error=c.error, stage=c.stage) for c in candidates]


def output_row(result: Result) -> dict[str, Any]:
    """The batch output row: summary, key facts and sentences with their source spans, or the error."""
    import json

    c, s = result.candidate, result.summary
    row: dict[str, Any] = {
        "id": c.key,
        "domain": (s.domain.value if s else (c.report.domain.value if c.report else None)),
        "summary": s.summary if s else None,
        "sentences": [{"text": x.text, "spans": [{"start": p.start, "end": p.end} for p in x.spans]}
                      for x in s.sentences] if s else [],
        "key_facts": [{"kind": k.kind, "text": k.text, "spans": [{"start": p.start, "end": p.end} for p in k.spans]}
                      for k in s.key_facts] if s else [],
        "spans": [{"start": p.start, "end": p.end} for p in s.spans] if s else [],
        "model_version": s.model_version if s else None,
        "mode": s.mode if s else None,
        "latency_ms": s.latency_ms if s else None,
        "faithfulness": json.dumps(s.faithfulness, default=str) if s else None,
        "error": None if s else result.error,
        "error_stage": None if s else result.stage,
        "source": c.source,
        "position": c.offset,
        "content_hash": c.content_hash,
    }
    for k, v in c.extra.items():
        name = f"input_{k}" if k in row else k
        row[name] = v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, default=str)
    return row
