"""Named shapes of the Argus MoE family, all `DeepseekV3Config` (transformers' native DeepSeek).

tiny  - tests; builds and runs in seconds on CPU.
small - the shipped trained checkpoints; CPU-servable (<= 15M parameters in bf16),
        8 routed experts, top-2 routing plus 1 shared expert, 32K context via YaRN.
lite  - DeepSeek-V2-Lite shape (15.7B total / 2.4B active, bf16); GPU only; random weights
        unless a checkpoint is given.

Tiny models must set `first_k_dense_replace` (the default 3 makes them dense) and
`n_group = topk_group = 1`; expert widths are multiples of 8 for `grouped_mm` on CPU.
"""

from __future__ import annotations

from typing import Any

from transformers import DeepseekV3Config


def _yarn(factor: float, original: int, theta: float = 10000.0) -> dict[str, Any]:
    return {
        "rope_type": "yarn",
        "rope_theta": theta,
        "factor": factor,
        "original_max_position_embeddings": original,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        first_k_dense_replace=0,
        n_group=1,
        topk_group=1,
        kv_lora_rank=32,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=16,
        routed_scaling_factor=1.0,
        max_position_embeddings=4096,
        rope_parameters=_yarn(4.0, 1024),
    ),
    "small": dict(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        first_k_dense_replace=0,
        n_group=1,
        topk_group=1,
        kv_lora_rank=64,
        q_lora_rank=None,
        qk_rope_head_dim=16,
        qk_nope_head_dim=32,
        v_head_dim=32,
        routed_scaling_factor=1.0,
        max_position_embeddings=32768,
        rope_parameters=_yarn(8.0, 4096),
    ),
    # DeepSeek-V2-Lite: 27 layers, first dense, 64 routed experts top-6 + 2 shared, MLA without q LoRA.
    "lite": dict(
        vocab_size=102400,
        hidden_size=2048,
        intermediate_size=10944,
        moe_intermediate_size=1408,
        num_hidden_layers=27,
        num_attention_heads=16,
        num_key_value_heads=16,
        n_shared_experts=2,
        n_routed_experts=64,
        num_experts_per_tok=6,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        kv_lora_rank=512,
        q_lora_rank=None,
        qk_rope_head_dim=64,
        qk_nope_head_dim=128,
        v_head_dim=128,
        routed_scaling_factor=1.0,
        norm_topk_prob=False,
        max_position_embeddings=163840,
        rope_parameters=_yarn(40.0, 4096),
        dtype="bfloat16",
    ),
}


class UnknownPresetError(ValueError):
    pass


def preset_config(name: str, **overrides: Any) -> DeepseekV3Config:
    """The DeepseekV3Config for a named preset; keyword overrides win (e.g. vocab_size)."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return DeepseekV3Config(**{**PRESETS[name], **overrides})


def count_parameters(config: DeepseekV3Config, active: bool = False) -> int:
    """Parameters of a DeepseekV3ForCausalLM of this config, computed without building it."""
    h, L = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    qk_head = config.qk_nope_head_dim + config.qk_rope_head_dim
    q = h * heads * qk_head if config.q_lora_rank is None else (
        h * config.q_lora_rank + config.q_lora_rank + config.q_lora_rank * heads * qk_head
    )
    kv = h * (config.kv_lora_rank + config.qk_rope_head_dim) + config.kv_lora_rank
    kv += config.kv_lora_rank * heads * (config.qk_nope_head_dim + config.v_head_dim)
    attn = q + kv + heads * config.v_head_dim * h + 2 * h  # + o_proj + two layer norms
    dense_mlp = 3 * h * config.intermediate_size
    expert = 3 * h * config.moe_intermediate_size
    n_experts = config.num_experts_per_tok if active else config.n_routed_experts
    moe = (n_experts + config.n_shared_experts) * expert + config.n_routed_experts * h  # the correction bias is a buffer
    n_dense = min(config.first_k_dense_replace, L)
    layers = L * attn + n_dense * dense_mlp + (L - n_dense) * moe
    return layers + 2 * config.vocab_size * h + h
