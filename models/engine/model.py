"""The whole decoder (embedding, blocks, final norm, LM head) with prefill and decode entry points."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_mla
from . import kernels as K
from .config import EngineArgs
from .layers import Block
from .mixed_batch import MixedBatch, PackedStep


class RopeTables(nn.Module):
    """cos/sin for every position, computed once exactly as transformers does per step (fp32 angle,
    attention scaling, cast to the model dtype), so a table lookup equals transformers' values."""

    def __init__(self, hf_rotary: nn.Module, max_seq_len: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        inv_freq = hf_rotary.inv_freq.detach().to(device=device, dtype=torch.float32)
        scaling = float(getattr(hf_rotary, "attention_scaling", 1.0))
        freqs = torch.arange(max_seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        self.cos = (freqs.cos() * scaling).to(dtype)  # [max_seq, dr/2]
        self.sin = (freqs.sin() * scaling).to(dtype)


class EngineModel(nn.Module):
    def __init__(self, hf_model: nn.Module, max_seq_len: int, use_grouped_mm: bool | None = None):
        super().__init__()
        cfg = hf_model.config
        self.args = args = EngineArgs.from_hf_config(cfg)
        base = hf_model.model
        self.embed = base.embed_tokens.weight
        self.dtype, self.device = self.embed.dtype, self.embed.device
        if use_grouped_mm is None:
            use_grouped_mm = K._grouped_mm_available(self.device, self.dtype)
        self.use_grouped_mm = use_grouped_mm
        self.blocks = nn.ModuleList([Block(args, layer, use_grouped_mm) for layer in base.layers[: args.num_layers]])
        self.norm = base.norm.weight
        self.norm_eps = base.norm.variance_epsilon
        self.lm_head = hf_model.lm_head.weight
        self.rope = RopeTables(base.rotary_emb, max_seq_len, self.dtype, self.device)
        self.max_seq_len = max_seq_len

    def set_fused_moe(self, on: bool, packed: bool = False, packed_block_m: int | None = None) -> None:
        """Fused router + MoE kernels for steps of at most MoE.FUSED_MAX_TOKENS tokens, and with `packed` for
        packed mixed steps too (up to MoE.PACKED_FUSED_MAX_TOKENS, in blocks of `packed_block_m` rows, None:
        fused_moe.BLOCK_M_LARGE); before any graph capture."""
        for block in self.blocks:
            if hasattr(block.mlp, "fused"):
                block.mlp.fused = bool(on)
                block.mlp.packed_fused = bool(on and packed)
                block.mlp.packed_block_m = packed_block_m

    def set_attention_kernel(self, on: bool) -> None:
        """Decode rows' attention through fused_mla.latent_attention and a packed step's piece through
        fused_mla.piece_attention, where they can run (before any graph capture)."""
        a = self.args
        usable = fused_mla.latent_attention_available(self.device, a.num_heads, a.kv_lora_rank, a.qk_rope_head_dim)
        piece = fused_mla.piece_attention_available(self.device, a.kv_lora_rank, a.qk_rope_head_dim)
        for block in self.blocks:
            block.attn.attn_kernel = bool(on and usable)
            block.attn.piece_kernel = bool(on and piece)

    def new_cache(self, max_batch: int) -> torch.Tensor:
        """The static latent cache: [layers, slots, max_seq_len, kv_lora_rank + rope_dim]."""
        a = self.args
        return torch.zeros(a.num_layers, max_batch, self.max_seq_len, a.latent_dim, dtype=self.dtype, device=self.device)

    def _final(self, h: torch.Tensor, kk=K.eager) -> torch.Tensor:
        return kk.rms_norm(h, self.norm, self.norm_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.lm_head)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, cache: torch.Tensor | None, slots: torch.Tensor | None, start: int = 0):
        """tokens [B, C] at positions start..start+C-1 (rows of cache slots `slots`); final-normed hidden [B, C, H]."""
        c = tokens.shape[1]
        cos, sin = self.rope.cos[start : start + c], self.rope.sin[start : start + c]
        h = F.embedding(tokens, self.embed)
        for i, block in enumerate(self.blocks):
            h = block.prefill(h, cos, sin, None if cache is None else cache[i], slots, start)
        return self._final(h, K.prefill)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, cache: torch.Tensor, seq_bucket: int) -> torch.Tensor:
        """One token for each of slots 0..B-1 (tokens, pos: [B]); logits [B, vocab]. Graph-capturable."""
        cos, sin = self.rope.cos[pos], self.rope.sin[pos]
        h = F.embedding(tokens, self.embed)
        for i, block in enumerate(self.blocks):
            h = block.decode(h, cos, sin, cache[i], pos, seq_bucket)
        return self.logits(self._final(h, K.decode))

    @torch.no_grad()
    def mixed(self, tokens: torch.Tensor, pos: torch.Tensor, cache: torch.Tensor, batch: MixedBatch) -> torch.Tensor:
        """One step over decode rows and prefill pieces packed as `batch` says (tokens, pos: [T]);
        final-normed hidden [T, H]. Eager (the token count changes every step), one expert pass."""
        cos, sin = self.rope.cos[pos], self.rope.sin[pos]
        h = F.embedding(tokens, self.embed)
        for i, block in enumerate(self.blocks):
            h = block.mixed(h, cos, sin, cache[i], batch)
        return self._final(h)

    @torch.no_grad()
    def packed(self, tokens: torch.Tensor, step: PackedStep, cache: torch.Tensor) -> torch.Tensor:
        """A mixed step in fixed shapes (decode rows + up to step's max pieces of prompt in a padded area,
        `PackedStep`): logits [n_decode + max_pieces, vocab] of the decode rows and of each piece's last real token
        (an unused piece's row is a padding row's). Graph-capturable."""
        kk = K.mixed
        cos, sin = self.rope.cos[step.pos], self.rope.sin[step.pos]
        h = F.embedding(tokens, self.embed)
        for i, block in enumerate(self.blocks):
            h = block.packed(h, cos, sin, cache[i], step, kk)
        picked = torch.cat([h[: step.n_decode], h.index_select(0, step.last)])
        return self.logits(self._final(picked, kk))
