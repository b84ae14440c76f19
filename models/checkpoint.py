"""Checkpoint I/O for the MoE family.

* Argus task models (fraud scorer, ...): `model.safetensors` + `config.json` + a model card
  (`README.md`: data, config, metrics, seed) in one directory; `save_task_model` / `load_task_model`.
* Any local Hugging Face MoE checkpoint directory (DeepSeek-V2/V3, Qwen3-MoE, Mixtral, ...): one
  code path, `AutoConfig.from_pretrained(dir, local_files_only=True)` then `AutoModelForCausalLM`
  (or `AutoModel`); never a hub download.
* `router_stats`: expert utilisation and load balance of every router, collected with forward hooks.

Every problem a user can fix raises `ModelError` with one clear line.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from models.router_balance import routed_experts
from models.errors import ModelError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"

# config attributes that hold the number of routed experts, per family
_EXPERT_ATTRS = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
_TOPK_ATTRS = ("num_experts_per_tok", "moe_topk", "top_k")


# --- Argus task checkpoints ----------------------------------------------------------------------

@dataclass
class TaskCheckpoint:
    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def save_task_model(path: Path, model: nn.Module, config: dict[str, Any], card: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = torch.bfloat16) -> Path:
    """Write weights (safetensors, `dtype` for floating tensors), config.json and a model card."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS), metadata={"format": "pt", "task": str(config.get("task", ""))})
    (path / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    (path / CARD).write_text(model_card(config, card or {}))
    return path


def load_task_model(path: Path, task: str | None = None) -> TaskCheckpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"checkpoint directory {path} does not exist")
    missing = [f for f in (CONFIG, WEIGHTS) if not (path / f).is_file()]
    if missing:
        raise ModelError(f"checkpoint {path} is missing {', '.join(missing)}")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"checkpoint {path}: config.json is not valid JSON ({exc})") from None
    if task is not None and config.get("task") != task:
        raise ModelError(f"checkpoint {path} is a {config.get('task')!r} model, expected {task!r}")
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"checkpoint {path}: cannot read {WEIGHTS} ({exc})") from None
    return TaskCheckpoint(path, config, state)


def model_card(config: dict[str, Any], card: dict[str, Any]) -> str:
    """A short markdown model card: what it is, data, config, metrics, seed."""
    lines = [f"# {config.get('model_version', 'argus model')}", "",
             card.get("description", f"Argus {config.get('task', '')} model (DeepSeek-style MoE backbone)."), ""]
    for title, key in (("Data", "data"), ("Training", "training")):
        if card.get(key):
            lines += [f"## {title}", ""] + [f"- {k}: {v}" for k, v in card[key].items()] + [""]
    metrics = card.get("metrics") or config.get("metrics")
    if metrics:
        lines += ["## Metrics (validation)", ""]
        models = sorted({m for row in metrics.values() for m in row}) if all(isinstance(v, dict) for v in metrics.values()) else None
        if models:
            lines += ["| model | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
            for m in models:
                lines.append(f"| {m} | " + " | ".join(_fmt(metrics[k].get(m)) for k in metrics) + " |")
        else:
            lines += [f"- {k}: {_fmt(v)}" for k, v in metrics.items()]
        lines.append("")
    lines += ["## Config", "", "```json", json.dumps({k: v for k, v in config.items() if k != "metrics"}, indent=1,
                                                     default=str)[:6000], "```", ""]
    if "seed" in config:
        lines += [f"Seed: {config['seed']}", ""]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


# --- any local Hugging Face MoE checkpoint -------------------------------------------------------

def moe_layout(config: Any) -> tuple[int, int]:
    """(routed experts, experts per token) of a HF config; ModelError if it has no routed experts."""
    cfg = getattr(config, "text_config", None) or config
    n = next((getattr(cfg, a) for a in _EXPERT_ATTRS if getattr(cfg, a, None)), 0)
    if not n:
        raise ModelError(f"{getattr(cfg, 'model_type', type(cfg).__name__)} config has no routed experts: not a MoE model")
    k = next((getattr(cfg, a) for a in _TOPK_ATTRS if getattr(cfg, a, None)), 1)
    return int(n), int(k)


def load_hf_moe(path: Path, causal_lm: bool = True, dtype: torch.dtype | None = None, device: str = "cpu") -> nn.Module:
    """Load a local HF MoE checkpoint directory (config.json + safetensors) with no network access."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    if not (path / CONFIG).is_file():
        raise ModelError(f"model directory {path} has no config.json")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise ModelError(f"model directory {path} has no weights (*.safetensors)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelError(f"{path}/config.json is not a usable transformers config: {str(exc).splitlines()[0]}") from None
    moe_layout(config)
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    try:
        model, info = auto.from_pretrained(path, config=config, local_files_only=True, dtype=dtype or "auto",
                                           output_loading_info=True)
    except (ValueError, OSError, RuntimeError) as exc:
        raise ModelError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}") from None
    mismatched = list(info.get("mismatched_keys") or [])
    missing = [k for k in info.get("missing_keys") or [] if "rotary_emb" not in k]
    if mismatched or missing:
        raise ModelError(f"weights in {path} do not match its config.json: {len(mismatched)} tensors of the wrong shape "
                         f"(e.g. {mismatched[:1]}), {len(missing)} missing (e.g. {missing[:1]})")
    return model.to(device).eval()


def preset(name: str, **overrides: Any):
    """`preset_config` with a ModelError (one clear line) for an unknown name."""
    from models.presets import UnknownPresetError, preset_config

    try:
        return preset_config(name, **overrides)
    except UnknownPresetError as exc:
        raise ModelError(str(exc)) from None


def check_weights_match(model: nn.Module, path: Path) -> None:
    """ModelError if a safetensors file's tensor names/shapes differ from the model's (mismatched files)."""
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found: dict[str, tuple[int, ...]] = {}
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                found[k] = tuple(fh.get_slice(k).get_shape())
    bad = [k for k in found if k in expected and found[k] != expected[k]]
    missing = [k for k in expected if k not in found]
    if bad or missing:
        raise ModelError(f"weights in {path} do not match the config: {len(bad)} shape mismatches "
                         f"(e.g. {bad[:1]}), {len(missing)} missing tensors (e.g. {missing[:1]})")


# --- router statistics -----------------------------------------------------------------------------

def _router_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The gate of every MoE block: modules named `gate` whose parent also holds `experts`, or *Router classes."""
    out = []
    for name, mod in model.named_modules():
        cls = type(mod).__name__.lower()
        if "router" in cls:
            out.append((name, mod))
        elif name.endswith(".gate") and "router" not in cls:
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            if hasattr(parent, "experts") and not any(n == name for n, _ in out):
                out.append((name, mod))
    return out


@contextmanager
def collect_router_stats(model: nn.Module, n_experts: int | None = None, top_k: int | None = None) -> Iterator[dict[str, Any]]:
    """Hook every router; on exit the yielded dict holds per-layer stats of all forwards run inside."""
    config = getattr(model, "config", None)
    if hasattr(config, "backbone_config"):  # an Argus task model wrapping a DeepseekV3Model
        config = config.backbone_config()
    if (n_experts is None or top_k is None) and config is not None:
        n_experts, top_k = moe_layout(config)
    counts: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(mod, _inp, out):
            idx = routed_experts(out, top_k, getattr(mod, "e_score_correction_bias", None))
            c = torch.bincount(idx.reshape(-1).long().cpu(), minlength=n_experts)[:n_experts]
            counts[name] = counts.get(name, torch.zeros(n_experts, dtype=torch.long)) + c
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in _router_modules(model)]
    result: dict[str, Any] = {}
    try:
        yield result
    finally:
        for h in handles:
            h.remove()
        result.update(summarise_counts(counts))


def summarise_counts(counts: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, c in counts.items():
        total = int(c.sum())
        share = (c.float() / max(total, 1))
        nz = share[share > 0]
        entropy = float(-(nz * nz.log()).sum())
        mean = float(c.float().mean())
        out[name] = {
            "assignments": total,
            "token_share": [round(float(s), 5) for s in share],
            "entropy": round(entropy, 5),
            "entropy_ratio": round(entropy / math.log(len(c)), 5) if len(c) > 1 else 1.0,  # 1 = perfectly balanced
            "max_load": int(c.max()),
            "mean_load": round(mean, 3),
            "max_over_mean": round(float(c.max()) / mean, 4) if mean > 0 else 0.0,
            "unused_experts": int((c == 0).sum()),
        }
    return out


def router_stats(model: nn.Module, *args: Any, n_experts: int | None = None, top_k: int | None = None,
                 **kwargs: Any) -> dict[str, dict[str, Any]]:
    """Run `model(*args, **kwargs)` once (no grad) and return the routers' load statistics per layer."""
    with torch.no_grad(), collect_router_stats(model, n_experts, top_k) as stats:
        model(*args, **kwargs)
    return stats
