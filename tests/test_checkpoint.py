"""Checkpoint I/O: Argus task checkpoints, any local HF MoE directory (DeepSeek-V3, Qwen3-MoE, Mixtral), router stats."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, DeepseekV3Config, LlamaConfig, MixtralConfig, Qwen3MoeConfig

from models.checkpoint import (load_hf_moe, load_task_model, moe_layout, preset, router_stats, save_task_model)
from models.presets import preset_config
from pipelines.errors import ModelError

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64)


def families():
    return {
        "deepseek_v3": preset_config("tiny", vocab_size=128, hidden_size=32, moe_intermediate_size=16,
                                     intermediate_size=64, kv_lora_rank=16, qk_nope_head_dim=8, v_head_dim=8),
        "qwen3_moe": Qwen3MoeConfig(**TINY, head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                                    decoder_sparse_step=1, mlp_only_layers=[]),
        "mixtral": MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2),
    }


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen3_moe", "mixtral"])
def test_any_hf_moe_directory_loads_offline(tmp_path, family):
    torch.manual_seed(0)
    config = families()[family]
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path)
    loaded = load_hf_moe(tmp_path)
    assert loaded.config.model_type == family
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-4)
    n, k = moe_layout(loaded.config)
    stats = router_stats(loaded, ids)
    assert len(stats) == 2  # one router per MoE layer
    for layer in stats.values():
        assert layer["assignments"] == 2 * 10 * k
        assert len(layer["token_share"]) == n
        assert layer["max_load"] >= layer["mean_load"] > 0


def test_non_moe_config_is_refused(tmp_path):
    AutoModelForCausalLM.from_config(LlamaConfig(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="not a MoE"):
        load_hf_moe(tmp_path)


def test_missing_and_mismatched_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_hf_moe(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_hf_moe(tmp_path / "empty")
    cfg = families()["mixtral"]
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "m")
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelError, match="no weights"):
        load_hf_moe(tmp_path / "m")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "m2")
    conf = json.loads((tmp_path / "m2" / "config.json").read_text())
    conf["intermediate_size"] = 48  # weights no longer fit the config
    (tmp_path / "m2" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ModelError, match="do not match|cannot load"):
        load_hf_moe(tmp_path / "m2")


def test_unknown_preset():
    with pytest.raises(ModelError, match="unknown preset 'huge'"):
        preset("huge")


def test_task_checkpoint_roundtrip_and_card(tmp_path):
    model = torch.nn.Linear(4, 2)
    config = {"task": "fraud", "model_version": "fraud-x", "seed": 7, "metrics": {"ap": {"moe": 0.5, "lgbm": 0.4}}}
    save_task_model(tmp_path, model, config, {"data": {"rows": 10}, "metrics": config["metrics"]})
    ck = load_task_model(tmp_path, task="fraud")
    assert ck.config["model_version"] == "fraud-x"
    assert ck.state_dict["weight"].dtype == torch.bfloat16
    torch.testing.assert_close(ck.state_dict["weight"].float(), model.weight.detach().bfloat16().float())
    card = (tmp_path / "README.md").read_text()
    assert "rows: 10" in card and "| moe |" in card and "Seed: 7" in card
    with pytest.raises(ModelError, match="expected 'summariser'"):
        load_task_model(tmp_path, task="summariser")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot read"):
        load_task_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="missing model.safetensors"):
        load_task_model(tmp_path)


def test_deepseek_preset_is_moe():
    assert moe_layout(DeepseekV3Config(**{k: v for k, v in TINY.items()}, n_routed_experts=8))[0] == 8
