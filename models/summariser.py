"""The report summariser: extractive (MoE sentence scorer) and generative (MoE causal LM) paths.

    summarizer = Summarizer.load()                 # shipped small checkpoint, else tiny random weights
    summary = summarizer.summarize(report, mode="extractive", max_sentences=5, max_chars=1200)

Both paths return a `ReportSummary` with sentence-level source spans, rule-based key facts and a
`faithfulness` record. Extractive output is source text only (asserted); any summary sentence whose
figures the source does not contain is dropped and counted. A checkpoint directory holds a Hugging
Face causal LM (`config.json` + `model.safetensors`), `tokenizer.json`, and for Argus checkpoints
the extractive head (`scorer_head.safetensors`) and `summariser.json`. A plain local HF checkpoint
(any causal LM, e.g. a DeepSeek/Qwen3-MoE directory) works too: generative with its own tokenizer,
extractive by centroid similarity of its hidden states (no trained head).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from models.padded_sdpa import use_padded_sdpa
from models.sentence_scorer import SentenceScorer, SentenceScorerHead, encode_sentences, plan_windows, prefix_ids
from models.sentence_selector import budget_select
from models.summary_writers import SummaryWriters
from models.tokenizer import SUMMARY, TOKENIZER_FILE, load_tokenizer, train_tokenizer
from pipelines.contracts import Report, ReportSummary, Span, SummarySentence
from pipelines.errors import ArgusError, ModelError
from pipelines.faithfulness import assert_source_only, check_sentences
from pipelines.key_facts import key_facts
from pipelines.sections import split_sections
from pipelines.sentence_selection import mmr_select, words
from pipelines.sentences import Sentence, split_sentences

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "summariser-small"
SHIPPED_WRITERS = Path(__file__).resolve().parent / "checkpoints" / "summary-writers"
DEFAULT_MAX_SENTENCES, DEFAULT_MAX_CHARS = 5, 4000  # caps when neither the caller nor a fitted budget says
HEAD_FILE = "scorer_head.safetensors"
META_FILE = "summariser.json"
TINY_RANDOM_VERSION = "tiny-random-untrained"
MODES = ("extractive", "generative")


class SummariserInputError(ArgusError):
    """A report the summariser cannot work on (no text, no sentences, too large, wrong type)."""

    exit_code = 5


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _tiny_random(device: torch.device):
    """Random `tiny` weights and a tokenizer trained on a few lines: for tests and checkpoint-less runs."""
    from transformers import DeepseekV3ForCausalLM

    from models.presets import preset_config

    torch.manual_seed(0)
    corpus = [__doc__ or "", SummariserInputError.__doc__ or "", "Revenue grew 10% to $1.2 billion in Q1 2021. "
              "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal."] * 20
    tokenizer = train_tokenizer(corpus, vocab_size=512, min_frequency=1, show_progress=False)
    config = preset_config("tiny", vocab_size=max(512, len(tokenizer)))
    lm = DeepseekV3ForCausalLM(config).to(device).eval()
    head = SentenceScorerHead(config.hidden_size).to(device).eval()
    meta = {"model_version": TINY_RANDOM_VERSION, "preset": "tiny", "window_tokens": 1024}
    return lm, tokenizer, head, meta


class Summarizer:
    def __init__(self, lm, tokenizer, head: SentenceScorerHead | None, meta: dict[str, Any], device: torch.device,
                 window_tokens: int | None = None, overlap_tokens: int | None = None, backend: str | None = None,
                 writers: str | Path | None = SHIPPED_WRITERS):
        self.lm = lm.eval()
        try:
            use_padded_sdpa(self.lm)  # MLA's narrow value heads would push CPU attention onto the slow math path
        except (ValueError, KeyError, AttributeError):
            pass  # a model that cannot switch keeps its own attention
        self.tokenizer = tokenizer
        self.meta = meta
        self.device = device
        self.model_version = str(meta.get("model_version", "unknown"))
        self.writers = SummaryWriters.load(writers)
        if self.writers.version:
            self.model_version += f"+{self.writers.version}"
        max_ctx = int(getattr(lm.config, "max_position_embeddings", 4096))
        self.window_tokens = int(window_tokens or min(meta.get("window_tokens", 32768), max_ctx))
        self.overlap_tokens = int(overlap_tokens if overlap_tokens is not None else max(64, self.window_tokens // 8))
        self.argus_prompt = tokenizer.convert_tokens_to_ids(SUMMARY) not in (None, tokenizer.unk_token_id)
        backbone = getattr(lm, "model", lm)
        self.scorer = SentenceScorer(backbone, head).eval()
        # "engine" (CUDA default for DeepseekV3): generation and window forwards through models.engine
        from models.engine_backend import ENGINE, SummariserEngine, select_backend

        self.backend = select_backend(backend, device, lm, "summariser")
        self.engine = SummariserEngine(lm, self.window_tokens + 16) if self.backend == ENGINE else None
        if self.engine is not None:
            self.scorer.hidden_fn = self.engine.hidden

    # --- loading ----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", **kwargs) -> "Summarizer":
        """`path=None`: model.summariser_checkpoint, else the shipped checkpoint, else `tiny` random weights
        (model_version 'tiny-random-untrained')."""
        dev = _resolve_device(device)
        if path is None:
            from pipelines.settings import get_settings

            path = get_settings().model.summariser_checkpoint  # ARGUS_MODEL__SUMMARISER_CHECKPOINT
        if path is None:
            if not (SHIPPED_CHECKPOINT / "config.json").is_file():
                return cls.tiny_random(device, **kwargs)
            path = SHIPPED_CHECKPOINT
        return cls(*_load_dir(Path(path), dev), dev, **kwargs)

    @classmethod
    def tiny_random(cls, device: str = "cpu", **kwargs) -> "Summarizer":
        """Untrained `tiny` weights (model_version 'tiny-random-untrained'): tests and checkpoint-less runs."""
        dev = _resolve_device(device)
        kwargs.setdefault("writers", None)  # defaults only (the impression writer's built-in parameters)
        lm, tok, head, meta = _tiny_random(dev)
        return cls(lm, tok, head, meta, dev, **kwargs)

    # --- public API -------------------------------------------------------------------------------

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

    def score_sentences(self, domain: str, sentences: list[str]) -> list[float]:
        return self.scorer.score(self.tokenizer, domain, sentences, self.window_tokens, self.overlap_tokens)[0]

    # --- extractive -------------------------------------------------------------------------------

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

    # --- generative -------------------------------------------------------------------------------

    def _prompt(self, domain: str, sentence_ids: list[list[int]]) -> list[int]:
        body = [t for ids in sentence_ids for t in ids]
        if self.argus_prompt:
            return prefix_ids(self.tokenizer, domain) + body + [self.tokenizer.convert_tokens_to_ids(SUMMARY)]
        head = self.tokenizer(f"Summarise this {domain} report.\n\n", add_special_tokens=False)["input_ids"]
        tail = self.tokenizer("\n\nSummary:", add_special_tokens=False)["input_ids"]
        return head + body + tail

    @torch.inference_mode()
    def _generate_many(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        if self.engine is None or not all(self.engine.fits(p, max_new_tokens) for p in prompts):
            return [self._generate(p, max_new_tokens) for p in prompts]
        outs = self.engine.generate(prompts, max_new_tokens, self.tokenizer.eos_token_id,
                                    repetition_penalty=1.15, no_repeat_ngram_size=4)  # as in _generate
        return [self.tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]

    @torch.inference_mode()
    def _generate(self, prompt: list[int], max_new_tokens: int) -> str:
        if self.engine is not None and self.engine.fits(prompt, max_new_tokens):
            return self._generate_many([prompt], max_new_tokens)[0]
        x = torch.tensor([prompt], device=self.device)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        out = self.lm.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                               do_sample=False, eos_token_id=eos, pad_token_id=pad, no_repeat_ngram_size=4,
                               repetition_penalty=1.15)
        return self.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip()

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


def _load_dir(path: Path, device: torch.device):
    """(lm, tokenizer, head or None, meta) from an Argus checkpoint or a plain local HF causal-LM directory."""
    from models.checkpoint import load_hf_moe

    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    lm = load_hf_moe(path, causal_lm=True, dtype=dtype, device=str(device))  # ModelError on a broken/non-MoE dir
    if (path / TOKENIZER_FILE).is_file() and (path / META_FILE).is_file():
        tokenizer = load_tokenizer(path / TOKENIZER_FILE)
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"no usable tokenizer in {path}: {exc}") from None
    meta: dict[str, Any] = {}
    if (path / META_FILE).is_file():
        meta = json.loads((path / META_FILE).read_text())
    meta.setdefault("model_version", f"hf-local:{path.name}")
    head = None
    if (path / HEAD_FILE).is_file():
        from safetensors.torch import load_file

        head = SentenceScorerHead(lm.config.hidden_size)
        head.load_state_dict(load_file(str(path / HEAD_FILE)))
        head = head.to(device=device, dtype=dtype).eval()
    else:
        meta["model_version"] = re.sub(r"$", "+centroid-extractive", meta["model_version"])
    return lm, tokenizer, head, meta
