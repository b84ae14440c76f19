"""The layout of one mixed engine step: decode rows and prefill pieces packed into one token batch.

A mixed step carries the decode batch (one token for each of cache slots 0..n_decode-1, dummies
included) and then each prefill piece's prompt tokens, in that order, through one forward: every
token-wise GEMM and, above all, the routed-expert pass read their weights once for all of them
(Sarathi-Serve / vLLM v1 style). Only attention differs per part: the absorbed MLA form over the
latent cache for the decode rows, per-head SDPA for each piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixedBatch:
    n_decode: int  # leading tokens that decode, one per slot 0..n_decode-1
    decode_pos: torch.Tensor | None  # [n_decode] their positions (a dummy row: the cache's last position)
    decode_keys: int  # cache positions the decode attention reads (>= every real row's position + 1)
    pieces: tuple[tuple[torch.Tensor, int, int], ...]  # (slot [1], start, length) per prefill piece, in order

    @property
    def num_tokens(self) -> int:
        return self.n_decode + sum(length for _, _, length in self.pieces)
