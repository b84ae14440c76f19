"""The shape the engine needs, read once from a transformers DeepseekV3Config (ModelArgs-style)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


from models.errors import ModelError


class UnsupportedModelError(ModelError):
    """The model is not a DeepSeek-V3-class (MLA + routed experts) checkpoint; use transformers instead."""


@dataclass(frozen=True)
class EngineArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    first_k_dense: int
    n_routed_experts: int
    n_shared_experts: int
    top_k: int
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    rms_norm_eps: float
    rope_interleave: bool
    softmax_scale: float

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Width of one cached token per layer: compressed latent + shared rope key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def cache_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return self.num_layers * self.latent_dim * dtype_bytes

    def hf_cache_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """What a per-head K/V cache (transformers' layout before latent caching) needs."""
        return self.num_layers * self.num_heads * (self.qk_head_dim + self.v_head_dim) * dtype_bytes

    @classmethod
    def from_hf_config(cls, config: Any) -> "EngineArgs":
        if getattr(config, "model_type", None) not in ("deepseek_v3", "deepseek_v2") or not getattr(
            config, "kv_lora_rank", None
        ):
            raise UnsupportedModelError(
                f"the engine runs DeepSeek-V3-class MLA models, not {getattr(config, 'model_type', type(config))!r}"
            )
        qk_head = config.qk_nope_head_dim + config.qk_rope_head_dim
        rope = getattr(config, "rope_parameters", None) or {"rope_type": "default"}
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            q_lora_rank=config.q_lora_rank,
            kv_lora_rank=config.kv_lora_rank,
            qk_nope_head_dim=config.qk_nope_head_dim,
            qk_rope_head_dim=config.qk_rope_head_dim,
            v_head_dim=config.v_head_dim,
            first_k_dense=config.first_k_dense_replace,
            n_routed_experts=config.n_routed_experts,
            n_shared_experts=config.n_shared_experts or 0,
            top_k=config.num_experts_per_tok,
            n_group=config.n_group or 1,
            topk_group=config.topk_group or 1,
            norm_topk_prob=bool(config.norm_topk_prob),
            routed_scaling_factor=float(config.routed_scaling_factor),
            rms_norm_eps=float(config.rms_norm_eps),
            rope_interleave=bool(getattr(config, "rope_interleave", True)),
            softmax_scale=_softmax_scale(rope, qk_head),
        )


def _softmax_scale(rope: dict[str, Any], qk_head_dim: int) -> float:
    """transformers' DeepseekV3Attention.scaling: YaRN's mscale(factor, mscale_all_dim) applied twice."""
    scale = qk_head_dim**-0.5
    if rope.get("rope_type", "default") != "default" and rope.get("mscale_all_dim"):
        factor = rope.get("factor", 1.0)
        mscale = 1.0 if factor <= 1 else 0.1 * rope["mscale_all_dim"] * math.log(factor) + 1.0
        scale *= mscale * mscale
    return float(scale)
