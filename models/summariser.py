"""The report summariser's model: the MoE causal LM, its extractive sentence scorer and the fitted writers.

    model = SummariserModel.load(path)            # shipped small checkpoint, else tiny random weights
    scores = model.score_sentences("finance", sentences)

The document pipeline (sentences, sections, selection, faithfulness, key facts, `Report` ->
`ReportSummary`) is pipelines/report_summariser.py, whose `Summarizer` extends this class; this
module imports nothing from pipelines/ and reads no settings (the caller passes them).
A checkpoint directory holds a Hugging Face causal LM (`config.json` + `model.safetensors`),
`tokenizer.json`, and for Argus checkpoints the extractive head (`scorer_head.safetensors`) and
`summariser.json`. A plain local HF checkpoint (any causal LM, e.g. a DeepSeek/Qwen3-MoE directory)
works too: generative with its own tokenizer, extractive by centroid similarity of its hidden
states (no trained head).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from models.padded_sdpa import use_padded_sdpa
from models.sentence_scorer import SentenceScorer, SentenceScorerHead, prefix_ids
from models.summary_writers import SummaryWriters
from models.tokenizer import SUMMARY, TOKENIZER_FILE, load_tokenizer, train_tokenizer
from models.errors import ArgusError, ModelError

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


class SummariserModel:
    """The summariser's model: causal LM + sentence scorer + fitted writers; plain strings in, scores and text out."""

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
    def load(cls, path: str | Path | None = None, device: str = "cpu", **kwargs):
        """`path=None`: the shipped checkpoint, else `tiny` random weights (model_version 'tiny-random-untrained').
        Settings are the caller's: pipelines.report_summariser.Summarizer.load reads model.summariser_checkpoint."""
        dev = _resolve_device(device)
        if path is None:
            if not (SHIPPED_CHECKPOINT / "config.json").is_file():
                return cls.tiny_random(device, **kwargs)
            path = SHIPPED_CHECKPOINT
        return cls(*_load_dir(Path(path), dev), dev, **kwargs)

    @classmethod
    def tiny_random(cls, device: str = "cpu", **kwargs):
        """Untrained `tiny` weights (model_version 'tiny-random-untrained'): tests and checkpoint-less runs."""
        dev = _resolve_device(device)
        kwargs.setdefault("writers", None)  # defaults only (the impression writer's built-in parameters)
        lm, tok, head, meta = _tiny_random(dev)
        return cls(lm, tok, head, meta, dev, **kwargs)

    # --- public API -------------------------------------------------------------------------------
    def score_sentences(self, domain: str, sentences: list[str]) -> list[float]:
        return self.scorer.score(self.tokenizer, domain, sentences, self.window_tokens, self.overlap_tokens)[0]


    def engine_occupancy(self) -> dict[str, float | int] | None:
        """On the engine backend: requests decoding / prefilling / waiting, slots, steps and the mean
        decode batch over the slots (batch occupancy); None on the transformers backend."""
        return None if self.engine is None else self.engine.occupancy()

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
