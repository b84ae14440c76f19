"""A random-weight transformers model built straight on the target device (benchmarks, GPU checks).

Constructing on the meta device and materialising with `to_empty` avoids initialising 15.7B
parameters on the CPU; weights are then drawn in place on the device.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def random_hf_model(config, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                    seed: int = 0, std: float | None = None, scaled_residual: bool = False, **from_config_kwargs):
    """std (default: config.initializer_range) for every matrix. With `scaled_residual`, embeddings
    get std 1 and the projections that write into the residual stream (o_proj, down_proj) std/sqrt(2L),
    GPT-2 style: each layer then nudges the residual stream instead of replacing it, so a near-tie
    in top-k routing flipped by bf16 rounding moves the logits a little rather than chaotically."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    std = config.initializer_range if std is None else std
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **from_config_kwargs)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1 and "norm" in name:
            p.fill_(1.0)
        elif p.dim() == 1:
            p.zero_()
        elif scaled_residual and "embed_tokens" in name:
            p.normal_(0.0, 1.0, generator=gen)
        elif scaled_residual and ("o_proj" in name or "down_proj" in name):
            p.normal_(0.0, std / (2 * config.num_hidden_layers) ** 0.5, generator=gen)
        else:
            p.normal_(0.0, std, generator=gen)
    for name, buf in model.named_buffers():
        if "e_score_correction_bias" in name:
            buf.zero_()
    # Non-persistent rope buffers came out of to_empty uninitialised: rebuild the rotary module.
    base = model.model
    base.rotary_emb = type(base.rotary_emb)(config=model.config).to(device)
    return model.eval()
