"""Decode steps (and packed mixed steps) captured as CUDA graphs, one per (batch bucket, [piece bucket,] sequence
bucket), lazily or all up front (`capture_all`).

A decode step is ~30 small launches per layer; replaying a graph removes the host launch cost. The
batch bucket is how many leading cache slots the step covers, the sequence bucket how many cache
positions attention reads, so a short context at batch 1 does not read the whole preallocated cache.
"""

from __future__ import annotations

import time
from bisect import bisect_left

import torch

from . import fused_mla
from .mixed_batch import PackedStep
from .model import EngineModel


def batch_buckets(max_batch: int) -> list[int]:
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


def seq_buckets(max_seq_len: int, smallest: int = 256) -> list[int]:
    sizes, s = [], smallest
    while s < max_seq_len:
        sizes.append(s)
        s *= 2
    return sizes + [max_seq_len]


def pick(buckets: list[int], need: int) -> int:
    return buckets[bisect_left(buckets, need)]


def capture_graph(run, pool) -> tuple[tuple[torch.cuda.CUDAGraph, torch.Tensor], float]:
    """((graph, its output), seconds taken) for the step `run()`, captured into the memory pool `pool`.

    Two warm-up runs on a side stream first (they also trigger any torch.compile or Triton autotuning, which
    must not happen inside a capture); they redo this very step, writing the same cache rows with the same
    values, so they leave the cache as the replay will."""
    t0 = time.perf_counter()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = run()
    torch.cuda.synchronize()
    return (graph, out), time.perf_counter() - t0


class DecodeRunner:
    """Runs `model.decode` for slots 0..B-1: replaying captured graphs on CUDA, eagerly elsewhere."""

    def __init__(self, model: EngineModel, cache: torch.Tensor, max_batch: int, use_graphs: bool):
        self.model, self.cache = model, cache
        self.use_graphs = use_graphs and model.device.type == "cuda"
        self.batch_sizes = batch_buckets(max_batch)
        self.seq_sizes = seq_buckets(model.max_seq_len)
        self.tokens = torch.zeros(max_batch, dtype=torch.long, device=model.device)
        self.pos = torch.zeros(max_batch, dtype=torch.long, device=model.device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.capture_seconds = 0.0

    def buckets_for(self, n_slots: int, max_len: int) -> tuple[int, int]:
        return pick(self.batch_sizes, n_slots), pick(self.seq_sizes, max_len)

    def step(self, tokens: torch.Tensor, pos: torch.Tensor, max_len: int) -> torch.Tensor:
        """tokens/pos: [n] for slots 0..n-1; max_len: largest pos + 1. Returns logits [n, vocab]."""
        n = tokens.shape[0]
        b, s = self.buckets_for(n, max_len)
        self.tokens[:n].copy_(tokens, non_blocking=True)
        self.pos[:n].copy_(pos, non_blocking=True)
        if b > n:  # padding slots decode a dummy token at the last cache position of their row, which no
            self.tokens[n:b].zero_()  # request uses (a slot there may hold a partly prefilled prompt)
            self.pos[n:b].fill_(self.model.max_seq_len - 1)
        if not self.use_graphs:
            return self.model.decode(self.tokens[:b], self.pos[:b], self.cache, s)[:n]
        key = (b, s)
        if key not in self.graphs:
            self.graphs[key], seconds = capture_graph(lambda: self.model.decode(self.tokens[:b], self.pos[:b], self.cache, s),
                                                      self.pool)
            self.capture_seconds += seconds
        graph, out = self.graphs[key]
        graph.replay()
        return out[:n]

    def capture_all(self) -> None:
        """Capture every (batch, sequence) bucket up front, on steps whose rows all sit at the cache's unused
        last position (as padding rows do): nothing a request holds is written."""
        if not self.use_graphs:
            return
        dummy = self.model.max_seq_len - 1
        for b in self.batch_sizes:
            tokens = torch.zeros(b, dtype=torch.long, device=self.model.device)
            pos = torch.full((b,), dummy, dtype=torch.long, device=self.model.device)
            for s in self.seq_sizes:
                self.step(tokens, pos, s)
        torch.cuda.synchronize()


PACKED_MAX_PIECES = 4  # prompt pieces a packed step carries by default (one a step starved the batch at saturation)


class PackedRunner:
    """Runs `model.packed` (decode rows of slots 0..b-1 + up to `max_pieces` prefill pieces packed into an area of
    at most `chunk` rows, padded to a piece bucket: chunk/4, chunk/2 or chunk, so a short area pads little):
    one CUDA graph per (batch bucket, piece bucket, sequence bucket), captured lazily or by `capture_all`;
    eagerly off CUDA. A mixed step then costs its GPU work, not ~1,900 eager launches."""

    def __init__(self, model: EngineModel, cache: torch.Tensor, max_batch: int, chunk: int, use_graphs: bool, pool=None,
                 max_pieces: int = PACKED_MAX_PIECES):
        self.model, self.cache, self.chunk, self.max_pieces = model, cache, chunk, max_pieces
        # pieces after the first start at a multiple of this many rows (the piece kernel's blocks hold one slot)
        self.align = fused_mla.piece_align(model.args.num_heads)
        self.use_graphs = use_graphs and model.device.type == "cuda"
        self.batch_sizes = batch_buckets(max_batch)
        self.piece_sizes = sorted({max(1, chunk // 4), max(1, chunk // 2), chunk}) if chunk >= 16 else [chunk]
        self.seq_sizes = seq_buckets(model.max_seq_len)
        self.buf = torch.zeros(PackedStep.size(max_batch, chunk, max_pieces), dtype=torch.long, device=model.device)
        self.graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = pool if pool is not None or not self.use_graphs else torch.cuda.graph_pool_handle()
        self.capture_seconds = 0.0

    def fits(self, lengths: list[int]) -> bool:
        """Whether pieces of these lengths pack into one step."""
        return 0 < len(lengths) <= self.max_pieces and PackedStep.rows_used(lengths, self.align) <= self.chunk

    def step(self, dec_tokens: list[int], dec_pos: list[int], max_len: int, pieces: list[tuple[int, list[int], int]]):
        """Decode rows (ids and positions of slots 0..n-1, dummies at max_seq_len - 1; max_len: the real rows'
        largest position + 1) and `pieces`, each (slot, prompt tokens, start position), that `fits`.
        Returns (decode logits [n, vocab], each piece's last token's logits [len(pieces), vocab])."""
        n, lengths = len(dec_tokens), [len(p) for _, p, _ in pieces]
        assert n > 0 and self.fits(lengths)
        b = pick(self.batch_sizes, n)
        c = pick(self.piece_sizes, PackedStep.rows_used(lengths, self.align))
        keys = pick(self.seq_sizes, max([max_len] + [start + len(p) for _, p, start in pieces]))
        self._load(PackedStep.host_layout(dec_tokens, dec_pos, b, c, pieces, self.max_pieces, self.align,
                                          self.model.max_seq_len))
        out = self._replay(b, c, keys)
        return out[:n], out[b : b + len(pieces)]

    def capture_all(self) -> None:
        """Capture every bucket up front, on a step that writes only the cache's unused last position."""
        if not self.use_graphs:
            return
        attn, a = self.model.blocks[0].attn, self.model.args
        if attn.piece_kernel:  # tuned on real work first (the capture steps below carry no piece)
            fused_mla.tune_piece_attention(a.num_heads, a.kv_lora_rank, a.qk_rope_head_dim, self.piece_sizes,
                                           min(2048, self.seq_sizes[-1]), self.model.dtype, self.model.device, attn.scale)
        for b in self.batch_sizes:
            for c in self.piece_sizes:
                self._load(PackedStep.host_layout([], [], b, c, [], self.max_pieces, self.align, self.model.max_seq_len))
                for keys in self.seq_sizes:
                    self._replay(b, c, keys)
        torch.cuda.synchronize()

    def _load(self, data: list[int]) -> None:
        src = torch.tensor(data, dtype=torch.long)
        if self.buf.is_cuda:
            src = src.pin_memory()
        self.buf[: len(data)].copy_(src, non_blocking=True)

    def _run(self, b: int, c: int, keys: int) -> torch.Tensor:
        tokens, step = PackedStep.view(self.buf, b, c, keys, self.max_pieces, self.model.max_seq_len)
        return self.model.packed(tokens, step, self.cache)

    def _replay(self, b: int, c: int, keys: int) -> torch.Tensor:
        if not self.use_graphs:
            return self._run(b, c, keys)
        key = (b, c, keys)
        if key not in self.graphs:
            self.graphs[key], seconds = capture_graph(lambda: self._run(b, c, keys), self.pool)
            self.capture_seconds += seconds
        graph, out = self.graphs[key]
        graph.replay()
        return out
