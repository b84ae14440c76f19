"""Summary quality through the product's front door: `argus summarize` then `argus eval summaries`.

    python benchmarks/summaries_quality.py                       # IU X-ray held-out, ECTSum val, PubMed held-out
    python benchmarks/summaries_quality.py --sets iu --limit 100 # one set, first 100 records

For each set this writes the evaluation split (../shared data, never copied into the project: the
files go under var/bench-summaries/), runs

    argus summarize -i SPLIT -o var/bench-summaries/SET.out.jsonl --num-cpus 1     (output validation on)
    argus eval summaries -i SPLIT -p var/bench-summaries/SET.out.jsonl --report ...html --json ...json

as subprocesses, and prints one table with the targets. Splits: IU X-ray = the 10% id-hash slice
(models/fit_writers.heldout, the same rule the writers were fitted without), ECTSum = its val file,
PubMed = the 25% id-hash slice of the 80-article sample.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "summarisation"
OUT = ROOT / "var" / "bench-summaries"

SETS = {
    "iu": ("iu_xray_reports.jsonl.gz", "iu-xray"),
    "ectsum": ("ectsum_val.jsonl.gz", None),
    "pubmed": ("pubmed_sample_train.jsonl.gz", "pubmed"),
}


def write_split(name: str, limit: int | None) -> Path:
    from models.fit_writers import read_jsonl, split

    file, source = SETS[name]
    records = read_jsonl(DATA / file)
    held = split(records, source)[1] if source else records
    empty = [r["id"] for r in held if not (r.get("document") or "").strip()]
    if empty:  # nothing to summarise or score (argus summarize would fail them at decode)
        print(f"{name}: {len(empty)} record(s) with an empty document left out: {', '.join(map(str, empty))}")
        held = [r for r in held if (r.get("document") or "").strip()]
    if limit:
        held = held[:limit]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.heldout.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in held:
            fh.write(json.dumps(r) + "\n")
    return path


def argus(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ARGUS_SUMMARISER__VALIDATION_ENGINE": os.environ.get(
        "ARGUS_SUMMARISER__VALIDATION_ENGINE", "gx")}
    cmd = [str(ROOT / ".venv" / "bin" / "argus"), *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def run_set(name: str, limit: int | None) -> list[dict]:
    split_path = write_split(name, limit)
    out = OUT / f"{name}.out.jsonl"
    out.unlink(missing_ok=True)  # a fresh run, not a resumed one
    t0 = time.time()
    argus("summarize", "-i", str(split_path), "-o", str(out), "--num-cpus", "1")
    seconds = time.time() - t0
    rows_json = OUT / f"{name}.eval.json"
    argus("eval", "summaries", "-i", str(split_path), "-p", str(out), "--report", str(OUT / f"{name}.html"),
          "--json", str(rows_json))
    rows = json.loads(rows_json.read_text())
    for r in rows:
        r["set"], r["summarize_s"] = name, round(seconds, 1)
    return rows


def targets(name: str, rows: list[dict]) -> str:
    by = {r["system"]: r for r in rows}
    a = by.get("argus", {})
    if name == "iu":
        base = by["constant-normal"]["rouge1"]
        return (f"R-1 {a.get('rouge1')} vs 1.1 x constant-normal {1.1 * base:.2f}: "
                f"{'met' if a.get('rouge1', 0) >= 1.1 * base else 'SHORT'}; false-normal {a.get('false_normal_rate')}"
                f" <= 0.05: {'met' if a.get('false_normal_rate', 1) <= 0.05 else 'SHORT'}; errors {a.get('errors')}")
    if name == "ectsum":
        return f"R-2 {a.get('rouge2')} >= 18: {'met' if a.get('rouge2', 0) >= 18 else 'SHORT'}"
    tr = by.get("TextRank@argus", {}).get("rouge1", 0)
    return f"R-1 {a.get('rouge1')} >= TextRank@argus {tr}: {'met' if a.get('rouge1', 0) >= tr else 'SHORT'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="iu,ectsum,pubmed")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    cols = ["set", "system", "docs", "errors", "rouge1", "rouge2", "rougeLsum", "false_normal_rate",
            "false_normal_vs_findings", "obs_precision", "obs_recall", "obs_f1"]
    lines, verdicts = [], []
    for name in args.sets.split(","):
        rows = run_set(name, args.limit)
        lines += rows
        verdicts.append(f"{name}: {targets(name, rows)}")
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in lines:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    print()
    for v in verdicts:
        print(v)


if __name__ == "__main__":
    main()
