"""`argus train summariser`: train the summariser's MoE (one backbone, two heads) on JSONL(.gz) data.

Each record `{id, domain, source, document, summary}` becomes one sequence laid out like the
generative prompt: `<bos> <|domain|> <|document|> sentences... <|summary|> summary <eos>`.
One forward pass of `DeepseekV3ForCausalLM` gives three losses:
- domain LM pretraining: next-token loss on the document tokens (weight `doc_lm_weight`),
- summary fine-tuning: next-token loss on the summary tokens (the prompt template),
- the extractive scorer: BCE of the sentence head on greedy ROUGE-oracle labels (pooled states of
  each sentence's tokens; with a causal backbone these equal the states of the document alone).
The routers are kept balanced without an auxiliary loss, as in DeepSeek-V3: the expert-choice bias of
each router is nudged after every step (`models/router_balance.py`).

Held-out data (never trained on): `--val` files, and for sources without a val file a
deterministic slice of `--holdout-fraction` of records (by id hash). The model card reports ROUGE of
the trained summariser on each held-out source next to LEAD-3 and TextRank.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.router_balance import RouterBiasBalancer
from models.sentence_scorer import SentenceScorerHead, encode_sentences, pool_ranges, prefix_ids, sentence_features
from models.errors import ArgusError
from models.summariser import HEAD_FILE, META_FILE, SummariserModel
from models.tokenizer import SUMMARY, load_tokenizer, save_tokenizer, train_tokenizer

MAX_SUMMARY_TOKENS = 256
_WORD = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")  # as pipelines.sentence_selection.words


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lines_as_sentences(text: str) -> list[str]:
    """The default splitter: one sentence per line (the CLI passes pipelines.sentences' splitter)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_records(paths) -> list[dict]:
    import gzip

    out: list[dict] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise TrainingInputError(f"input not found: {p}")
        with (gzip.open if p.suffix == ".gz" else open)(p, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise TrainingInputError(f"{p}:{n}: not JSON ({exc.msg})") from None
    return out


class TrainingInputError(ArgusError):
    exit_code = 7


# --- labels ---------------------------------------------------------------------------------------

def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(zip(*[tokens[i:] for i in range(n)]))


def _f1(pred: Counter, ref: Counter) -> float:
    common = sum((pred & ref).values())
    if not common:
        return 0.0
    p, r = common / sum(pred.values()), common / sum(ref.values())
    return 2 * p * r / (p + r)


def oracle_labels(sentences: list[str], summary: str, max_picks: int = 5) -> list[int]:
    """Greedy oracle: add the sentence that most raises mean(ROUGE-1 F1, ROUGE-2 F1) until none does."""
    ref = words(summary)
    ref1, ref2 = _ngrams(ref, 1), _ngrams(ref, 2)
    toks = [words(s) for s in sentences]
    chosen: list[int] = []
    best = 0.0
    cur1, cur2 = Counter(), Counter()
    for _ in range(max_picks):
        cand, cand_score = None, best
        for i, t in enumerate(toks):
            if i in chosen or not t:
                continue
            s = (_f1(cur1 + _ngrams(t, 1), ref1) + _f1(cur2 + _ngrams(t, 2), ref2)) / 2
            if s > cand_score:
                cand, cand_score = i, s
        if cand is None:
            break
        chosen.append(cand)
        best = cand_score
        cur1 += _ngrams(toks[cand], 1)
        cur2 += _ngrams(toks[cand], 2)
    labels = [0] * len(sentences)
    for i in chosen:
        labels[i] = 1
    return labels


# --- examples -------------------------------------------------------------------------------------

@dataclass
class Example:
    ids: list[int]
    weights: list[float]  # LM loss weight of predicting ids[t+1] from position t
    ranges: list[tuple[int, int]]
    features: torch.Tensor
    labels: list[int]


def build_example(tokenizer, rec: dict, max_len: int, doc_lm_weight: float,
                  sentences_of: Callable[[str], list[str]] = lines_as_sentences) -> Example | None:
    doc, summary = rec.get("document") or rec.get("text") or "", rec.get("summary") or ""
    sents = sentences_of(doc)
    if not sents or not summary.strip():
        return None
    domain = rec.get("domain") if rec.get("domain") in ("finance", "medical") else "finance"
    sent_ids = encode_sentences(tokenizer, sents)
    feats = sentence_features(sent_ids)
    labels = oracle_labels(sents, summary)
    summ = tokenizer(summary, add_special_tokens=False)["input_ids"][:MAX_SUMMARY_TOKENS] + [tokenizer.eos_token_id]
    ids = prefix_ids(tokenizer, domain)
    budget = max_len - len(ids) - len(summ) - 1
    ranges: list[tuple[int, int]] = []
    for s in sent_ids:
        if len(ids) + len(s) - 3 > budget:
            break
        ranges.append((len(ids), len(ids) + len(s)))
        ids.extend(s)
    if not ranges:
        return None
    n_doc = len(ids)
    ids = ids + [tokenizer.convert_tokens_to_ids(SUMMARY)] + summ
    # weight[t] applies to predicting ids[t + 1]: document tokens get the pretraining weight.
    weights = [doc_lm_weight if t + 1 < n_doc else 1.0 for t in range(len(ids) - 1)]
    k = len(ranges)
    return Example(ids, weights, ranges, feats[:k], labels[:k])


# --- the loop -------------------------------------------------------------------------------------

def _batches(examples: list[Example], batch_tokens: int, rng: random.Random) -> list[list[Example]]:
    """Length-bucketed batches of at most ~batch_tokens padded tokens, in random order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids) + rng.random())
    batches, cur, cur_max = [], [], 0
    for i in order:
        L = len(examples[i].ids)
        if cur and max(cur_max, L) * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(examples[i])
        cur_max = max(cur_max, L)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def _step_losses(lm, head, batch: list[Example], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(e.ids) for e in batch)
    x = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    w = torch.zeros((len(batch), T - 1))
    for b, e in enumerate(batch):
        x[b, : len(e.ids)] = torch.tensor(e.ids)
        mask[b, : len(e.ids)] = 1
        w[b, : len(e.weights)] = torch.tensor(e.weights)
    x, mask, w = x.to(device), mask.to(device), w.to(device)
    hidden = lm.model(input_ids=x, attention_mask=mask).last_hidden_state
    logits = lm.lm_head(hidden[:, :-1]).float()
    tok_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
    lm_loss = (tok_loss * w.reshape(-1)).sum() / w.sum().clamp(min=1e-6)
    ext_logits, ext_labels = [], []
    for b, e in enumerate(batch):
        pooled = pool_ranges(hidden[b], e.ranges)
        ext_logits.append(head(pooled, e.features.to(device)).float())
        ext_labels.append(torch.tensor(e.labels, dtype=torch.float32, device=device))
    lg, lb = torch.cat(ext_logits), torch.cat(ext_labels)
    pos_weight = ((lb.numel() - lb.sum()) / lb.sum().clamp(min=1)).clamp(max=20.0)  # oracle sentences are rare
    ext_loss = F.binary_cross_entropy_with_logits(lg, lb, pos_weight=pos_weight)
    return lm_loss, ext_loss


def _heldout(rec: dict, fraction: float) -> bool:
    h = int(hashlib.sha1(str(rec.get("id", "")).encode()).hexdigest()[:8], 16)
    return (h % 10_000) < fraction * 10_000


def _source(rec: dict) -> str:
    return str(rec.get("source") or rec.get("domain") or "data")


def train_summariser(
    inputs: list[str | Path],
    output: str | Path,
    preset: str = "tiny",
    val: list[str | Path] | None = None,
    epochs: int = 1,
    seed: int = 0,
    max_docs: int | None = None,
    max_len: int | None = None,
    batch_tokens: int | None = None,
    lr: float = 2e-3,
    doc_lm_weight: float = 0.3,
    ext_weight: float = 1.0,
    holdout_fraction: float = 0.1,
    max_minutes: float | None = None,
    eval_docs: int | None = 200,
    gen_eval_docs: int = 0,
    vocab_size: int | None = None,
    bias_rate: float = 1e-3,
    tokenizer_path: str | Path | None = None,
    command: str | None = None,
    device: str = "auto",
    progress: bool = True,
    sentences_of: Callable[[str], list[str]] = lines_as_sentences,
    evaluate: Callable[[Any, list[dict]], dict] | None = None,
) -> dict[str, Any]:
    """`sentences_of`: the sentence splitter (inference's, from the caller); `evaluate(model, held)`:
    held-out metrics for the model card (the CLI passes pipelines.eval_summaries.heldout_metrics)."""
    from transformers import DeepseekV3ForCausalLM

    from models.presets import PRESETS, preset_config

    t_start = time.time()
    if preset not in PRESETS:
        raise TrainingInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    random.seed(seed)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    records = [r for r in read_records(inputs) if (r.get("document") or r.get("text")) and r.get("summary")]
    if not records:
        raise TrainingInputError("no records with both 'document' and 'summary' in the inputs")
    val_records = [r for r in read_records(val or []) if r.get("summary")]
    val_sources = {_source(r) for r in val_records}
    train, held = [], list(val_records)
    for r in records:
        (held if _source(r) not in val_sources and _heldout(r, holdout_fraction) else train).append(r)
    rng.shuffle(train)
    if max_docs:
        train = train[:max_docs]
    if not train:
        raise TrainingInputError("every record was held out; add data or lower --holdout-fraction")

    # Tokenizer: given, or trained on the training documents and summaries only (held-out text stays unseen).
    cfg_vocab = vocab_size or PRESETS[preset]["vocab_size"]
    texts = [t for r in train for t in ((r.get("document") or r.get("text")), r["summary"])]
    if tokenizer_path:
        tokenizer = load_tokenizer(tokenizer_path)  # e.g. from `argus train tokenizer` (data + simulator output)
    else:
        tokenizer = train_tokenizer(texts, vocab_size=cfg_vocab, min_frequency=2, show_progress=False)
    config = preset_config(preset, vocab_size=max(cfg_vocab, len(tokenizer)))
    max_len = int(max_len or min(config.max_position_embeddings, 16384 if dev.type == "cuda" else 1024))
    batch_tokens = int(batch_tokens or (131072 if dev.type == "cuda" else 4096))
    examples = [e for r in train if (e := build_example(tokenizer, r, max_len, doc_lm_weight, sentences_of)) is not None]

    lm = DeepseekV3ForCausalLM(config).to(dev)
    head = SentenceScorerHead(config.hidden_size).to(dev)
    params = list(lm.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    steps_per_epoch = len(_batches(examples, batch_tokens, random.Random(seed)))
    total_steps = max(1, steps_per_epoch * epochs)
    warmup = max(1, total_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))))
    balancer = RouterBiasBalancer(lm, config.num_experts_per_tok, rate=bias_rate)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, desc=f"train summariser ({preset})", unit="step", disable=not progress, mininterval=5.0)
    history: list[dict[str, float]] = []
    step, stopped_early = 0, False
    lm.train()
    head.train()
    for epoch in range(epochs):
        for batch in _batches(examples, batch_tokens, rng):
            with amp:
                lm_loss, ext_loss = _step_losses(lm, head, batch, tokenizer.pad_token_id, dev)
            loss = lm_loss + ext_weight * ext_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            balancer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(lm=f"{lm_loss.item():.3f}", ext=f"{ext_loss.item():.3f}", refresh=False)
            if step % 20 == 0 or step == total_steps:
                history.append({"step": step, "epoch": epoch, "lm_loss": round(lm_loss.item(), 4), "ext_loss": round(ext_loss.item(), 4)})
            if max_minutes and (time.time() - t_start) > max_minutes * 60:
                stopped_early = True
                break
        if stopped_early:
            break
    bar.close()
    balancer.remove()
    lm.eval()
    head.eval()
    train_seconds = time.time() - t_start

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    version = f"summariser-{preset}-{time.strftime('%Y%m%d')}-s{seed}"
    meta = {"model_version": version, "preset": preset, "window_tokens": max_len, "trained_max_len": max_len}
    summarizer = SummariserModel(lm, tokenizer, head, meta, dev, writers=None)
    metrics = (evaluate(summarizer, held) if evaluate is not None
               else {"note": "no evaluator given; run `argus eval summaries` for ROUGE"})
    routers = router_summary(summarizer, held[:8], sentences_of)
    meta.update({
        "seed": seed, "epochs": epochs, "steps": step, "stopped_early": stopped_early, "train_seconds": round(train_seconds, 1),
        "train_docs": len(examples), "train_sources": dict(Counter(_source(r) for r in train)),
        "heldout_docs": dict(Counter(_source(r) for r in held)), "lr": lr, "doc_lm_weight": doc_lm_weight,
        "batch_tokens": batch_tokens, "parameters": sum(p.numel() for p in lm.parameters()),
        "device": str(dev), "history": history[-10:], "metrics": metrics, "routers": routers,
        "router_bias_rate": bias_rate, "command": command,
    })
    _save(out, lm, head, tokenizer, meta)
    return meta




def router_summary(summarizer: SummariserModel, docs: list[dict],
                   sentences_of: Callable[[str], list[str]] = lines_as_sentences) -> dict[str, Any]:
    """Expert load of every MoE layer while reading a few held-out documents (models.checkpoint.router_stats)."""
    from models.checkpoint import collect_router_stats

    if not docs:
        return {}
    lm = summarizer.lm
    with torch.inference_mode(), collect_router_stats(lm) as stats:
        for rec in docs:
            sents = sentences_of(rec.get("document") or rec.get("text") or "")
            if sents:
                summarizer.score_sentences(str(rec.get("domain") or "finance"), sents)
    return {name: {k: v[k] for k in ("entropy_ratio", "max_over_mean", "unused_experts")} for name, v in stats.items()}


def _save(out: Path, lm, head, tokenizer, meta: dict) -> None:
    from safetensors.torch import save_file

    # bf16 weights: the shipped checkpoint must stay small; CPU loading upcasts to float32.
    lm.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    save_file({k: v.detach().to(torch.bfloat16).cpu().contiguous() for k, v in head.state_dict().items()}, str(out / HEAD_FILE))
    save_tokenizer(tokenizer, out)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    (out / "README.md").write_text(model_card(meta))


def model_card(meta: dict) -> str:
    lines = [
        f"# Argus summariser `{meta['model_version']}`", "",
        "DeepSeek-style MoE (`DeepseekV3ForCausalLM`, transformers native: MLA attention, 1 shared + "
        "routed experts, top-2 routing) with an extractive sentence-scoring head on the same backbone.", "",
        "## Training", "",
        f"- preset `{meta['preset']}`, {meta['parameters']:,} parameters, bf16 safetensors",
        f"- data: {meta['train_docs']} documents by source {meta['train_sources']}",
        f"- held out (never trained on): {meta['heldout_docs']}",
        f"- {meta['steps']} steps, {meta['epochs']} epoch(s) planned, stopped early: {meta['stopped_early']}, "
        f"{meta['train_seconds']} s on {meta['device']}, seed {meta['seed']}, lr {meta['lr']}",
        f"- losses: LM on document tokens (weight {meta['doc_lm_weight']}), LM on summary tokens after the prompt "
        "template, BCE of the sentence head on greedy ROUGE-oracle labels",
        f"- trained sequence length {meta['trained_max_len']} tokens (the default inference window)",
        f"- last logged losses: {meta['history'][-1] if meta['history'] else 'n/a'}", "",
        "## Held-out ROUGE (F1 x 100, rouge-score with stemming; extractive: 5 sentences / 1200 chars; baselines 3 sentences)", "",
    ]
    metrics = meta.get("metrics") or {}
    if "note" in metrics:
        lines.append(metrics["note"])
    for source, rows in metrics.items():
        if not isinstance(rows, list):
            continue
        lines += [f"### {source}", "", "| system | docs | R-1 | R-2 | R-L | R-Lsum | figures in source |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['system']} | {r['docs']} | {r['rouge1']} | {r['rouge2']} | {r['rougeL']} | {r['rougeLsum']} | {r['figures_in_source']} |" for r in rows]
        lines.append("")
    if meta.get("routers"):
        lines += ["## Router load on held-out documents (1.0 entropy ratio = perfectly balanced experts)", "",
                  "| layer | entropy ratio | max/mean load | unused experts |", "|---|---|---|---|"]
        lines += [f"| {name} | {v['entropy_ratio']} | {v['max_over_mean']} | {v['unused_experts']} |" for name, v in meta["routers"].items()]
        lines.append("")
    if meta.get("command"):
        lines += ["## Reproduce", "", "```", meta["command"], "```", ""]
    lines += ["## Limits", "",
              "A small model trained for minutes: the generative path is weak and its figures are checked against "
              "the source (unsupported sentences dropped). Extractive summaries are source text only.", ""]
    return "\n".join(lines)
