"""Byte-level BPE tokenizer for the Argus MoE family (HF `tokenizers`), saved as `tokenizer.json`.

Special tokens: pad/bos/eos/sep/unk plus the prompt-template markers the summariser uses
(`<|finance|>`, `<|medical|>`, `<|document|>`, `<|summary|>`). Byte-level means no text is ever
out of vocabulary; `add_prefix_space` makes a sentence tokenise the same alone or mid-document, which
the extractive scorer relies on (it tokenises sentence by sentence).

Pre-processing for linear time (`clip_for_tokens`): BPE merges over one pre-token (a run with no word
break) cost more than linear in its length (a 1 MB run of emoji: 4.4 s, twice the per-MB cost of a
250 KB one), and a sentence is only read for its first `MAX_SENTENCE_TOKENS`. So a text is clipped
before tokenising: cut where a word ends after `CLIP_CHARS` characters (the tokens of that prefix are
a prefix of the text's tokens, so the first 128 are unchanged), and cut inside any run of more than
`MAX_RUN_CHARS` spaces or non-spaces (only hostile text has one; there its tokens may differ from
tokenising the whole run, which is the point).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from models.errors import ModelError

PAD, BOS, EOS, SEP, UNK = "<pad>", "<bos>", "<eos>", "<sep>", "<unk>"
FINANCE, MEDICAL, DOCUMENT, SUMMARY = "<|finance|>", "<|medical|>", "<|document|>", "<|summary|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SEP, UNK, FINANCE, MEDICAL, DOCUMENT, SUMMARY]
TOKENIZER_FILE = "tokenizer.json"
CLIP_CHARS = 4096  # 128 tokens of at most 18 bytes each need at most 2,304 characters
MAX_RUN_CHARS = 256
_LONG_RUN = re.compile(r"\s{%d}|\S{%d}" % (MAX_RUN_CHARS + 1, MAX_RUN_CHARS + 1))  # fixed counts: linear


_SURROGATE = re.compile("[\ud800-\udfff]")


def clip_for_tokens(text: str, clip_chars: int = CLIP_CHARS) -> str:
    """A prefix of `text` that tokenises to the same first tokens, in time independent of len(text)
    (see the module docstring). Text of at most `clip_chars` characters with no long run is returned as is.
    Lone surrogates (malformed UTF-16 from JSON escapes, which the Rust tokenizer refuses) become U+FFFD."""
    return clip_text(text, clip_chars)[0]


def clip_text(text: str, clip_chars: int = CLIP_CHARS) -> tuple[str, bool]:
    """(prefix, whether it was cut at a word end, so that reading further would add tokens exactly)."""
    if len(text) <= MAX_RUN_CHARS and len(text) <= clip_chars:  # the usual sentence: nothing to cut
        return (text if text.isascii() else _SURROGATE.sub("\ufffd", text)), False
    clipped, more = _clip(text, clip_chars)
    if not clipped.isascii():
        clipped = _SURROGATE.sub("\ufffd", clipped)
    return clipped, more


def _clip(text: str, clip_chars: int) -> tuple[str, bool]:
    head = text[: clip_chars + 2 * MAX_RUN_CHARS + 2]  # holds a space/non-space change past clip_chars
    run = _LONG_RUN.search(head)
    if run is not None and run.start() < clip_chars:
        return head[: run.start() + MAX_RUN_CHARS], False
    if len(text) <= clip_chars:
        return text, False
    for p in range(clip_chars, len(head)):
        if head[p].isspace() and not head[p - 1].isspace():
            return head[:p], True  # just before a blank that ends a word: no pre-token crosses the cut
    return head[: clip_chars + MAX_RUN_CHARS], False  # a long run starts past clip_chars: cut inside it


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2, show_progress: bool = True):
    """Train a byte-level BPE on `texts`; returns a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, sep_token=SEP, unk_token=UNK,
        additional_special_tokens=[FINANCE, MEDICAL, DOCUMENT, SUMMARY],
    )


def save_tokenizer(tokenizer, directory: str | Path) -> Path:
    path = Path(directory) / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(path))
    return path


def load_tokenizer(path: str | Path):
    """Load `tokenizer.json` (or a directory holding one) as a `PreTrainedTokenizerFast`."""
    from transformers import PreTrainedTokenizerFast

    p = Path(path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    if not p.is_file():
        raise ModelError(f"no tokenizer at {p}")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(p), pad_token=PAD, bos_token=BOS, eos_token=EOS, sep_token=SEP, unk_token=UNK,
        additional_special_tokens=[FINANCE, MEDICAL, DOCUMENT, SUMMARY],
    )


def iter_jsonl_texts(paths: Iterable[str | Path], fields: tuple[str, ...] = ("document", "summary", "text")) -> Iterator[str]:
    """Text fields of JSONL(.gz) records (summarisation data, simulator output)."""
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise ModelError(f"input not found: {p}")
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                for f in fields:
                    v = rec.get(f)
                    if isinstance(v, str) and v.strip():
                        yield v


def train_tokenizer_files(inputs: list[str | Path], output: str | Path, vocab_size: int = 8192) -> Path:
    """`argus train tokenizer`: train on JSONL(.gz) inputs and write `<output>/tokenizer.json`."""
    tok = train_tokenizer(iter_jsonl_texts(inputs), vocab_size=vocab_size)
    return save_tokenizer(tok, output)
