"""The batch summarisation job end to end: real local Ray (summariser actor), real stores, small
generated inputs in every supported format, bad input, resuming."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from pipelines.simulate_reports import finance_report, medical_report

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # Ray start + model load: ~15 s idle

PROSE = ("Revenue grew 12% to $4.1 billion in the third quarter. Operating margin improved to 18.5% from 16.2%. "
         "Management raised full-year guidance to $16 billion. Credit losses remained low at 0.4% of loans. "
         "The board approved a dividend of $0.25 per share. Headcount was broadly flat year over year.")


@pytest.fixture(scope="module")
def pool(ray_local):
    from services.summarize_actor import SummarizerPool

    p = SummarizerPool(None, replicas=1, num_cpus=0)  # shipped checkpoint, else tiny random weights
    yield p
    p.close()


@pytest.fixture
def settings():
    from pipelines.settings import Settings

    s = Settings()
    return s.model_copy(update={"summariser": s.summariser.model_copy(update={"chunk_reports": 4})})


def _reports(n: int) -> list[dict]:
    out = []
    for i in range(n):
        r = finance_report(i, words=120) if i % 2 == 0 else medical_report(i)
        out.append({"id": r.report_id, "domain": r.domain.value, "document": r.text, "batch": "b1", "n": i})
    return out


def _write_jsonl(path: Path, rows: list[dict], extra_lines: list[bytes] = ()) -> Path:
    with (gzip.open(path, "wb") if path.suffix == ".gz" else path.open("wb")) as fh:
        for row in rows:
            fh.write(json.dumps(row).encode() + b"\n")
        for line in extra_lines:
            fh.write(line + b"\n")
    return path


BAD_LINES = [
    json.dumps({"id": "empty", "domain": "finance", "document": "   \n "}).encode(),
    b"{not json",
    json.dumps({"id": "legal-1", "domain": "legal", "document": PROSE}).encode(),
    json.dumps({"id": "tables", "domain": "finance",
                "document": "| 2021 | 2022 |\n|------|------|\n| 1.2 | 3.4 |\n| 5.6 | 7.8 |"}).encode(),
    b'{"id": "latin1", "domain": "finance", "document": "caf\xe9 revenue grew"}',
    json.dumps({"id": "huge", "domain": "finance", "document": "Revenue grew strongly. " * 450_000}).encode(),  # > 10 MB
    json.dumps({"document": PROSE, "domain": "finance"}).encode(),
]
BAD_STAGES = {"empty": "decode", "legal-1": "decode", "tables": "validate_input", "huge": "decode"}


def _check_spans(row: dict, text: str) -> None:
    import re

    assert row["sentences"], row
    source_only = json.loads(row["faithfulness"]).get("extractive_source_only")
    for sent in row["sentences"]:
        assert sent["spans"], sent
        if source_only:
            assert any(text[s["start"]:s["end"]] == sent["text"] for s in sent["spans"]), sent
        else:  # analyst bullets / impressions: the span is the source they restate, figures verbatim
            figures = re.findall(r"\d[\d,.]*\d|\d", re.sub(r"^q[1-4] ", "", sent["text"]))
            assert all(any(f in text[s["start"]:s["end"]] for s in sent["spans"]) for f in figures), sent
    for fact in row["key_facts"]:
        for s in fact["spans"]:
            assert 0 <= s["start"] < s["end"] <= len(text)
    assert row["spans"] == [s for sent in row["sentences"] for s in sent["spans"]]


def test_jsonl_gz_with_bad_records_to_store_and_output(tmp_path, pool, settings, store_url):
    from pipelines.report_batch import run_batch
    from pipelines.store import Store

    good = _reports(4)
    src = _write_jsonl(tmp_path / "in.jsonl.gz", good, BAD_LINES)
    out = tmp_path / "out.jsonl"
    result = run_batch(src, out, store_url=store_url, settings=settings, pool=pool)

    assert (result.total, result.summarised, result.failed) == (len(good) + len(BAD_LINES), len(good), len(BAD_LINES))
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == len(good) + len(BAD_LINES)
    for rec in good:
        row = rows[rec["id"]]
        assert row["error"] is None and row["model_version"] == pool.model_version
        assert row["batch"] == "b1" and row["n"] == rec["n"]  # input fields are kept
        assert json.loads(row["faithfulness"])["figures_checked"] >= 0
        _check_spans(row, rec["document"])
    for rid, stage in BAD_STAGES.items():
        assert rows[rid]["error_stage"] == stage and rows[rid]["summary"] is None, rows[rid]
    assert "oversized" in rows["huge"]["error"] and "max_document_bytes" in rows["huge"]["error"]
    assert "domain" in rows["legal-1"]["error"] and "empty" in rows["empty"]["error"]
    reasons = [r["error"] for r in rows.values() if r["error"]]
    assert any("malformed json" in e for e in reasons) and any("not UTF-8" in e for e in reasons)
    assert any("no id" in e for e in reasons)

    with Store.from_url(store_url) as store:
        assert store.count("report_summaries") == len(good)
        letters = store.dead_letter_rows(source=str(src))
        assert len(letters) == len(BAD_LINES)
        assert {d["stage"] for d in letters} == {"read", "decode", "validate_input"}
        assert all(d["reason"] and d["offset"] for d in letters)
        run = store.get_run(result.run_id)
        assert run["status"] == "ok" and run["counts"]["summarised"] == len(good)

        # A rerun skips what is done (same model version) and records no second dead letter.
        again = run_batch(src, out, store_url=store_url, settings=settings, pool=pool)
        assert (again.skipped, again.summarised, again.failed) == (len(good), 0, len(BAD_LINES))
        assert store.count("dead_letters") == len(BAD_LINES)
        assert store.count("report_summaries") == len(good)
    assert len(out.read_text().splitlines()) == len(good) + len(BAD_LINES)  # one row per id after the merge


def test_folder_input_parquet_output_resumes_with_limit(tmp_path, pool, settings):
    from pipelines.report_batch import run_batch

    folder = tmp_path / "reports"
    folder.mkdir()
    good = _reports(4)
    for i, rec in enumerate(good):
        suffix = ".md" if i % 2 else ".txt"
        (folder / f"{rec['id']}{suffix}").write_text(rec["document"])
        (folder / f"{rec['id']}.json").write_text(json.dumps({"domain": rec["domain"], "title": f"t{i}"}))
    (folder / "scan.txt").write_bytes(b"%PDF-1.4\x00\x01\x02binary")
    (folder / "notes.txt").write_text(PROSE)  # no sidecar: --domain supplies it
    out = tmp_path / "out.parquet"

    first = run_batch(folder, out, settings=settings, pool=pool, limit=3, domain="finance")
    assert first.summarised + first.failed == 3 and not (tmp_path / "out.parquet.parts").exists()
    second = run_batch(folder, out, settings=settings, pool=pool, domain="finance")
    frame = pl.read_parquet(out)
    assert frame.height == 6 and frame["id"].n_unique() == 6
    assert second.skipped == first.summarised
    ok = frame.filter(pl.col("error").is_null())
    assert set(ok["id"]) == {r["id"] for r in good} | {"notes"}
    scan = frame.filter(pl.col("id") == "scan").row(0, named=True)
    assert scan["error_stage"] == "read" and "binary" in scan["error"]
    notes = ok.filter(pl.col("id") == "notes").row(0, named=True)
    assert notes["domain"] == "finance"
    _check_spans(notes, PROSE)


def test_parquet_and_csv_inputs(tmp_path, pool, settings):
    from pipelines.report_batch import run_batch

    good = _reports(2)
    pq = tmp_path / "in.parquet"
    pl.DataFrame([{"report_id": r["id"], "domain": r["domain"], "text": r["document"], "batch": r["batch"]}
                  for r in good] + [{"report_id": "blank", "domain": "medical", "text": "", "batch": "b2"}]).write_parquet(pq)
    csv = tmp_path / "in.csv"
    pl.DataFrame([{"id": "c1", "document": PROSE, "domain": "finance"}]).write_csv(csv)

    res_pq = run_batch(pq, tmp_path / "a.jsonl", settings=settings, pool=pool)
    assert (res_pq.summarised, res_pq.failed) == (2, 1)
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert {r["batch"] for r in rows} == {"b1", "b2"}
    res_csv = run_batch(csv, tmp_path / "b.parquet", settings=settings, pool=pool)
    assert (res_csv.summarised, res_csv.failed) == (1, 0)


def test_unknown_input_and_missing_columns_are_clear_errors(tmp_path, pool, settings):
    from pipelines.report_batch import run_batch
    from pipelines.report_sources import SourceError

    (tmp_path / "x.xlsx").write_text("nope")
    with pytest.raises(SourceError, match="unknown input format"):
        run_batch(tmp_path / "x.xlsx", tmp_path / "o.jsonl", settings=settings, pool=pool)
    pq = tmp_path / "cols.parquet"
    pl.DataFrame({"name": ["a"], "body": ["b"]}).write_parquet(pq)
    with pytest.raises(SourceError, match="needs an id column"):
        run_batch(pq, tmp_path / "o.jsonl", settings=settings, pool=pool)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "x.xlsx").write_text("nope")
    argus = [sys.executable, "-c", "from services.cli import main; main()"]
    bad = subprocess.run([*argus, "summarize", "--input", str(tmp_path / "x.xlsx"), "--output", str(tmp_path / "o.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 7 and "unknown input format" in bad.stderr and "Traceback" not in bad.stderr
    nowhere = subprocess.run([*argus, "summarize", "--input", str(tmp_path / "x.xlsx")], capture_output=True, text=True,
                             timeout=120)
    assert nowhere.returncode != 0 and "nowhere to write" in nowhere.stderr


def test_resume_is_keyed_on_id_and_content_and_survives_a_line_cut_by_a_crash(tmp_path, pool, settings):
    """A rerun skips a report only if the same model version summarised the SAME text (a report
    whose text changed is done again, in the output and in the store), and a last line cut short by
    a crash neither breaks the file nor swallows the next row."""
    from pipelines.report_batch import run_batch
    from pipelines.store import Store

    store_url = f"sqlite:///{tmp_path}/resume.db"
    good = _reports(3)
    src = _write_jsonl(tmp_path / "in.jsonl", good)
    out = tmp_path / "out.jsonl"
    first = run_batch(src, out, store_url=store_url, settings=settings, pool=pool)
    assert first.summarised == 3
    with out.open("ab") as fh:
        fh.write(b'{"id": "half-written", "summary": "cut sho')  # the crash, mid-line

    changed = [dict(good[0]), *good[1:]]
    changed[0]["document"] = PROSE + " The quarter closed with 7,400 employees."
    _write_jsonl(src, changed)
    second = run_batch(src, out, store_url=store_url, settings=settings, pool=pool)
    assert (second.skipped, second.summarised) == (2, 1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line parses
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in good)
    import hashlib

    by_id = {r["id"]: r for r in rows}
    want = hashlib.sha256(changed[0]["document"].encode()).hexdigest()
    assert by_id[good[0]["id"]]["content_hash"] == want
    with Store.from_url(store_url) as store:
        assert store.summaries_done([good[0]["id"]], pool.model_version) == {good[0]["id"]: want}
