"""The batch job's output file: JSONL or Parquet, written as the job goes and resumable.

* `.jsonl`: rows are appended (and flushed) per batch, so an interrupted run keeps what it did.
* `.parquet`: each batch is a part file in `<output>.parts/`; `finalise()` merges the previous
  output and the parts into `<output>` (written to a temporary name, then renamed) and removes the
  parts. An interrupted run leaves its parts, which the next run reads and merges.

`done(model_version)` gives the ids already summarised without error by that model version, in
the output and in leftover parts, with the content hash they were summarised from, so a rerun
skips them unless their text changed. A JSONL line cut short by a crash is cut off before the next
append (it would otherwise glue itself to the next row). `finalise()` keeps one row per id (the
last one written): a report that failed before and succeeds now is not listed twice.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.report_sources import SourceError


def _schema() -> dict[str, Any]:
    import polars as pl

    span = pl.Struct({"start": pl.Int64, "end": pl.Int64})
    return {
        "id": pl.String, "domain": pl.String, "summary": pl.String,
        "sentences": pl.List(pl.Struct({"text": pl.String, "spans": pl.List(span)})),
        "key_facts": pl.List(pl.Struct({"kind": pl.String, "text": pl.String, "spans": pl.List(span)})),
        "spans": pl.List(span), "model_version": pl.String, "mode": pl.String, "latency_ms": pl.Float64,
        "faithfulness": pl.String, "error": pl.String, "error_stage": pl.String, "source": pl.String,
        "position": pl.Int64, "content_hash": pl.String,
    }


class SummaryOutput:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        name = self.path.name.lower()
        if name.endswith(".jsonl"):
            self.format = "jsonl"
        elif name.endswith(".parquet"):
            self.format = "parquet"
        else:
            raise SourceError(f"unknown output format for {self.path}: use .jsonl or .parquet")
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.written = 0
        self._part = 0
        self._repaired = False

    # --- reading back -----------------------------------------------------------------------------

    def _existing_frames(self) -> list[Any]:
        import polars as pl

        frames = []
        if self.format == "parquet":
            if self.path.is_file():
                frames.append(pl.read_parquet(self.path))
            if self.parts.is_dir():
                frames.extend(pl.read_parquet(p) for p in sorted(self.parts.glob("part-*.parquet")))
        return frames

    def _jsonl_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if not self.path.is_file():
            return rows
        with self.path.open("rb") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by a crash: its report is simply redone
                    continue
        return rows

    def done(self, model_version: str) -> dict[str, str | None]:
        """id -> content_hash of the rows summarised without error by `model_version` (the last row of
        an id counts; None for rows written before hashes were kept)."""
        import polars as pl

        done: dict[str, str | None] = {}
        if self.format == "jsonl":
            for r in self._jsonl_rows():
                if r.get("model_version") == model_version and r.get("error") is None:
                    done[str(r.get("id"))] = r.get("content_hash")
                else:
                    done.pop(str(r.get("id")), None)
            return done
        for frame in self._existing_frames():
            if not {"id", "model_version", "error"} <= set(frame.columns):
                continue
            ok = frame.filter((pl.col("model_version") == model_version) & pl.col("error").is_null())
            hashes = ok.get_column("content_hash").to_list() if "content_hash" in ok.columns else [None] * ok.height
            done.update(zip(ok.get_column("id").cast(pl.String).to_list(), hashes))
        return done

    def done_ids(self, model_version: str) -> set[str]:
        return set(self.done(model_version))

    def _repair_tail(self) -> None:
        """Cut a last line left without its newline by a crash (it is not a row, and the next append
        would glue itself to it)."""
        if self._repaired or not self.path.is_file():
            self._repaired = True
            return
        with self.path.open("rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size:
                fh.seek(max(0, size - 1))
                if fh.read(1) != b"\n":
                    fh.seek(0)
                    data = fh.read()
                    fh.truncate(data.rfind(b"\n") + 1)
        self._repaired = True

    # --- writing ----------------------------------------------------------------------------------

    @staticmethod
    def _frame(rows: list[dict[str, Any]]):
        import polars as pl

        schema = _schema()
        return pl.DataFrame(rows, schema_overrides={k: v for k, v in schema.items() if any(k in r for r in rows)},
                            infer_schema_length=None)

    def append(self, rows: Iterable[dict[str, Any]]) -> int:
        rows = list(rows)
        if not rows:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "jsonl":
            self._repair_tail()
            with self.path.open("ab") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        else:
            self.parts.mkdir(parents=True, exist_ok=True)
            while (self.parts / f"part-{self._part:06d}.parquet").exists():
                self._part += 1
            tmp = self.parts / f".tmp-{self._part:06d}.parquet"
            self._frame(rows).write_parquet(tmp)
            tmp.rename(self.parts / f"part-{self._part:06d}.parquet")
        self.written += len(rows)
        return len(rows)

    def finalise(self) -> int:
        """Merge and de-duplicate (last row per id wins); returns the rows in the final output."""
        import polars as pl

        if self.format == "jsonl":
            by_id = {str(r.get("id")): r for r in self._jsonl_rows()}  # last row per id wins
            if not by_id:
                return 0
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with tmp.open("wb") as fh:
                for row in by_id.values():
                    fh.write(json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n")
            tmp.replace(self.path)
            return len(by_id)
        frames = self._existing_frames()
        if not frames:
            return 0
        merged = pl.concat(frames, how="diagonal_relaxed").unique(subset=["id"], keep="last", maintain_order=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        merged.write_parquet(tmp)
        tmp.replace(self.path)
        if self.parts.is_dir():
            shutil.rmtree(self.parts)
        return merged.height
