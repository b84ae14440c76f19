"""The model math, one small module per concept: MLA attention, router, grouped experts, MLPs, block.

Weights are taken from a transformers `DeepseekV3ForCausalLM` (shared, not copied, except where two
projections that read the same input are concatenated into one GEMM). Every layer has two entry
points: `prefill` for [B, C] chunks (SDPA over expanded per-head K/V, exactly transformers' math)
and `decode` for one token per sequence (MLA with absorbed weights over the compressed cache), and
`mixed` runs both kinds of token packed in one step, sharing every token-wise GEMM and the expert pass.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_mla, fused_moe, fused_router, triton_moe
from . import kernels as K
from .config import EngineArgs
from .mixed_batch import MixedBatch, PackedStep


def _linear_weight(module: nn.Module | None) -> torch.Tensor | None:
    return None if module is None else module.weight


# Prefill attention: pad V's head dim up to Q/K's so SDPA can take the flash kernel (else it picks
# cuDNN / memory-efficient attention, which accept unequal head dims). benchmarks/engine.py times both.
PAD_V_FOR_FLASH = True
# SDPA backends prefill attention may use, in PyTorch's order of preference unless set: a tuple of
# torch.nn.attention.SDPBackend. benchmarks/engine.py --only-prefill sweeps them.
PREFILL_SDPA_BACKENDS: tuple | None = None
# Cards (compute capability) whose one plain causal chunk goes to cuDNN with V at its own head dim. On an H100,
# 32K prefill: 0.666 / 0.602 / 0.604 s against 0.707 / 0.636 / 0.640 s for PyTorch's own choice with V padded
# (three calls: benchmarks/results/engine_prefill_{backends,combine,sample3}_h100.json). Continued chunks (a
# lower-right causal mask) keep V padded for flash: unpadded they fell to memory-efficient attention (8K chunks
# of a 32K prompt: 1.47-1.53 against 0.97-1.06 s).
PREFILL_CUDNN_CAPABILITIES = {(9, 0)}
LONG_CONTEXT_SPLIT = 2048
LONG_SOFTMAX_EAGER = 16384  # decode attention over more keys than this uses the eager softmax  # decode attention over >= 4 of these splits the sum over keys (see below)


def _prefill_cudnn(rows: torch.Tensor, plain_causal: bool) -> bool:
    """Whether this prefill chunk's attention goes to cuDNN with V unpadded (see PREFILL_CUDNN_CAPABILITIES)."""
    return (plain_causal and rows.is_cuda and PREFILL_SDPA_BACKENDS is None
            and torch.cuda.get_device_capability(rows.device) in PREFILL_CUDNN_CAPABILITIES)


def _prefill_backends(cudnn: bool = False):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if cudnn:  # the others stay behind it, in case cuDNN refuses a shape
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                            SDPBackend.MATH], set_priority=True)
    if PREFILL_SDPA_BACKENDS is None:
        return contextlib.nullcontext()
    return sdpa_kernel(list(PREFILL_SDPA_BACKENDS), set_priority=True)


def _weighted_latent(probs: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """probs [B, heads, S] @ latent [B, S, r]. For long contexts the plain bmm has only heads x r
    outputs per sequence, so cuBLAS runs a handful of CTAs down a 100K-long reduction; splitting
    the keys into blocks, one batch entry each, and summing the partial products keeps all SMs busy."""
    b, h, s = probs.shape
    blk = LONG_CONTEXT_SPLIT
    if s < 4 * blk or s % blk:
        return torch.bmm(probs, latent)
    n = s // blk
    p = probs.view(b, h, n, blk).transpose(1, 2).reshape(b * n, h, blk)
    part = torch.bmm(p, latent.reshape(b * n, blk, latent.shape[-1]))  # latent view is strided: reshape copies
    return part.view(b, n, h, -1).float().sum(1).to(probs.dtype)


class MLAAttention(nn.Module):
    """Multi-head latent attention. The cache row of a token is [normed latent (r) | roped key (dr)]."""

    def __init__(self, args: EngineArgs, hf_attn: nn.Module):
        super().__init__()
        self.args = args
        a = args
        self.q_lora = a.q_lora_rank is not None
        # One GEMM for everything computed from the block input: q (or q's LoRA down) and kv_a.
        first = hf_attn.q_a_proj if self.q_lora else hf_attn.q_proj
        self.w_in = nn.Parameter(torch.cat([first.weight, hf_attn.kv_a_proj_with_mqa.weight]).detach(), False)
        biases = [getattr(first, "bias", None), getattr(hf_attn.kv_a_proj_with_mqa, "bias", None)]
        self.b_in = None
        if any(b is not None for b in biases):
            self.b_in = torch.cat(
                [b if b is not None else torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device)
                 for b, m in zip(biases, (first, hf_attn.kv_a_proj_with_mqa))]
            ).detach()
        self.split_in = first.weight.shape[0]
        if self.q_lora:
            self.q_a_norm = hf_attn.q_a_layernorm.weight
            self.q_a_eps = hf_attn.q_a_layernorm.variance_epsilon
            self.w_q_b = hf_attn.q_b_proj.weight
        self.kv_norm = hf_attn.kv_a_layernorm.weight
        self.kv_eps = hf_attn.kv_a_layernorm.variance_epsilon
        self.w_kv_b = hf_attn.kv_b_proj.weight  # [heads * (dn + dv), r]
        wkv = self.w_kv_b.view(a.num_heads, a.qk_nope_head_dim + a.v_head_dim, a.kv_lora_rank)
        self.w_uk = wkv[:, : a.qk_nope_head_dim].contiguous()  # [heads, dn, r]: absorbed into q
        self.w_uv_t = wkv[:, a.qk_nope_head_dim :].transpose(1, 2).contiguous()  # [heads, r, dv]: after attention
        self.w_o = hf_attn.o_proj.weight
        self.b_o = getattr(hf_attn.o_proj, "bias", None)
        self.scale = float(getattr(hf_attn, "scaling", a.softmax_scale))
        # decode: norm, ropes and the cache write in one kernel (fused_mla.py), else the PyTorch kernels
        self.prologue_kernel = fused_mla.available(self.w_in.device) and a.qk_rope_head_dim % 2 == 0
        # prefill: the query's rope and its [nope | rope] assembly in one kernel (fused_mla.prefill_query)
        self.query_kernel = self.prologue_kernel
        # decode rows: scores, softmax and P . latent in one pass over the cache (fused_mla.latent_attention);
        # EngineModel.set_attention_kernel turns it on where it can run; likewise a packed step's prompt piece
        # in one causal flash pass (fused_mla.piece_attention)
        self.attn_kernel = False
        self.piece_kernel = False

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kk, whole_q: bool = False):
        """x [..., H] -> q_nope [..., heads, dn], q_rope [..., heads, dr], cache row [..., r + dr]. With `whole_q`
        (a prefill chunk, x [B, C, H]) where the query kernel runs: the whole roped query [B, C, heads, dn + dr],
        contiguous, in place of q_nope and None for q_rope (fused_mla.prefill_query)."""
        a = self.args
        h = F.linear(x, self.w_in, self.b_in)
        q, kv = h[..., : self.split_in], h[..., self.split_in :]
        if self.q_lora:
            q = F.linear(kk.rms_norm(q, self.q_a_norm, self.q_a_eps), self.w_q_b)
        q = q.unflatten(-1, (a.num_heads, a.qk_head_dim))
        latent = kk.rms_norm(kv[..., : a.kv_lora_rank], self.kv_norm, self.kv_eps)
        k_rope = kk.apply_rope(kv[..., a.kv_lora_rank :], cos, sin, a.rope_interleave)
        rows = torch.cat([latent, k_rope], dim=-1)
        if whole_q and self.query_kernel:
            return fused_mla.prefill_query(q, cos, sin, a.qk_nope_head_dim, a.rope_interleave), None, rows
        q_nope, q_rope = q[..., : a.qk_nope_head_dim], q[..., a.qk_nope_head_dim :]
        q_rope = kk.apply_rope(q_rope, cos.unsqueeze(-2), sin.unsqueeze(-2), a.rope_interleave)
        return q_nope, q_rope, rows

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        return F.linear(o, self.w_o, self.b_o)

    def prefill(self, x, cos, sin, cache: torch.Tensor | None, slots: torch.Tensor | None, start: int) -> torch.Tensor:
        """x [B, C, H] at positions start..start+C-1. With a cache, the chunk's rows are written to
        cache[slots, start:start+C] and attention covers the whole prefix; without, only the chunk."""
        q_nope, q_rope, rows = self._project(x, cos, sin, K.prefill, whole_q=True)
        return self._out(self._attend_prefill(q_nope, q_rope, rows, cache, slots, start))

    def _attend_prefill(self, q_nope, q_rope, rows, cache, slots, start: int) -> torch.Tensor:
        """Per-head attention of a [B, C] chunk (SDPA over K/V expanded from the latent, transformers'
        arithmetic); writes the chunk's cache rows. q_rope None: q_nope is the whole roped query.
        Returns [B, C, heads * dv], before o_proj."""
        a = self.args
        bsz, c = rows.shape[:2]
        if cache is not None:
            cache[slots, start : start + c] = rows
            kv = cache[slots, : start + c] if start > 0 else rows
        else:
            assert start == 0
            kv = rows
        p = kv.shape[1]
        kv_b = F.linear(kv[..., : a.kv_lora_rank], self.w_kv_b).unflatten(-1, (a.num_heads, -1))
        k_nope, v = kv_b[..., : a.qk_nope_head_dim], kv_b[..., a.qk_nope_head_dim :]
        k_rope = kv[..., None, a.kv_lora_rank :].expand(bsz, p, a.num_heads, a.qk_rope_head_dim)
        # PyTorch's cats (q's only where the query kernel does not run): compiled with dynamic shapes, q's and k's
        # took 62 ms of a 32K prefill against 25 on an H100
        q = (q_nope if q_rope is None else torch.cat([q_nope, q_rope], dim=-1)).transpose(1, 2)
        k = torch.cat([k_nope, k_rope], dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        pad = 0
        cudnn = _prefill_cudnn(rows, p == c)
        if PAD_V_FOR_FLASH and not cudnn and rows.is_cuda and a.v_head_dim < a.qk_head_dim:
            pad = a.qk_head_dim - a.v_head_dim  # flash attention wants one head dim for q, k and v
            v = F.pad(v, (0, pad))
        with _prefill_backends(cudnn):
            if p == c:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            elif rows.is_cuda:
                from torch.nn.attention.bias import causal_lower_right

                o = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(c, p), scale=self.scale)
            else:
                keep = torch.arange(p, device=rows.device)[None, :] <= (start + torch.arange(c, device=rows.device))[:, None]
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=self.scale)
        if pad:
            o = o[..., : a.v_head_dim]
        return o.transpose(1, 2).reshape(bsz, c, a.num_heads * a.v_head_dim)

    def decode(self, x, cos, sin, cache: torch.Tensor, pos: torch.Tensor, seq_bucket: int) -> torch.Tensor:
        """x [B, H], one token per cache slot 0..B-1 at positions pos [B]; attends to cache[:B, :seq_bucket]."""
        if self.prologue_kernel:
            a = self.args
            h = F.linear(x, self.w_in, self.b_in)
            q, kv = h[..., : self.split_in], h[..., self.split_in :]
            if self.q_lora:
                q = F.linear(K.decode.rms_norm(q, self.q_a_norm, self.q_a_eps), self.w_q_b)
            q_rope = fused_mla.mla_prologue(q, kv, cos, sin, self.kv_norm, self.kv_eps, cache, pos, a.num_heads,
                                            a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank, a.rope_interleave)
            q_nope = q.unflatten(-1, (a.num_heads, a.qk_head_dim))[..., : a.qk_nope_head_dim]
            return self._out(self._attend_decode(q_nope, q_rope, None, cache, pos, seq_bucket, K.decode))
        q_nope, q_rope, rows = self._project(x, cos, sin, K.decode)
        return self._out(self._attend_decode(q_nope, q_rope, rows, cache, pos, seq_bucket, K.decode))

    def _attend_decode(self, q_nope, q_rope, rows, cache, pos, seq_bucket: int, kk) -> torch.Tensor:
        """Absorbed MLA for one token per slot 0..B-1 over cache[:B, :seq_bucket] (see `_latent_attention`).
        Writes the B cache rows first (rows None: already written). Returns [B, heads * dv], before o_proj."""
        a = self.args
        bsz = q_nope.shape[0]
        if rows is not None:
            flat = torch.arange(bsz, device=rows.device) * cache.shape[1] + pos
            cache.view(-1, a.latent_dim).index_copy_(0, flat, rows)
        return self._latent_attention(q_nope, q_rope, cache[:bsz, :seq_bucket], pos, kk)

    def _latent_attention(self, q_nope, q_rope, kv, pos, kk) -> torch.Tensor:
        """Absorbed MLA: q_nope @ W_UK gives a query in latent space, scores are taken against the cached
        [latent | rope key] rows directly, and W_UV is applied to the attention-weighted latent.
        q_nope [N, heads, dn], q_rope [N, heads, dr] at positions pos [N] (keys 0..pos attended); kv
        [G, S, r + dr] with G = N (each query its own slot: decode) or G = 1 (all N queries in one slot:
        a prefill piece). Returns [N, heads * dv], before o_proj."""
        a = self.args
        n, (g, s) = q_nope.shape[0], kv.shape[:2]
        q_lat = self._absorb(q_nope)  # [N, heads, r]
        if g == n and self.attn_kernel:  # a row per slot: one pass over the cache
            o_lat = fused_mla.latent_attention(q_lat, q_rope, kv, pos, self.scale)
        else:
            q = torch.cat([q_lat, q_rope], dim=-1).reshape(g, -1, a.latent_dim)  # [G, N/G * heads, r + dr]
            scores = torch.bmm(q, kv.transpose(1, 2)).view(n, a.num_heads, s)
            # The compiled softmax picks its reduction layout from the first lengths it sees (short ones),
            # which left a 128K-key row to one CTA per head (37 ms/step); long contexts run it eagerly.
            softmax = kk.masked_softmax_upto if s <= LONG_SOFTMAX_EAGER else K.eager.masked_softmax_upto
            probs = softmax(scores, self.scale, pos)
            o_lat = _weighted_latent(probs.view(g, -1, s), kv[..., : a.kv_lora_rank]).view(n, a.num_heads, -1)
        return self._from_latent(o_lat)

    def _absorb(self, q_nope: torch.Tensor) -> torch.Tensor:
        """q_nope [N, heads, dn] -> the query in latent space, q_nope @ W_UK: [N, heads, r]."""
        return torch.bmm(q_nope.transpose(0, 1), self.w_uk).transpose(0, 1)

    def _from_latent(self, o_lat: torch.Tensor) -> torch.Tensor:
        """The attention-weighted latent [N, heads, r] -> W_UV applied: [N, heads * dv], before o_proj."""
        o = torch.bmm(o_lat.transpose(0, 1), self.w_uv_t).transpose(0, 1)  # [N, heads, dv]
        return o.reshape(o_lat.shape[0], self.args.num_heads * self.args.v_head_dim)

    def packed(self, x, cos, sin, cache: torch.Tensor, step: PackedStep, kk) -> torch.Tensor:
        """A packed step (mixed_batch.PackedStep): x [n_decode + C, H], decode rows of slots 0..n_decode-1, then the
        C rows of up to step's max pieces (each its own slot; padding included). The projections and o_proj run
        once over all tokens; every row is written to the cache at step.flat, then attention is the absorbed form
        for both parts: each decode row over its slot, each piece row over its own slot's keys up to its position
        (causal within the piece). Fixed shapes: graph-capturable."""
        a = self.args
        n = step.n_decode
        q_nope, q_rope, rows = self._project(x, cos, sin, kk)
        flat_cache = cache.view(-1, a.latent_dim)
        flat_cache.index_copy_(0, step.flat, rows)
        if self.piece_kernel:  # one flash pass, each block of rows over its piece's slot, padding rows skipped
            o = self._from_latent(fused_mla.piece_attention(self._absorb(q_nope[n:]), q_rope[n:], flat_cache, step.pos[n:],
                                                            step.base, self.scale))
        else:
            o = self._pieces_attention(q_nope[n:], q_rope[n:], flat_cache, cache.shape[1], step)
        if n:
            o_dec = self._latent_attention(q_nope[:n], q_rope[:n], cache[:n, : step.keys], step.pos[:n], kk)
            o = torch.cat([o_dec, o])
        return self._out(o)

    def _pieces_attention(self, q_nope, q_rope, flat_cache, slot_rows: int, step: PackedStep) -> torch.Tensor:
        """The pieces' attention as PyTorch ops (where the kernel cannot run): every piece row scores against the
        keys of all the step's pieces [pieces x keys] and keeps its own piece's, up to its position. Padding rows
        (no piece) attend to one key so the softmax stays finite; their output is never read."""
        a = self.args
        p, s = step.slots.shape[0], step.keys
        piece_keys = step.slots[:, None] * slot_rows + torch.arange(s, device=flat_cache.device)  # [P, S] cache rows
        kv = flat_cache.index_select(0, piece_keys.reshape(-1))  # [P * S, r + dr]
        c = q_nope.shape[0]
        q = torch.cat([self._absorb(q_nope), q_rope], dim=-1).reshape(1, c * a.num_heads, a.latent_dim)
        scores = torch.bmm(q, kv.t()[None]).view(c, a.num_heads, p * s)
        key_piece = torch.arange(p, device=kv.device).repeat_interleave(s)
        key_pos = torch.arange(s, device=kv.device).repeat(p)
        row_piece = step.row_piece.clamp(min=0)
        keep = (key_piece[None, :] == row_piece[:, None]) & (key_pos[None, :] <= step.pos[-c:, None])
        probs = torch.softmax(scores.float().masked_fill(~keep[:, None, :], float("-inf")) * self.scale, dim=-1)
        o_lat = torch.bmm(probs.to(kv.dtype).view(1, c * a.num_heads, p * s), kv[None, :, : a.kv_lora_rank])
        return self._from_latent(o_lat.view(c, a.num_heads, a.kv_lora_rank))

    def mixed(self, x, cos, sin, cache: torch.Tensor, batch: MixedBatch) -> torch.Tensor:
        """A packed step: x [T, H] holds batch.n_decode decode tokens (slots 0..n-1) and then each
        prefill piece's tokens. The projections and o_proj run once over all T tokens; attention is
        the absorbed decode form for the decode rows and per-head SDPA for each piece (as `prefill`)."""
        q_nope, q_rope, rows = self._project(x, cos, sin, K.eager)
        n = batch.n_decode
        parts = []
        if n:
            parts.append(self._attend_decode(q_nope[:n], q_rope[:n], rows[:n], cache, batch.decode_pos,
                                             batch.decode_keys, K.eager))
        lo = n
        for slot, start, length in batch.pieces:
            hi = lo + length
            o = self._attend_prefill(q_nope[None, lo:hi], q_rope[None, lo:hi], rows[None, lo:hi], cache, slot, start)
            parts.append(o[0])
            lo = hi
        return self._out(torch.cat(parts) if len(parts) > 1 else parts[0])


class DenseMLP(nn.Module):
    """SwiGLU MLP with gate and up fused into one GEMM (dense layers and the shared experts)."""

    def __init__(self, hf_mlp: nn.Module):
        super().__init__()
        self.w_gate_up = nn.Parameter(torch.cat([hf_mlp.gate_proj.weight, hf_mlp.up_proj.weight]).detach(), False)
        self.w_down = hf_mlp.down_proj.weight

    def forward(self, x: torch.Tensor, kk=K.eager) -> torch.Tensor:
        return F.linear(kk.silu_mul(F.linear(x, self.w_gate_up)), self.w_down)


class TopKRouter(nn.Module):
    """Sigmoid scores + correction bias for the choice, (group-limited) top-k, scores as weights."""

    def __init__(self, args: EngineArgs, hf_gate: nn.Module):
        super().__init__()
        self.args = args
        self.weight = hf_gate.weight.detach().float()  # transformers routes in fp32
        bias = getattr(hf_gate, "e_score_correction_bias", None)
        self.bias = (bias.detach().float() if bias is not None
                     else torch.zeros(args.n_routed_experts, device=self.weight.device))

    def forward(self, x: torch.Tensor, kk=K.eager) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.args
        logits = F.linear(x.float(), self.weight)
        return kk.route_sigmoid_topk(logits, self.bias, a.top_k, a.n_group, a.topk_group, a.norm_topk_prob,
                                    a.routed_scaling_factor)


class GroupedExperts(nn.Module):
    """Routed experts. Few pairs (decode at small batch, on GPU): one Triton GEMV per (token, expert)
    pair. Otherwise: pairs sorted by expert, then two grouped GEMMs (no host sync, graph-safe)."""

    def __init__(self, hf_experts: nn.Module, use_grouped_mm: bool, gemv_max_pairs: int = 64):
        super().__init__()
        if hasattr(hf_experts, "gate_up_proj"):  # transformers 5.x fused 3-D expert weights
            self.w_gate_up, self.w_down = hf_experts.gate_up_proj, hf_experts.down_proj  # [E, 2I, H], [E, H, I]
        else:  # a ModuleList of per-expert MLPs: stack once
            self.w_gate_up = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in hf_experts])
            self.w_down = torch.stack([e.down_proj.weight for e in hf_experts])
        self.num_experts = self.w_gate_up.shape[0]
        self.use_grouped_mm = use_grouped_mm
        self.gemv_max_pairs = gemv_max_pairs if triton_moe.available(self.w_gate_up.device) else 0

    def forward(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, kk=K.eager) -> torch.Tensor:
        t, k = idx.shape
        flat = idx.reshape(-1)
        if flat.numel() <= self.gemv_max_pairs:
            h = kk.silu_mul(triton_moe.expert_gemv(x, self.w_gate_up, flat, k))
            y = triton_moe.expert_gemv(h, self.w_down, flat, 1)
            return kk.combine_experts(y.view(t, k, -1), weights)
        ys, dest = self.sorted_outputs(x, idx, kk)
        return kk.combine_experts(ys.index_select(0, dest).view(t, k, -1), weights)

    def sorted_outputs(self, x: torch.Tensor, idx: torch.Tensor, kk=K.eager) -> tuple[torch.Tensor, torch.Tensor]:
        """The grouped-GEMM pass: pair outputs sorted by expert ys [T * k, H] (unweighted) and dest [T * k], the row
        of ys of each (token, j) pair."""
        k = idx.shape[1]
        order, dest, offsets = kk.expert_order(idx.reshape(-1), self.num_experts)
        xs = x.index_select(0, order // k)
        h = kk.silu_mul(K.grouped_gemm(xs, self.w_gate_up, offsets, self.use_grouped_mm))
        return K.grouped_gemm(h, self.w_down, offsets, self.use_grouped_mm), dest


class MoE(nn.Module):
    """Router, routed experts and shared experts. With `fused` on and at most FUSED_MAX_TOKENS tokens (decode
    steps, short pieces): the fused router kernel, then routed and shared experts through the two
    `fused_moe` kernels, the residual added in the combine (on CPU: the same steps in PyTorch). A packed
    mixed step (`packed=True`, hundreds of tokens in a CUDA graph) takes the same path up to
    PACKED_FUSED_MAX_TOKENS while `packed_fused` is on, in GEMM-sized blocks (fused_moe.block_m_for)."""

    FUSED_MAX_TOKENS = 64
    # one MoE layer on an H100, fused (128-row blocks) / grouped GEMM: 661 / 734 us at 1,088 tokens, 1,073 / 934 at
    # 2,112 (benchmarks/ENGINE_NOTES.md): packed steps past ~1,500 tokens (areas over 1,024 rows) take the GEMM
    PACKED_FUSED_MAX_TOKENS = 1536

    def __init__(self, args: EngineArgs, hf_moe: nn.Module, use_grouped_mm: bool):
        super().__init__()
        self.args = args
        self.router = TopKRouter(args, hf_moe.gate)
        self.gate_weight = hf_moe.gate.weight.detach()  # model dtype: the fused router upcasts in-kernel
        self.experts = GroupedExperts(hf_moe.experts, use_grouped_mm)
        self.shared = DenseMLP(hf_moe.shared_experts) if getattr(hf_moe, "shared_experts", None) is not None else None
        self.weights = fused_moe.ExpertWeights(self.experts.w_gate_up, self.experts.w_down,
                                               *((self.shared.w_gate_up, self.shared.w_down) if self.shared else ()))
        self.fused = False
        self.packed_fused = False
        self.packed_block_m: int | None = None  # rows per expert block in packed steps (None: fused_moe.BLOCK_M_LARGE)
        self.kernels = fused_moe.available(self.gate_weight.device)  # else the PyTorch reference of the kernels
        self.align_kernel = self.kernels  # the alignment in one Triton program, else compiled PyTorch
        self.router_block_h: int | None = None  # the router kernel's block width (None: autotuned)
        self.router_kernel = (fused_router.available(self.gate_weight.device) and args.n_group <= 1)
        self.route_align = self.router_kernel and self.align_kernel  # split gate GEMV + one route/align program
        # the grouped-GEMM path (prefill, steps over FUSED_MAX_TOKENS) combines in one Triton pass
        self.combine_kernel = self.kernels

    def route_pairs(self, flat: torch.Tensor, kk) -> tuple[torch.Tensor, torch.Tensor]:
        a, n_shared = self.args, self.weights.n_shared
        if self.router_kernel:
            return fused_router.route_pairs(flat, self.gate_weight, self.router.bias, a.top_k, a.norm_topk_prob,
                                            a.routed_scaling_factor, n_shared, block_h=self.router_block_h)
        return fused_router.route_pairs_reference(flat, self.router.weight, self.router.bias, a.top_k, a.n_group,
                                                  a.topk_group, a.norm_topk_prob, a.routed_scaling_factor, n_shared, kk)

    def uses_fused(self, n_tokens: int, packed: bool = False) -> bool:
        limit = self.PACKED_FUSED_MAX_TOKENS if packed and self.packed_fused else self.FUSED_MAX_TOKENS
        return self.fused and n_tokens <= limit

    def forward(self, x: torch.Tensor, kk=K.eager, residual: torch.Tensor | None = None, packed: bool = False) -> torch.Tensor:
        """The MoE output for x [..., H]; with `residual`, residual + the output (fused in one kernel)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.uses_fused(flat.shape[0], packed):
            return self._fused(flat, kk, residual).view(shape)
        weights, idx = self.router(flat, kk)
        if self.combine_kernel and idx.numel() > self.experts.gemv_max_pairs:
            # gather, weight and sum the pair outputs, add the shared MLP and the residual: one Triton pass
            ys, dest = self.experts.sorted_outputs(flat, idx, kk)
            shared = self.shared(flat, kk) if self.shared is not None else None
            res = residual.reshape(flat.shape) if residual is not None else None
            return fused_moe.combine_sorted(ys, dest.view(-1), weights, shared, res).view(shape)
        out = self.experts(flat, weights, idx, kk)
        if self.shared is not None:
            out = out + self.shared(flat, kk)
        out = out.view(shape)
        return out if residual is None else residual + out

    def _fused(self, flat: torch.Tensor, kk, residual: torch.Tensor | None) -> torch.Tensor:
        t = flat.shape[0]
        res = residual.reshape(flat.shape) if residual is not None else torch.zeros_like(flat)
        if self.shared is not None and not self.weights.n_shared:  # shared width not in expert slices
            res = res + self.shared(flat, kk)
        n_experts = self.weights.n_experts
        block_m = fused_moe.block_m_for(t * (self.args.top_k + self.weights.n_shared), n_experts, self.packed_block_m)
        if (self.route_align and self.router_kernel and self.align_kernel and self.kernels
                and t <= fused_router.ROUTE_ALIGN_MAX_TOKENS and block_m == fused_moe.BLOCK_M):
            a = self.args
            pair_expert, pair_weight, sorted_pair, block_expert = fused_router.route_and_align(
                flat.contiguous(), self.gate_weight, self.router.bias, a.top_k, a.norm_topk_prob,
                a.routed_scaling_factor, self.weights.n_shared)
            y = fused_moe.fused_moe(flat.contiguous(), pair_expert, pair_weight, self.weights, sorted_pair, block_expert)
            return fused_moe.combine_kernel(y, res, t)
        pair_expert, pair_weight = self.route_pairs(flat, kk)
        if not self.kernels:
            return fused_moe.fused_moe_reference(flat, pair_expert, pair_weight, self.weights, res, block_m)
        if self.align_kernel and pair_expert.numel() <= fused_moe.ALIGN_MAX_PAIRS:
            sorted_pair, block_expert = fused_moe.moe_align_triton(pair_expert, n_experts, block_m)
        else:
            sorted_pair, block_expert = kk.moe_align(pair_expert, n_experts, block_m)
        y = fused_moe.fused_moe(flat.contiguous(), pair_expert, pair_weight, self.weights, sorted_pair, block_expert, block_m)
        return fused_moe.combine_kernel(y, res, t)


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, args: EngineArgs, hf_layer: nn.Module, use_grouped_mm: bool):
        super().__init__()
        self.attn_norm = hf_layer.input_layernorm.weight
        self.mlp_norm = hf_layer.post_attention_layernorm.weight
        self.eps = hf_layer.input_layernorm.variance_epsilon
        self.attn = MLAAttention(args, hf_layer.self_attn)
        mlp = hf_layer.mlp
        self.mlp = MoE(args, mlp, use_grouped_mm) if hasattr(mlp, "experts") else DenseMLP(mlp)

    def prefill(self, x, cos, sin, cache, slots, start):
        h = self.attn.prefill(K.prefill.rms_norm(x, self.attn_norm, self.eps), cos, sin, cache, slots, start)
        h, normed = K.prefill.add_rms_norm(h, x, self.mlp_norm, self.eps)
        return self._mlp(normed, h, K.prefill)

    def _mlp(self, normed, h, kk, packed: bool = False):
        """h + mlp(normed); the MoE adds the residual in its own combine."""
        if isinstance(self.mlp, MoE):
            return self.mlp(normed, kk, residual=h, packed=packed)
        return h + self.mlp(normed, kk)

    def mixed(self, x, cos, sin, cache, batch):
        """Decode rows and prefill pieces packed in one [T, H]: one expert pass for all of them."""
        h = self.attn.mixed(K.eager.rms_norm(x, self.attn_norm, self.eps), cos, sin, cache, batch)
        h, normed = K.eager.add_rms_norm(h, x, self.mlp_norm, self.eps)
        return self._mlp(normed, h, K.eager)

    def packed(self, x, cos, sin, cache, step, kk):
        """Decode rows and prompt pieces packed in one [T, H] (mixed_batch.PackedStep): one expert pass."""
        h = self.attn.packed(kk.rms_norm(x, self.attn_norm, self.eps), cos, sin, cache, step, kk)
        h, normed = kk.add_rms_norm(h, x, self.mlp_norm, self.eps)
        return self._mlp(normed, h, kk, packed=True)

    def decode(self, x, cos, sin, cache, pos, seq_bucket):
        h = self.attn.decode(K.decode.rms_norm(x, self.attn_norm, self.eps), cos, sin, cache, pos, seq_bucket)
        h, normed = K.decode.add_rms_norm(h, x, self.mlp_norm, self.eps)
        return self._mlp(normed, h, K.decode)
