"""Worst-case time of every text step that sees user input, on hostile shapes of text.

    nice -n 10 python benchmarks/text_worst_case.py                   # 2 MB per shape, every step, then `argus summarize`
    python benchmarks/text_worst_case.py --mb 0.5 --no-front-door      # the text steps only
    python benchmarks/text_worst_case.py --shapes abbrev,table_blanks --steps sentences,tables

Each shape is a unit repeated to `--mb` MB of UTF-8 ("A. " runs, blanks, heading markers, table-like
lines, digit and punctuation runs, combining marks, RTL, zero-width, emoji, one huge line, many
newlines, ...). Each step is run on it directly and timed in CPU seconds (process time: on a shared
machine wall time mostly measures the other tenants; both are printed) and reported as seconds per MB.
Steps: sentences (pipelines.sentences), sections, key facts (finance and medical), faithfulness
(a summary of source sentences checked against the whole source), tables (has_prose: table-line
detection + sentences), tokenizer (models.sentence_scorer.encode_sentences with the shipped
tokenizer, over the document's sentences), selection (MMR over the sentences, flat scores), impression
(models.impression's writer on the whole text as one sentence with a finding in its middle: clause
breaks, lead-ins and trails; the chest-findings labeller before it is not run, as the summariser only
sends findings of up to 3,000 characters to it). The faithfulness, tokenizer and selection steps get the
sentences precomputed: each column is that step's own cost.

The front door (`--front-door`, default on): every shape as one record of one JSONL file through
`argus summarize` (extractive, shipped `small` checkpoint, output validation on), timed as a whole;
the per-record `latency_ms` (the summariser itself: text steps + model windows) is read back from
the output. Each record starts with one prose sentence (`--no-prose-lead` to drop it: then most shapes
are refused by the prose check before the summariser sees them). `summariser.max_document_bytes` (10 MB by default) is checked first: a shape over the
limit is measured at the limit.

Target: <= 1 s per MB for every step and shape. Exit status 1 when a step misses it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_S_PER_MB = 1.0

# name -> unit repeated to the size (or a callable building the text)
SHAPES: dict[str, str | Callable[[int], str]] = {
    "abbrev": "A. ",
    "abbrev_eg": "e.g. ",
    "abbrev_quoted": '("A. ',
    "stop_no_space": "ab.Cd",
    "blanks": " ",
    "blanks_then_letter": " " * 799 + "x\n",
    "tabs_newlines": " \t\n",
    "newlines": "\n",
    "short_lines": "a\n",
    "hash_run": "#",
    "hash_lines": "# \n",
    "heading_blank_tail": lambda n: "# a" + " " * (n - 4) + "b",
    "heading_hash_tail": "# a #" + " " * 500 + "#x\n",
    "item_headings": "ITEM 1. ",
    "item_lines": "ITEM 1A. RISK FACTORS\n",
    "caps_lines": "RISK FACTORS\n",
    "radiology_heads": "FINDINGS: IMPRESSION: ",
    "qa_operator": "Operator: " + "x" * 70 + " ",
    "table_bars": "| ",
    "table_cells": "a | b | ",
    "table_blank_cells": "|" + " " * 200 + "|" + " " * 200 + "x\n",
    "table_rule_then_letter": "-" * 300 + " " * 300 + "x\n",
    "digits": "1",
    "dotted_digits": "1.1.",
    "comma_digits": "1,",
    "thousands": "1,234,",
    "percents": "1% ",
    "money": "$1.2 billion ",
    "currency_run": "$",
    "minus_numbers": "-1 ",
    "parens": "(",
    "punct_mix": "!?.;:-",
    "quarters": "q1 ",
    "fiscal_blanks": "fiscal" + " " * 200 + "x ",
    "guidance_words": "raisraisrais ",
    "combining": "a\u0301\u0302\u0303",
    "rtl": "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627. ",
    "zero_width": "\u200b\u200d\u2060",
    "emoji": "\U0001f600\U0001f44d\U0001f3fd ",
    "huge_line": "Revenue grew to a record level in the period and margins held ",
    "prose": "Revenue grew 12% to $3.4 billion in Q1 2021. We expect margins to improve. Supply chain risk remains.\n",
    "impression_lines": lambda n: "IMPRESSION:\n" + "No acute disease.\n" * ((n - 12) // 18),
    "blank_dash": lambda n: "a" + " " * (n - 3) + "b",  # a dash break tried at every blank (bullets)
    "per_share_money": "per share $1 ",  # every figure against every per-share phrase (bullets)
    # the impression writer's clause-break and 'is seen' trail patterns: long blank runs between clause words
    "clause_blanks": "There is effusion is" + " " * 2000 + "x but" + " " * 2000 + "y without" + " " * 2000 + "z ",
    "lead_ins": "and ",
}


FRONT_DOOR_SHAPES = ["abbrev", "abbrev_eg", "stop_no_space", "blanks", "heading_blank_tail", "heading_hash_tail",
                     "blanks_then_letter", "table_blank_cells", "table_rule_then_letter", "percents", "comma_digits",
                     "combining", "zero_width", "emoji", "huge_line", "prose", "blank_dash", "per_share_money"]


def build(shape: str, size: int) -> str:
    unit = SHAPES[shape]
    if callable(unit):
        text = unit(size)
    else:
        per = len(unit.encode("utf-8"))
        text = unit * max(1, size // per)
    return text


def _steps(tokenizer) -> dict[str, Callable[[str], object]]:
    from models.sentence_scorer import encode_sentences
    from pipelines.faithfulness import check_sentences
    from pipelines.key_facts import key_facts
    from pipelines.report_steps import has_prose
    from pipelines.sections import split_sections
    from pipelines.sentence_selection import mmr_select
    from pipelines.sentences import split_sentences

    # Steps that take sentences get them precomputed (`prepare`), so their column is their own cost; the
    # splitting is the `sentences` column.
    def faithfulness(prepared):
        text, sents = prepared
        return check_sentences([s[:400] for s in sents[:5]] or [text[:400]], text)

    def tokenizer_step(prepared):
        return encode_sentences(tokenizer, prepared[1])

    def selection(prepared):
        sents = prepared[1]
        return mmr_select(sents, [0.0] * len(sents), 5, 1200)

    def impression(text):
        # The writer as `SummaryWriters.impression` calls it, given a labelling (the ConText labeller reads
        # short findings only) that puts one asserted finding in the middle of a one-sentence text.
        from models.chest_findings import NO_FINDING, OBSERVATIONS, Labelled, Mention
        from models.impression import ImpressionWriter

        mid = len(text) // 2
        mention = Mention("Pleural Effusion", text[mid:mid + 1], mid, mid + 1, 0, False, False, False)
        labels = {o: None for o in OBSERVATIONS} | {NO_FINDING: 0, "Pleural Effusion": 1}
        return ImpressionWriter().write(text, Labelled(text, ((0, len(text)),), (mention,), labels))

    def bullets(text):
        # the finance bullet writer as `argus summarize` calls it on the selected sentences; the worst
        # case is a whole text that splits into one sentence
        from models.summary_writers import SummaryWriters

        return SummaryWriters.bullets([text])

    return {
        "sentences": split_sentences,
        "sections": split_sections,
        "key_facts_finance": lambda t: key_facts(t, "finance"),
        "key_facts_medical": lambda t: key_facts(t, "medical"),
        "faithfulness": faithfulness,
        "tables": has_prose,
        "tokenizer": tokenizer_step,
        "selection": selection,
        "impression": impression,
        "bullets": bullets,
    }


PREPARED = ("faithfulness", "tokenizer", "selection")  # steps whose input is (text, sentence texts)


def time_step(fn: Callable, text) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn(text)
    return time.process_time() - c0, time.perf_counter() - w0


PROSE_LEAD = "Revenue grew strongly in the quarter and our margins improved again.\n"


def front_door(shapes: list[str], size: int, timeout_s: float, lead: str = "") -> dict:
    """Every shape as one record through `argus summarize` (extractive, output validation on). `lead`
    (e.g. one prose sentence) is put before each text, so that a shape with no prose of its own is not
    turned away by the prose check and reaches the summariser's text steps and model."""
    from pipelines.settings import get_settings

    limit = get_settings().summariser.max_document_bytes
    size = min(size, limit)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "hostile.jsonl", Path(tmp) / "out.jsonl"
        with src.open("w", encoding="utf-8") as fh:
            for s in shapes:
                text = lead + build(s, size - len(lead))
                while len(text.encode("utf-8")) > limit:
                    text = text[: len(text) * 9 // 10]
                fh.write(json.dumps({"id": s, "domain": "medical" if "impression" in s else "finance",
                                     "text": text}) + "\n")
        env = {**os.environ, "ARGUS_HOME": str(Path(tmp) / "home"), "HF_HUB_OFFLINE": "1"}
        argus = Path(sys.executable).parent / "argus"  # the console script: the front door as users run it
        cmd = [str(argus), "summarize", "--input", str(src), "--output", str(out),
               "--mode", "extractive", "--num-cpus", "2"]
        w0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
            rc = proc.returncode
            tail = (proc.stdout + proc.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            rc, tail = "timeout", ""
        wall = time.perf_counter() - w0
        rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    return {"size_bytes": size, "limit_bytes": limit, "rc": rc, "wall_s": wall, "tail": tail,
            "rows": {r["id"]: {"latency_ms": r.get("latency_ms"), "error": r.get("error"),
                               "error_stage": r.get("error_stage")} for r in rows}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=2.0, help="size of each shape, MB (10^6 bytes) of UTF-8")
    ap.add_argument("--shapes", default=None, help="comma-separated subset of the shapes")
    ap.add_argument("--steps", default=None, help="comma-separated subset of the steps")
    ap.add_argument("--front-door", action=argparse.BooleanOptionalAction, default=True,
                    help="also run every shape through `argus summarize` (default: on)")
    ap.add_argument("--front-door-shapes", default=",".join(FRONT_DOOR_SHAPES),
                    help="shapes sent through `argus summarize` (default: the pattern attacks; shapes of a million "
                         "tiny sentences mostly measure the model's windows)")
    ap.add_argument("--front-door-timeout", type=float, default=1800.0)
    ap.add_argument("--prose-lead", action=argparse.BooleanOptionalAction, default=True,
                    help="start each front-door record with one prose sentence (default: on; off: most hostile "
                         "shapes are refused at the prose check, in milliseconds)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from models.summariser import SHIPPED_CHECKPOINT
    from models.tokenizer import load_tokenizer

    console = Console(width=240)
    shapes = args.shapes.split(",") if args.shapes else list(SHAPES)
    steps = _steps(load_tokenizer(SHIPPED_CHECKPOINT))
    if args.steps:
        steps = {k: v for k, v in steps.items() if k in args.steps.split(",")}
    size = int(args.mb * 1_000_000)
    load = os.getloadavg()[0]
    figures: dict[str, dict[str, float]] = {}
    worst = 0.0
    table = Table(title=f"CPU seconds per MB, {args.mb:g} MB per shape (target <= {TARGET_S_PER_MB:g}; "
                        f"load {load:.1f} on {os.cpu_count()} cores)")
    table.add_column("shape")
    for st in steps:
        table.add_column(st, justify="right")
    for shape in shapes:
        text = build(shape, size)
        mb = len(text.encode("utf-8")) / 1e6
        figures[shape] = {}
        cells = []
        prepared = None
        for name, fn in steps.items():
            if name in PREPARED and prepared is None:
                from pipelines.sentences import split_sentences

                prepared = (text, [s.text for s in split_sentences(text)])
            cpu, wall = time_step(fn, prepared if name in PREPARED else text)
            figures[shape][name] = round(cpu / mb, 4)
            figures[shape][f"{name}_wall"] = round(wall / mb, 4)
            worst = max(worst, cpu / mb)
            style = "red" if cpu / mb > TARGET_S_PER_MB else ""
            cells.append(f"[{style}]{cpu / mb:.3f}[/{style}]" if style else f"{cpu / mb:.3f}")
        table.add_row(shape, *cells)
        console.print(f"  {shape}: " + " ".join(f"{k}={v}" for k, v in figures[shape].items() if not k.endswith("_wall")),
                      highlight=False)
    console.print(table)
    console.print(f"worst step: {worst:.3f} s/MB (target {TARGET_S_PER_MB:g})")
    result: dict = {"mb": args.mb, "load_avg_1m": load, "cores": os.cpu_count(), "steps_s_per_mb": figures,
                    "worst_s_per_mb": worst}

    if args.front_door:
        fd_shapes = [x for x in args.front_door_shapes.split(",") if x in SHAPES]
        console.print(f"front door: {len(fd_shapes)} records through `argus summarize` ...")
        fd = front_door(fd_shapes, size, args.front_door_timeout, PROSE_LEAD if args.prose_lead else "")
        result["front_door"] = fd
        t = Table(title=f"`argus summarize` (extractive, small checkpoint, output validation on), "
                        f"{fd['size_bytes'] / 1e6:g} MB per record (limit {fd['limit_bytes'] / 1e6:g} MB)")
        for c in ("shape", "summariser s/MB", "error stage", "error"):
            t.add_column(c)
        mb = fd["size_bytes"] / 1e6
        for shape in fd_shapes:
            row = fd["rows"].get(shape, {})
            lat = row.get("latency_ms")
            t.add_row(shape, f"{lat / 1000 / mb:.3f}" if lat is not None else "-", str(row.get("error_stage") or "-"),
                      str(row.get("error") or "-")[:60])
        console.print(t)
        console.print(f"whole run: rc {fd['rc']}, {fd['wall_s']:.1f} s wall for {len(fd_shapes)} records "
                      f"({fd['wall_s'] / (mb * len(fd_shapes)):.3f} s/MB including Ray start-up and model load)")
        if fd["rc"] != 0:
            console.print(fd["tail"], markup=False)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if worst <= TARGET_S_PER_MB else 1


if __name__ == "__main__":
    sys.exit(main())
