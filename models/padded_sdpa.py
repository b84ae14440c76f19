"""SDPA for MLA on CPU: pad the value heads to the query/key head width so the fused kernel is used.

DeepSeek's MLA has query/key heads of `qk_nope + qk_rope` dims but narrower value heads; PyTorch's
CPU flash-attention kernel needs equal widths and otherwise falls back to the math path, which
materialises the T x T score matrix (memory and ~6x time on a 4k-token document). Zero-padding the
values and slicing the output is exact. Registered with transformers as `argus_padded_sdpa`.
"""

from __future__ import annotations

import torch.nn.functional as F

NAME = "argus_padded_sdpa"
_registered = False


def padded_sdpa_forward(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dv, dq = value.shape[-1], query.shape[-1]
    if dv < dq:
        value = F.pad(value, (0, dq - dv))
    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return out[..., :dv], weights  # out is [batch, seq, heads, head_dim]


def register() -> str:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(NAME, padded_sdpa_forward)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
        _registered = True
    return NAME


def use_padded_sdpa(model) -> None:
    """Switch a DeepSeek-style model to padded SDPA (a no-op for models whose value width equals q/k)."""
    model.set_attn_implementation(register())
