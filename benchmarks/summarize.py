"""Summariser throughput on earnings-call transcripts: docs/s and tokens/s, in process, CPU.

    python benchmarks/summarize.py --input /work/shared/data/summarisation/ectsum_val.jsonl.gz --limit 20
    python benchmarks/summarize.py --input ... --mode generative --limit 5 --threads 2

Reads `{id, domain, document}` JSONL(.gz) records (ECTSum: ~2.7k words each), loads the summariser
(shipped `small` checkpoint unless --checkpoint), warms up on one document, then summarises
`--limit` documents one by one. Tokens are counted with the summariser's own tokenizer. Prints
wall and CPU seconds: on a shared machine wall time measures the other tenants too (see load_avg).
The same numbers through the batch job (Ray actor, validation, writes) come from
`argus summarize --input ... --output ...`, which prints docs/s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def read(path: str, limit: int) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    out = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
            if len(out) >= limit:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--mode", default="extractive", choices=["extractive", "generative"])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    from pipelines.report_summariser import Summarizer
    from pipelines.contracts import Report

    records = read(args.input, args.limit + 1)
    reports = [Report(report_id=str(r["id"]), domain=r.get("domain") if r.get("domain") in ("finance", "medical") else "finance",
                      text=r["document"]) for r in records]
    summarizer = Summarizer.load(args.checkpoint)
    tokens = [len(summarizer.tokenizer(r.text, add_special_tokens=False)["input_ids"]) for r in reports]
    with torch.inference_mode():
        summarizer.summarize(reports[0], mode=args.mode)  # warm-up (not timed)
        timed, timed_tokens = reports[1:] or reports, tokens[1:] or tokens
        latencies = []
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        for r in tqdm(timed, desc=f"summarise ({args.mode})", unit="doc"):
            t = time.perf_counter()
            summarizer.summarize(r, mode=args.mode)
            latencies.append(time.perf_counter() - t)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    out = {
        "input": args.input, "docs": len(timed), "mode": args.mode, "model_version": summarizer.model_version,
        "threads": args.threads, "mean_words": round(statistics.mean(len(r.text.split()) for r in timed)),
        "mean_tokens": round(statistics.mean(timed_tokens)),
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "docs_per_s": round(len(timed) / wall, 3), "tokens_per_s": round(sum(timed_tokens) / wall, 1),
        "docs_per_cpu_s": round(len(timed) / cpu, 3), "tokens_per_cpu_s": round(sum(timed_tokens) / cpu, 1),
        "p50_latency_s": round(statistics.median(latencies), 2), "max_latency_s": round(max(latencies), 2),
        "cores_visible": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
