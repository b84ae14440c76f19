"""The layout of one mixed engine step: decode rows and prefill pieces packed into one token batch.

A mixed step carries the decode batch (one token for each of cache slots 0..n_decode-1, dummies
included) and then each prefill piece's prompt tokens, in that order, through one forward: every
token-wise GEMM and, above all, the routed-expert pass read their weights once for all of them
(Sarathi-Serve / vLLM v1 style). Only attention differs per part: the absorbed MLA form over the
latent cache for the decode rows, per-head SDPA for each piece (`MixedBatch`: eager, any pieces).
`PackedStep` is the same step in fixed shapes for a CUDA graph: the decode rows padded to a batch
bucket, up to a few pieces packed into a padded area of the chunk size, attention in the absorbed form for both
parts.
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
    """A mixed step in fixed shapes, so that one CUDA graph per (n_decode, chunk, keys) replays it: n_decode decode
    rows (slots 0..n_decode-1, dummies included) and then `chunk` rows holding up to `max_pieces` prefill pieces,
    each of its own slot, the first at row 0 and each next one at a multiple of `align` rows (so that no block of
    the piece attention kernel straddles two pieces); all attention in the absorbed form over the latent cache
    (`MLAAttention.packed`). Padding tokens and dummy rows sit at the cache's last position (max_seq_len - 1),
    which no request uses."""

    n_decode: int  # decode rows: a batch bucket
    keys: int  # cache positions attention reads, for both parts: a sequence bucket
    pos: torch.Tensor  # [n_decode + chunk] every token's position
    flat: torch.Tensor  # [n_decode + chunk] the cache row each token writes: slot * max_seq_len + pos
    row_piece: torch.Tensor  # [chunk] each piece row's piece (0..max_pieces-1); -1: a padding row
    slots: torch.Tensor  # [max_pieces] each piece's cache slot
    last: torch.Tensor  # [max_pieces] row of each piece's last real token (its logits are returned)
    base: torch.Tensor  # [chunk] each piece row's slot * max_seq_len (its keys start there); -1: a padding row

    @staticmethod
    def size(n_decode: int, chunk: int, max_pieces: int) -> int:
        """Length of the int64 buffer of a step: [tokens | positions | cache rows] x tokens, piece x piece rows,
        [slot | last] x pieces."""
        return 3 * (n_decode + chunk) + chunk + 2 * max_pieces

    @staticmethod
    def placement(lengths: list[int], align: int) -> list[int]:
        """The first row of each piece in the piece area: back to back, each after the first at a multiple of align."""
        offsets, used = [], 0
        for n in lengths:
            start = -(-used // align) * align if offsets else 0
            offsets.append(start)
            used = start + n
        return offsets

    @staticmethod
    def rows_used(lengths: list[int], align: int) -> int:
        """Piece-area rows taken by pieces of these lengths (the last one's end)."""
        offsets = PackedStep.placement(lengths, align)
        return offsets[-1] + lengths[-1] if lengths else 0

    @staticmethod
    def host_layout(dec_tokens: list[int], dec_pos: list[int], n_decode: int, chunk: int,
                    pieces: list[tuple[int, list[int], int]], max_pieces: int, align: int, max_seq_len: int) -> list[int]:
        """The buffer's values (see `size`) for decode rows (padded to n_decode with dummies) and `pieces`, each
        (slot, prompt tokens, start position), placed as `placement` says in the chunk rows (rest padding)."""
        assert len(pieces) <= max_pieces
        dummy = max_seq_len - 1
        n = len(dec_tokens)
        tokens = list(dec_tokens) + [0] * (n_decode - n) + [0] * chunk
        pos = list(dec_pos) + [dummy] * (n_decode - n) + [dummy] * chunk
        flat = [s * max_seq_len + p for s, p in enumerate(pos[:n_decode])] + [dummy] * chunk
        row_piece = [-1] * chunk
        slots, last = [0] * max_pieces, [n_decode] * max_pieces
        for j, ((slot, piece, start), off) in enumerate(zip(pieces, PackedStep.placement([len(p[1]) for p in pieces], align))):
            m, r, first_row = len(piece), n_decode + off, slot * max_seq_len
            assert 0 < m and off + m <= chunk
            tokens[r : r + m] = piece  # slices of equal length: the lists keep their size
            pos[r : r + m] = range(start, start + m)
            flat[r : r + m] = range(first_row + start, first_row + start + m)
            row_piece[off : off + m] = [j] * m
            slots[j], last[j] = slot, r + m - 1
        return tokens + pos + flat + row_piece + slots + last

    @classmethod
    def view(cls, buf: torch.Tensor, n_decode: int, chunk: int, keys: int, max_pieces: int, max_seq_len: int):
        """(token ids, PackedStep) as views of a buffer laid out by `host_layout` (device ops only; the rows'
        bases derived from their pieces' slots)."""
        t = n_decode + chunk
        o = 3 * t
        row_piece, slots = buf[o : o + chunk], buf[o + chunk : o + chunk + max_pieces]
        base = torch.where(row_piece >= 0, slots[row_piece.clamp(min=0)] * max_seq_len, -1)
        return buf[:t], cls(n_decode, keys, buf[t : 2 * t], buf[2 * t : 3 * t], row_piece, slots,
                            buf[o + chunk + max_pieces : o + chunk + 2 * max_pieces], base)
