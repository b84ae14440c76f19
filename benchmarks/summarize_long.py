"""Long-document summarisation: wall time and peak memory for one ~100-page financial report.

    python benchmarks/summarize_long.py                      # 60K words (~100 pages), extractive
    python benchmarks/summarize_long.py --words 100000 --mode extractive --threads 2

Builds the report with the simulator (`pipelines.simulate_reports.finance_report`, 10-K layout),
loads the summariser (shipped checkpoint, or --checkpoint), then times `Summarizer.summarize`.
CPU time (user + system) is printed next to the wall time: on a shared machine the wall time
mostly measures the other tenants (compare `load_avg_1m` with `cores_visible`).
Memory: peak resident set size of the process (resource.getrusage, includes torch tensors) before
and after the summary, and the peak of Python allocations during it (tracemalloc; torch's own
buffers are not Python allocations, so the RSS figure is the one that bounds memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--words", type=int, default=60_000, help="approximate words (600 per page)")
    ap.add_argument("--mode", default="extractive", choices=["extractive", "generative"])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window-tokens", type=int, default=None, help="override the checkpoint's window")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pipelines.report_summariser import Summarizer
    from pipelines.simulate_reports import finance_report

    t = time.perf_counter()
    report = finance_report(args.seed, kind="annual_report_10k", words=args.words)
    make_s = time.perf_counter() - t
    kwargs = {"window_tokens": args.window_tokens} if args.window_tokens else {}
    t = time.perf_counter()
    summarizer = Summarizer.load(args.checkpoint, **kwargs)
    load_s = time.perf_counter() - t
    n_tokens = len(summarizer.tokenizer(report.text, add_special_tokens=False)["input_ids"])
    rss_before = rss_mib()

    tracemalloc.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    with torch.inference_mode():
        summary = summarizer.summarize(report, mode=args.mode)
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = rss_mib()

    out = {
        "words": len(report.text.split()), "chars": len(report.text), "tokens": n_tokens,
        "pages_at_600_words": round(len(report.text.split()) / 600, 1),
        "model_version": summarizer.model_version, "mode": args.mode, "window_tokens": summarizer.window_tokens,
        "overlap_tokens": summarizer.overlap_tokens, "threads": args.threads,
        "windows_or_chunks": summary.faithfulness.get("windows", summary.faithfulness.get("chunks")),
        "summary_sentences": len(summary.sentences), "key_facts": len(summary.key_facts),
        "figures_supported": f"{summary.faithfulness.get('figures_supported')}/{summary.faithfulness.get('figures_checked')}",
        "wall_s": round(wall, 2), "cpu_s": round(cpu_s, 2), "tokens_per_s": round(n_tokens / wall, 1),
        "peak_rss_mib_before": round(rss_before, 1), "peak_rss_mib_after": round(rss_after, 1),
        "python_alloc_peak_mib": round(py_peak / 2**20, 1),
        "generate_report_s": round(make_s, 2), "load_s": round(load_s, 2),
        "cpu": platform.processor() or platform.machine(), "cores_visible": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(out, indent=1))
    print("summary:\n" + summary.summary[:800])


if __name__ == "__main__":
    main()
