"""Engine vs transformers backends on the shipped checkpoints: agreement and speed.

    python benchmarks/engine_backends.py --device cuda --out results.json       # the GPU run
    python benchmarks/engine_backends.py --device cpu --reports 2 --words 250 --max-new-tokens 16 \
        --fraud-batches 64 --iters 2                                              # a quick CPU check

Summariser (models/checkpoints/summariser-small): the same synthetic reports through both backends,
generative (texts equal?) and extractive (max |sentence score diff|, summaries equal?), summaries/s.
FraudScorer (models/checkpoints/fraud-small): the model's forward over random 16-token contexts with
and without the engine backend (CUDA graphs per batch bucket on CUDA), max |score diff|, tx/s.
Needs no polars/ray (it runs on the bare GPU image; pydantic is carried as wheels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def summariser_part(args, results: dict) -> None:
    from pipelines.report_summariser import Summarizer
    from pipelines.sentences import split_sentences
    from pipelines.simulate_reports import generate_reports

    reports = list(generate_reports(args.reports, seed=7, words=args.words))
    models = {}
    for backend in ("transformers", "engine"):
        s, load_s = timed(lambda: Summarizer.load(args.summariser_checkpoint, device=args.device, backend=backend), args.device)
        models[backend] = s
        print(f"summariser {backend}: loaded {s.model_version} in {load_s:.1f}s (backend={s.backend})", flush=True)
    out: dict = {"reports": len(reports), "words": args.words, "max_new_tokens": args.max_new_tokens}
    for mode, kw in (("generative", {"max_new_tokens": args.max_new_tokens}), ("extractive", {})):
        texts = {}
        for backend, s in models.items():
            _, warm_s = timed(lambda: s.summarize_many(reports[:1], mode=mode, **kw), args.device)  # compile / graphs
            summaries, secs = timed(lambda: s.summarize_many(reports, mode=mode, **kw), args.device)
            texts[backend] = [x.summary for x in summaries]
            out[f"{mode}_{backend}_summaries_per_s"] = round(len(reports) / secs, 3)
            out[f"{mode}_{backend}_warmup_s"] = round(warm_s, 2)
            print(f"  {mode:10s} {backend:12s} {len(reports) / secs:8.2f} summaries/s (warm-up {warm_s:.1f}s)", flush=True)
        equal = sum(a == b for a, b in zip(texts["transformers"], texts["engine"]))
        out[f"{mode}_equal_summaries"] = f"{equal}/{len(reports)}"
        print(f"  {mode}: {equal}/{len(reports)} summaries identical", flush=True)
    diffs = []
    for r in reports:
        sents = [x.text for x in split_sentences(r.text)]
        a = np.array(models["transformers"].score_sentences(r.domain.value, sents))
        b = np.array(models["engine"].score_sentences(r.domain.value, sents))
        diffs.append(float(np.abs(a - b).max()))
    out["extractive_max_abs_score_diff"] = max(diffs)
    print(f"  extractive sentence scores: max |diff| {max(diffs):.3e}", flush=True)
    results["summariser"] = out


def fraud_batch(model, n: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    from models.fraud_state import ID_BUCKETS

    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    t = cfg.customer_history + cfg.terminal_history
    batch = {
        "hist_num": torch.randn(n, t, len(cfg.hist_fields), generator=g),
        "hist_label": torch.randint(0, 4, (n, t), generator=g),
        "hist_counterpart": torch.randint(0, ID_BUCKETS, (n, t), generator=g),
        "cur_num": torch.randn(n, len(cfg.current_fields), generator=g),
        "cur_ids": torch.randint(0, ID_BUCKETS, (n, 2), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def fraud_part(args, results: dict) -> None:
    from models.fraud_scorer import FraudScorer

    plain = FraudScorer.load(args.fraud_checkpoint, device=args.device, backend="transformers")
    engine = FraudScorer.load(args.fraud_checkpoint, device=args.device, backend="engine")
    print(f"fraud: {plain.model_version}; backends {plain.backend} / {engine.backend} "
          f"(graphs: {engine._graphs.use_graphs})", flush=True)
    out: dict = {"graphs": engine._graphs.use_graphs}
    for n in args.fraud_batches:
        t = fraud_batch(plain.model, n, args.device, seed=n)
        with torch.inference_mode():
            ref = torch.sigmoid(plain.model.fast_logits(t).float())
            _, capture_s = timed(lambda: engine._graphs.logits(t), args.device)  # first call captures the bucket
            got = torch.sigmoid(engine._graphs.logits(t).float())
            diff = float((ref - got).abs().max())
            rates = {}
            for name, fn in (("transformers", lambda: plain.model.fast_logits(t)), ("engine", lambda: engine._graphs.logits(t))):
                fn()
                _, secs = timed(lambda: [fn() for _ in range(args.iters)], args.device)
                rates[name] = n * args.iters / secs
        out[f"batch_{n}"] = {"max_abs_score_diff": diff, "tx_per_s_transformers": round(rates["transformers"]),
                             "tx_per_s_engine": round(rates["engine"]), "first_call_s": round(capture_s, 3)}
        print(f"  batch {n:5d}: max |score diff| {diff:.2e}; transformers {rates['transformers']:,.0f} tx/s, "
              f"engine {rates['engine']:,.0f} tx/s (x{rates['engine'] / rates['transformers']:.2f}); "
              f"first call {capture_s:.2f}s", flush=True)
    results["fraud"] = out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--summariser-checkpoint", default="models/checkpoints/summariser-small")
    p.add_argument("--fraud-checkpoint", default="models/checkpoints/fraud-small")
    p.add_argument("--reports", type=int, default=8)
    p.add_argument("--words", type=int, default=1200)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--fraud-batches", type=lambda s: [int(x) for x in s.split(",")], default=[512, 4096])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--skip", choices=["summariser", "fraud"], default=None)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    results: dict = {"device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    t0 = time.perf_counter()
    import traceback

    for name, part in (("fraud", fraud_part), ("summariser", summariser_part)):
        if args.skip == name:
            continue
        try:  # one part failing must not lose the other's figures
            part(args, results)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:500]
    results["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
