"""The report summariser's document pipeline: `Report` in, validated-ready `ReportSummary` out.

    summarizer = Summarizer.load()                 # model.summariser_checkpoint, else shipped, else tiny random
    summary = summarizer.summarize(report)         # extractive by default; mode="generative"

`Summarizer` extends models.summariser.SummariserModel (the LM, the sentence scorer, the fitted
writers) with the steps that read documents: sentence splitting, sections, the radiology
impression path, MMR / budgeted selection, analyst bullets, map-reduce generation, the
faithfulness checks and key facts. Extractive article summaries are source text only (asserted);
any summary sentence whose figures the source does not contain is dropped and counted.
"""

from __future__ import annotations

import time

import torch

from models.sentence_scorer import encode_sentences, plan_windows
from models.sentence_selector import budget_select
from models.summariser import (DEFAULT_MAX_CHARS, DEFAULT_MAX_SENTENCES, MODES, SHIPPED_CHECKPOINT, TINY_RANDOM_VERSION,
                               SummariserInputError, SummariserModel)
from pipelines.contracts import Report, ReportSummary, Span, SummarySentence
from pipelines.faithfulness import assert_source_only, check_sentences
from pipelines.key_facts import key_facts
from pipelines.sections import split_sections
from pipelines.sentence_selection import mmr_select, words
from pipelines.sentences import Sentence, split_sentences

__all__ = ["Summarizer", "SummariserInputError", "SHIPPED_CHECKPOINT", "TINY_RANDOM_VERSION", "MODES"]


class Summarizer(SummariserModel):
    @classmethod
    def load(cls, path=None, device: str = "cpu", **kwargs) -> "Summarizer":
        """`path=None`: model.summariser_checkpoint (ARGUS_MODEL__SUMMARISER_CHECKPOINT), else the shipped
        checkpoint, else `tiny` random weights. The engine backend defaults to model.engine_backend."""
        from pipelines.settings import get_settings

        model = get_settings().model
        if path is None:
            path = model.summariser_checkpoint
        kwargs.setdefault("backend", getattr(model, "engine_backend", None))
        return super().load(path, device=device, **kwargs)

    @classmethod
    def tiny_random(cls, device: str = "cpu", **kwargs) -> "Summarizer":
        from pipelines.settings import get_settings

        kwargs.setdefault("backend", getattr(get_settings().model, "engine_backend", None))
        return super().tiny_random(device, **kwargs)

    def summarize(self, report: Report, mode: str = "extractive", max_sentences: int | None = None,
                  max_chars: int | None = None, max_new_tokens: int | None = None) -> ReportSummary:
        """`max_sentences` / `max_chars`: caps; None (the default) leaves the length to the budget fitted
        for the domain (models/sentence_selector.LengthBudget), else 5 sentences / 4000 chars.
        A chest radiograph's findings (medical, short, about the chest) get the impression writer in
        either mode: it never calls an abnormal study normal (models/impression.py)."""
        t0 = time.perf_counter()
        if not isinstance(report, Report):
            raise SummariserInputError(f"expected a pipelines.contracts.Report, got {type(report).__name__}")
        if mode not in MODES:
            raise SummariserInputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if (max_sentences is not None and max_sentences < 1) or (max_chars is not None and max_chars < 1):
            raise SummariserInputError("max_sentences and max_chars must be positive")
        text = report.text
        sentences = split_sentences(text)
        if not sentences or not any(len(words(s.text)) > 0 for s in sentences):
            raise SummariserInputError(f"report {report.report_id}: no sentences with text to summarise")
        if report.domain.value == "medical" and self.writers.is_radiograph(text):
            chosen, faith = self._impression(report)
        elif mode == "extractive":
            chosen, faith = self._extractive(report, sentences, max_sentences, max_chars)
        else:
            max_sentences = max_sentences or DEFAULT_MAX_SENTENCES
            max_chars = max_chars or 1200
            chosen, faith = self._generative(report, sentences, max_sentences, max_chars, max_new_tokens)
        facts = key_facts(text, report.domain.value, sentences)
        return ReportSummary(
            report_id=report.report_id,
            domain=report.domain,
            summary="\n".join(s.text for s in chosen),
            sentences=chosen,
            key_facts=facts,
            model_version=self.model_version,
            mode=mode,
            faithfulness=faith,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )


    def summarize_many(self, reports: list[Report], mode: str = "extractive", **kwargs) -> list[ReportSummary]:
        """Summaries in input order (one inference context; windows are bounded per document)."""
        with torch.inference_mode():
            return [self.summarize(r, mode=mode, **kwargs) for r in reports]


    def _impression(self, report: Report):
        """Radiology: the finding-aware impression (lines are source clauses or the normal template)."""
        text = report.text
        lines, labelled = self.writers.impression(text)
        whole = [Span(start=0, end=len(text.rstrip()))]  # a template line rests on the whole findings
        out = [SummarySentence(text=ln.text, spans=[Span(start=ln.start, end=ln.end)] if ln.start is not None else whole)
               for ln in lines]
        check = check_sentences([s.text for s in out], text)
        kept = [out[i] for i in check.kept] or out[:1]
        return kept, check.report(extractive_source_only=False, writer=self.writers.impression_version,
                                  abnormal_findings=labelled.abnormal,
                                  observations={k: v for k, v in labelled.labels.items() if v is not None},
                                  note="radiology impression: source clauses of the asserted findings, "
                                       "or the normal template when no pathology is asserted or suspected")


    def _budget(self, report: Report, sentences: list[Sentence], max_sentences: int | None,
                max_chars: int | None) -> tuple[int, int, int | None]:
        """(sentence cap, char cap, word budget or None): the caller's caps, else the fitted budget."""
        n_words = sum(len(s.text.split()) for s in sentences)
        units = self.writers.budget.predict(report.domain.value, n_words)
        unit = (self.writers.budget.fits.get(report.domain.value) or {}).get("unit")
        sent_cap = max_sentences or (max(1, round(units)) if unit == "bullets" and units else
                                     max(DEFAULT_MAX_SENTENCES, len(sentences)))
        char_cap = max_chars or DEFAULT_MAX_CHARS
        word_budget = int(round(units)) if unit == "words" and units and max_sentences is None else None
        return sent_cap, char_cap, word_budget


    def _extractive(self, report: Report, sentences: list[Sentence], max_sentences: int | None,
                    max_chars: int | None):
        sent_cap, char_cap, word_budget = self._budget(report, sentences, max_sentences, max_chars)
        selector = self.writers.selectors.get(report.domain.value)
        texts = [s.text for s in sentences]
        if selector is not None:
            scores, n_windows, scorer = selector.score(texts), 0, selector.version
        else:
            scores, n_windows = self.scorer.score(self.tokenizer, report.domain.value, texts,
                                                  self.window_tokens, self.overlap_tokens)
            scorer = "moe-head" if self.scorer.head is not None else "moe-centroid"
        if report.domain.value == "finance" and selector is not None:
            return self._bullets(report, sentences, scores, sent_cap, char_cap, scorer)
        if word_budget is not None:
            order = budget_select(texts, scores, word_budget, char_cap)
        else:
            order = mmr_select(texts, scores, sent_cap, char_cap)
        picked = [sentences[i] for i in order]
        check = check_sentences([s.text for s in picked], report.text)
        kept = [picked[i] for i in check.kept]
        # Source text only, byte for byte (for medical reports this is a hard requirement).
        assert_source_only([(s.text, s.start, s.end) for s in kept], report.text)
        out = [SummarySentence(text=s.text, spans=[Span(start=s.start, end=s.end)]) for s in kept]
        return out, check.report(extractive_source_only=True, sentences_scored=len(sentences), windows=n_windows,
                                 scorer=scorer, word_budget=word_budget)


    def _bullets(self, report: Report, sentences: list[Sentence], scores: list[float], n: int, max_chars: int,
                 scorer: str):
        """Finance: the top sentences (MMR over their bullets), each rewritten as a short analyst bullet
        whose figures are copied verbatim; the span is the piece of the sentence it keeps, or the sentence."""
        bullets = self.writers.bullets([s.text for s in sentences])
        order = mmr_select(bullets, scores, n, max_chars, max_overlap=0.7)  # template bullets share phrasing
        out = []
        for i in order:
            s, b = sentences[i], bullets[i]
            core = b[:-1] if b.endswith(".") and not s.text.endswith(b) else b
            off = s.text.find(core)
            spans = [Span(start=s.start + off, end=s.start + off + len(core))] if off >= 0 else \
                [Span(start=s.start, end=s.end)]
            out.append(SummarySentence(text=b, spans=spans))
        check = check_sentences([x.text for x in out], report.text)  # every figure in a bullet is in the source
        kept = [out[i] for i in check.kept]
        return kept, check.report(extractive_source_only=False, sentences_scored=len(sentences), scorer=scorer,
                                  bullets=len(kept), note="analyst bullets: template or clause of a source sentence, "
                                  "figures verbatim and checked against the source")


    def _chunks(self, text: str, budget: int) -> list[list[Sentence]]:
        """Map step input: sections that fit, long sections split into windows, small ones merged."""
        chunks: list[list[Sentence]] = []
        for section in split_sections(text):
            sents = section.sentences(text)
            if not sents:
                continue
            ids = encode_sentences(self.tokenizer, [s.text for s in sents])
            for w in plan_windows([], ids, budget, 0):
                part = sents[w.first : w.last]
                size = sum(len(i) for i in ids[w.first : w.last])
                if chunks and size + self._size(chunks[-1]) <= budget:
                    chunks[-1] = chunks[-1] + part
                else:
                    chunks.append(part)
        return chunks


    def _size(self, sents: list[Sentence]) -> int:
        return sum(len(i) for i in encode_sentences(self.tokenizer, [s.text for s in sents]))


    def _generative(self, report: Report, sentences: list[Sentence], max_sentences: int, max_chars: int,
                    max_new_tokens: int | None):
        domain = report.domain.value
        new_tokens = int(max_new_tokens or min(256, max(16, max_chars // 3)))
        budget = max(64, self.window_tokens - new_tokens - 8)
        chunks = self._chunks(report.text, budget)
        if len(chunks) == 1:
            text = self._generate(self._prompt(domain, encode_sentences(self.tokenizer, [s.text for s in sentences])), new_tokens)
        else:
            partials = self._generate_many([self._prompt(domain, encode_sentences(self.tokenizer, [s.text for s in c]))
                                            for c in chunks], new_tokens)
            joined = [s.text for p in partials for s in split_sentences(p)]
            ids = encode_sentences(self.tokenizer, joined)
            if joined and sum(map(len, ids)) <= budget:
                text = self._generate(self._prompt(domain, ids), new_tokens)  # reduce
            else:
                text = "\n".join(joined)
        gen = [s.text for s in split_sentences(text)]
        check = check_sentences(gen, report.text)
        kept = [gen[i] for i in check.kept]
        out, used, matched = [], 0, 0
        for sent in kept:
            if len(out) >= max_sentences or used + len(sent) > max_chars:
                break
            spans = _match_spans(sent, report.text, sentences)
            matched += bool(spans)
            out.append(SummarySentence(text=sent, spans=spans))
            used += len(sent) + 1
        return out, check.report(extractive_source_only=False, chunks=len(chunks), sentences_with_spans=matched,
                                 sentences_without_spans=len(out) - matched,
                                 note="generated text; spans by matching, empty where no source sentence overlaps enough")


def _match_spans(sentence: str, source: str, source_sentences: list[Sentence], min_f1: float = 0.5) -> list[Span]:
    """The source span a generated sentence restates: exact text, else the best unigram-F1 sentence."""
    pos = source.find(sentence)
    if pos >= 0:
        return [Span(start=pos, end=pos + len(sentence))]
    gen = set(words(sentence))
    best, best_f1 = None, 0.0
    for s in source_sentences:
        src = set(words(s.text))
        common = len(gen & src)
        if not common:
            continue
        p, r = common / len(gen), common / len(src)
        f1 = 2 * p * r / (p + r)
        if f1 > best_f1:
            best, best_f1 = s, f1
    return [Span(start=best.start, end=best.end)] if best is not None and best_f1 >= min_f1 else []
