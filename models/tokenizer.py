"""Byte-level BPE tokenizer for the Argus MoE family (HF `tokenizers`), saved as `tokenizer.json`.

Special tokens: pad/bos/eos/sep/unk plus the prompt-template markers the summariser uses
(`<|finance|>`, `<|medical|>`, `<|document|>`, `<|summary|>`). Byte-level means no text is ever
out of vocabulary; `add_prefix_space` makes a sentence tokenise the same alone or mid-document, which
the extractive scorer relies on (it tokenises sentence by sentence).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipelines.errors import ModelError

PAD, BOS, EOS, SEP, UNK = "<pad>", "<bos>", "<eos>", "<sep>", "<unk>"
FINANCE, MEDICAL, DOCUMENT, SUMMARY = "<|finance|>", "<|medical|>", "<|document|>", "<|summary|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SEP, UNK, FINANCE, MEDICAL, DOCUMENT, SUMMARY]
TOKENIZER_FILE = "tokenizer.json"


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
