"""A random-weight transformers model built straight on the target device (benchmarks, GPU checks).

Constructing on the meta device and materialising with `to_empty` avoids initialising 15.7B
parameters on the CPU; weights are then drawn in place on the device.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def random_hf_model(config, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                    seed: int = 0, std: float | None = None, **from_config_kwargs):
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
        else:
            p.normal_(0.0, std, generator=gen)
    for name, buf in model.named_buffers():
        if "e_score_correction_bias" in name:
            buf.zero_()
    # Non-persistent rope buffers came out of to_empty uninitialised: rebuild the rotary module.
    base = model.model
    base.rotary_emb = type(base.rotary_emb)(config=model.config).to(device)
    return model.eval()
