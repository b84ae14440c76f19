"""The byte-level BPE tokenizer: special tokens, round trip, save/load, CLI."""

import json

from typer.testing import CliRunner

from models.tokenizer import DOCUMENT, SPECIAL_TOKENS, SUMMARY, load_tokenizer, save_tokenizer, train_tokenizer

TEXTS = ["Revenue grew 12% to $3.4 million in the first quarter.", "No pleural effusion or pneumothorax.",
         "IMPRESSION: Normal chest radiograph.", "We expect fiscal 2022 EPS of $1.10 to $1.20."] * 30


def test_train_save_load_round_trip(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=400, show_progress=False)
    assert 256 < len(tok) <= 400
    for t in SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id or t == "<unk>"
    save_tokenizer(tok, tmp_path)
    again = load_tokenizer(tmp_path / "tokenizer.json")
    text = "Unseen wörds & emoji 🙂 still round-trip: 1,234.5"
    ids = again(text, add_special_tokens=False)["input_ids"]
    assert again.decode(ids).strip() == text  # byte-level: nothing is out of vocabulary
    prompt = again(f"{DOCUMENT} Revenue grew.{SUMMARY}", add_special_tokens=False)["input_ids"]
    assert prompt[0] == again.convert_tokens_to_ids(DOCUMENT) and prompt[-1] == again.convert_tokens_to_ids(SUMMARY)
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)


def test_sentence_alone_tokenises_like_mid_document():
    tok = train_tokenizer(TEXTS, vocab_size=400, show_progress=False)
    a = tok("Revenue grew.", add_special_tokens=False)["input_ids"]
    b = tok("No effusion. Revenue grew.", add_special_tokens=False)["input_ids"]
    assert b[-len(a):] == a


def test_cli_train_tokenizer(tmp_path):
    from services.cli import app

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"document": t, "summary": t[:20]}) for t in TEXTS))
    res = CliRunner().invoke(app, ["train", "tokenizer", "-i", str(data), "-o", str(tmp_path / "tok"), "--vocab-size", "350"])
    assert res.exit_code == 0, res.output
    assert len(load_tokenizer(tmp_path / "tok")) <= 350
