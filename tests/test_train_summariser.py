"""`argus train summariser --preset tiny` end to end on generated data (CPU, seconds), then reload."""

import json
import random

from typer.testing import CliRunner

from pipelines.report_summariser import Summarizer
from models.train_summariser import oracle_labels
from pipelines.contracts import Report


def _records(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2:
            figs = [f"Revenue grew {rng.randint(2, 30)}% to ${rng.randint(1, 9)}.{rng.randint(0, 9)} billion.",
                    f"We expect fiscal 2022 EPS of ${rng.randint(1, 5)}.{rng.randint(10, 99)}."]
            filler = ["Thank you for joining the call today.", "The weather in our region was pleasant."]
            sents = figs + filler
            rng.shuffle(sents)
            out.append({"id": f"f{i}", "domain": "finance", "source": "gen-finance", "document": "\n".join(sents),
                        "summary": "\n".join(figs)})
        else:
            finding = rng.choice(["Small left pleural effusion.", "Right lower lobe opacity.", "Mild cardiomegaly."])
            out.append({"id": f"m{i}", "domain": "medical", "source": "gen-medical",
                        "document": f"The heart size is normal. {finding} No pneumothorax.", "summary": finding})
    return out


def test_oracle_picks_the_reference_sentences():
    sents = ["Revenue grew 10% to $2 billion.", "Thanks for joining.", "EPS will be $1.10."]
    assert oracle_labels(sents, "revenue grew 10% to $2 billion. eps will be $1.10") == [1, 0, 1]


def test_cli_tiny_end_to_end_and_reload(tmp_path):
    from services.cli import app

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _records(24)))
    out = tmp_path / "ckpt"
    res = CliRunner().invoke(app, ["train", "summariser", "--preset", "tiny", "--input", str(data), "--output", str(out),
                                   "--epochs", "2", "--seed", "1", "--max-docs", "20", "--vocab-size", "400",
                                   "--eval-docs", "3", "--max-len", "256", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for name in ("config.json", "model.safetensors", "scorer_head.safetensors", "tokenizer.json", "summariser.json", "README.md"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "summariser.json").read_text())
    assert meta["preset"] == "tiny" and meta["seed"] == 1 and meta["train_docs"] == 20 and meta["steps"] >= 2
    assert "ROUGE" in (out / "README.md").read_text()
    s = Summarizer.load(out, writers=None)  # the trained MoE path alone (no fitted selector / bullets)
    assert s.model_version == meta["model_version"] and s.scorer.head is not None
    text = "Revenue grew 12% to $3.1 billion.\nThank you for joining the call today.\nWe expect fiscal 2022 EPS of $2.10."
    summary = s.summarize(Report(report_id="x", domain="finance", text=text), max_sentences=2)
    assert all(text[sp.start:sp.end] == st.text for st in summary.sentences for sp in st.spans)


def test_cli_rejects_input_without_summaries(tmp_path):
    from services.cli import main  # noqa: F401  (ArgusError handling lives in main)
    from services.cli import app

    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"id": "1", "document": "Text only."}))
    res = CliRunner().invoke(app, ["train", "summariser", "--input", str(data), "--output", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "no records with both 'document' and 'summary'" in str(res.exception)


def test_router_bias_balancer_pushes_load_off_a_hot_expert():
    import torch
    from transformers import DeepseekV3ForCausalLM

    from models.presets import preset_config
    from models.router_balance import RouterBiasBalancer

    torch.manual_seed(0)
    lm = DeepseekV3ForCausalLM(preset_config("tiny")).train()
    router = next(m for m in lm.modules() if hasattr(m, "e_score_correction_bias"))
    with torch.no_grad():
        router.weight[3] += 5.0  # expert 3 wins almost every token
    bal = RouterBiasBalancer(lm, top_k=2, rate=0.01)
    x = torch.randint(0, 512, (2, 32))
    for _ in range(3):
        lm(input_ids=x)
        bal.step()
    bias = router.e_score_correction_bias
    assert bias[3] < 0 and bias.max() > 0
    bal.remove()


def test_cli_uses_a_given_tokenizer(tmp_path):
    from models.tokenizer import load_tokenizer
    from services.cli import app

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _records(12)))
    runner = CliRunner()
    assert runner.invoke(app, ["train", "tokenizer", "-i", str(data), "-o", str(tmp_path / "tok"), "--vocab-size", "330"]).exit_code == 0
    res = runner.invoke(app, ["train", "summariser", "--input", str(data), "--output", str(tmp_path / "ck"), "--tokenizer",
                              str(tmp_path / "tok" / "tokenizer.json"), "--eval-docs", "2", "--max-len", "128", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len(load_tokenizer(tmp_path / "ck")) == len(load_tokenizer(tmp_path / "tok"))
