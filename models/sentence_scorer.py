"""The extractive sentence scorer: an MoE backbone reads the document, a small head scores sentences.

The document is laid out exactly like the generative prompt's prefix
`<bos> <|domain|> <|document|> sentence_1 sentence_2 ...` (each sentence tokenised on its own, so
its token range is known exactly); token states of a sentence are mean-pooled and the head adds two
layout features (relative position, length). A causal backbone is used so one set of weights
(`DeepseekV3ForCausalLM`, whose `.model` is a `DeepseekV3Model`) serves both summariser paths.

Documents longer than one window are read in windows of whole sentences that overlap; a sentence
read twice gets the mean of its scores (map), then selection runs over the whole document (reduce).
Memory is bounded by the window, not the document.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import compress, repeat
from operator import and_, itemgetter, le, not_

import torch
from torch import nn

from models.collector import MANY, collector_paused

from models.tokenizer import CLIP_CHARS, DOCUMENT, FINANCE, MAX_RUN_CHARS, MEDICAL, clip_text

MAX_SENTENCE_TOKENS = 128  # a sentence is represented by at most its first 128 tokens
N_FEATURES = 2


class SentenceScorerHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(hidden_size + N_FEATURES, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))

    def forward(self, pooled: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([pooled, features.to(pooled.dtype)], dim=-1)).squeeze(-1)


def domain_token(domain: str) -> str:
    return MEDICAL if str(domain) == "medical" else FINANCE


def prefix_ids(tokenizer, domain: str) -> list[int]:
    return [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids(domain_token(domain)),
            tokenizer.convert_tokens_to_ids(DOCUMENT)]


def encode_sentences(tokenizer, sentences: list[str]) -> list[list[int]]:
    if not sentences:
        return []
    # Per sentence only C-level maps (a million one-word sentences cost 1.6 us each in Python steps and
    # collections of the lists built): short ASCII sentences go to the tokenizer as they are, the others
    # are clipped (linear time: only the first tokens are kept, see models.tokenizer).
    texts = list(sentences)
    more: list[int] = []  # cut at a word end: read more if the cut yields too few tokens
    as_is = map(and_, map(le, map(len, texts), repeat(MAX_RUN_CHARS)), map(str.isascii, texts))
    for i in compress(range(len(texts)), map(not_, as_is)):
        texts[i], cut = clip_text(texts[i])
        if cut:
            more.append(i)
    with collector_paused(len(texts) > MANY):
        ids = _encode_unique(tokenizer, texts)
        for i in more:
            # A cut at a word end keeps the first tokens exactly when it yields enough of them; else read more.
            limit, cut = CLIP_CHARS, True
            while cut and len(ids[i]) < MAX_SENTENCE_TOKENS:
                limit *= 4
                c, cut = clip_text(sentences[i], limit)
                ids[i] = tokenizer(c, add_special_tokens=False)["input_ids"]
        out = list(map(itemgetter(slice(None, MAX_SENTENCE_TOKENS)), ids))  # each its own list, as before
    for i in compress(range(len(out)), map(not_, out)):
        out[i] = [tokenizer.unk_token_id]
    return out


def _encode_unique(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no special tokens), each distinct text tokenised once, through the Rust
    tokenizer's batch call when there is one (a third of the per-sentence cost of the Python wrapper)."""
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        encoded = [e.ids for e in backend.encode_batch_fast(unique, add_special_tokens=False)]
    else:
        encoded = tokenizer(unique, add_special_tokens=False)["input_ids"] if unique else []
    return list(map(encoded.__getitem__, map(index.__getitem__, texts)))


def sentence_features(sentence_ids: list[list[int]]) -> torch.Tensor:
    n = len(sentence_ids)
    pos = torch.arange(n, dtype=torch.float32) / max(1, n - 1)
    length = torch.tensor([math.log1p(len(s)) / 5.0 for s in sentence_ids], dtype=torch.float32)
    return torch.stack([pos, length], dim=-1)


@dataclass(frozen=True)
class Window:
    first: int  # index of the first sentence in the window
    last: int  # exclusive
    ids: list[int]  # prefix + sentence tokens
    ranges: list[tuple[int, int]]  # token range of each sentence in `ids`


def plan_windows(prefix: list[int], sentence_ids: list[list[int]], window_tokens: int, overlap_tokens: int) -> list[Window]:
    """Greedy windows of whole sentences, each <= window_tokens, consecutive ones sharing ~overlap_tokens."""
    budget = max(window_tokens - len(prefix), MAX_SENTENCE_TOKENS)
    windows: list[Window] = []
    i, n = 0, len(sentence_ids)
    while i < n:
        ids, ranges, j, used = list(prefix), [], i, 0
        while j < n and (used + len(sentence_ids[j]) <= budget or j == i):
            ranges.append((len(ids), len(ids) + len(sentence_ids[j])))
            ids.extend(sentence_ids[j])
            used += len(sentence_ids[j])
            j += 1
        windows.append(Window(i, j, ids, ranges))
        if j >= n:
            break
        # Step back over whole sentences worth ~overlap_tokens, always moving forward by one at least.
        k, back = j, 0
        while k - 1 > i and back + len(sentence_ids[k - 1]) <= overlap_tokens:
            k -= 1
            back += len(sentence_ids[k])
        i = k
    return windows


def pool_ranges(hidden: torch.Tensor, ranges: list[tuple[int, int]]) -> torch.Tensor:
    """Mean of hidden[a:b] for each (a, b), via a cumulative sum (one pass, no Python loop over tokens)."""
    cs = torch.cat([hidden.new_zeros(1, hidden.shape[-1]), hidden.float().cumsum(0)], dim=0)
    a = torch.tensor([r[0] for r in ranges], device=hidden.device)
    b = torch.tensor([r[1] for r in ranges], device=hidden.device)
    return (cs[b] - cs[a]) / (b - a).clamp(min=1).unsqueeze(-1).float()


class SentenceScorer(nn.Module):
    """backbone (DeepseekV3Model) + head; `head=None` scores by similarity to the document centroid."""

    def __init__(self, backbone: nn.Module, head: SentenceScorerHead | None, hidden_fn=None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.hidden_fn = hidden_fn  # ids -> [L, H] last hidden states (the engine's prefill); None: backbone

    def window_logits(self, ids: list[int], ranges: list[tuple[int, int]], features: torch.Tensor) -> torch.Tensor:
        device = next(self.backbone.parameters()).device
        if self.hidden_fn is not None:
            hidden = self.hidden_fn(ids)
        else:
            hidden = self.backbone(input_ids=torch.tensor([ids], device=device)).last_hidden_state[0]
        pooled = pool_ranges(hidden, ranges)
        if self.head is None:
            centroid = pooled.mean(0, keepdim=True)
            return torch.nn.functional.cosine_similarity(pooled, centroid, dim=-1)
        head_dtype = next(self.head.parameters()).dtype
        return self.head(pooled.to(head_dtype), features.to(device)).float()

    @torch.inference_mode()
    def score(self, tokenizer, domain: str, sentences: list[str], window_tokens: int, overlap_tokens: int) -> tuple[list[float], int]:
        """(one score per sentence, number of windows read)."""
        sent_ids = encode_sentences(tokenizer, sentences)
        feats = sentence_features(sent_ids)
        total = torch.zeros(len(sentences))
        count = torch.zeros(len(sentences))
        windows = plan_windows(prefix_ids(tokenizer, domain), sent_ids, window_tokens, overlap_tokens)
        for w in windows:
            logits = self.window_logits(w.ids, w.ranges, feats[w.first : w.last]).cpu()
            total[w.first : w.last] += logits
            count[w.first : w.last] += 1
        return (total / count.clamp(min=1)).tolist(), len(windows)
