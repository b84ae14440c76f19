"""The layout of one mixed engine step: decode rows and prefill pieces packed into one token batch.

A mixed step carries the decode batch (one token for each of cache slots 0..n_decode-1, dummies
included) and then each prefill piece's prompt tokens, in that order, through one forward: every
token-wise GEMM and, above all, the routed-expert pass read their weights once for all of them
(Sarathi-Serve / vLLM v1 style). Only attention differs per part: the absorbed MLA form over the
latent cache for the decode rows, per-head SDPA for each piece (`MixedBatch`: eager, any pieces).
`PackedStep` is the same step in fixed shapes for a CUDA graph: the decode rows padded to a batch
bucket, one piece padded to the chunk size, attention in the absorbed form for both parts.
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


@dataclass(frozen=True)
class PackedStep:
    """A mixed step in fixed shapes, so that one CUDA graph per (n_decode, keys) replays it: n_decode decode
    rows (slots 0..n_decode-1, dummies included) and then `chunk` tokens of ONE prefill piece (padded), all
    attention in the absorbed form over the latent cache (`MLAAttention.packed`). Padding tokens and dummy
    rows sit at the cache's last position (max_seq_len - 1), which no request uses."""

    n_decode: int  # decode rows: a batch bucket
    keys: int  # cache positions attention reads, for both parts: a sequence bucket
    pos: torch.Tensor  # [n_decode + chunk] every token's position
    flat: torch.Tensor  # [n_decode + chunk] the cache row each token writes: slot * max_seq_len + pos
    piece_keys: torch.Tensor  # [keys] cache rows of the piece's slot, positions 0..keys-1
    last: torch.Tensor  # [1] index of the piece's last real token (its logits are returned)

    @staticmethod
    def size(n_decode: int, chunk: int) -> int:
        """Length of the int64 buffer of a step: [tokens | positions | cache rows] x tokens, slot, last."""
        return 3 * (n_decode + chunk) + 2

    @staticmethod
    def host_layout(dec_tokens: list[int], dec_pos: list[int], n_decode: int, chunk: int, slot: int,
                    piece: list[int], start: int, max_seq_len: int) -> list[int]:
        """The buffer's values (see `size`) for decode rows (padded to n_decode with dummies) and a piece of
        `piece` tokens at start.. of `slot` (padded to chunk)."""
        dummy = max_seq_len - 1
        n, m = len(dec_tokens), len(piece)
        tokens = list(dec_tokens) + [0] * (n_decode - n) + list(piece) + [0] * (chunk - m)
        pos = list(dec_pos) + [dummy] * (n_decode - n) + list(range(start, start + m)) + [dummy] * (chunk - m)
        flat = [s * max_seq_len + p for s, p in enumerate(pos[:n_decode])] + [slot * max_seq_len + p for p in pos[n_decode:]]
        return tokens + pos + flat + [slot, n_decode + max(m, 1) - 1]

    @classmethod
    def view(cls, buf: torch.Tensor, n_decode: int, chunk: int, keys: int, max_seq_len: int):
        """(token ids, PackedStep) as views of a buffer laid out by `host_layout` (device ops only)."""
        t = n_decode + chunk
        slot = buf[3 * t : 3 * t + 1]
        piece_keys = slot * max_seq_len + torch.arange(keys, device=buf.device)
        return buf[:t], cls(n_decode, keys, buf[t : 2 * t], buf[2 * t : 3 * t], piece_keys, buf[3 * t + 1 : 3 * t + 2])
