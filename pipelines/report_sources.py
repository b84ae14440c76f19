"""Reading reports for the batch job: a folder of .txt/.md, JSONL (optionally gzipped), Parquet or CSV.

Every input row becomes a `SourceRecord` that knows where it came from (`source` path and
`position`: a 1-based line or row number, or the file's index in a folder), so a record that cannot
be used is dead-lettered with its position and nothing is lost. Reading never raises for one bad
record: a file that is not UTF-8 text, a line that is not JSON, a row without an id gets
`error=<reason>` and the rest of the input carries on.

Column names are normalised: `report_id` or `id` -> id, `text` or `document` -> text; `domain` and
`title` are kept; anything else is an extra field that the output keeps next to the summary.

Parquet and CSV are scanned lazily with polars: the ids are read first (projection only) so that a
resumed run skips finished reports without reading their text, and the rest is collected in slices
(`chunk_rows`), so memory follows the chunk, not the file. JSONL is read line by line in Python,
because one malformed line must become one dead letter, not a failed scan.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import ArgusError

ID_COLUMNS = ("report_id", "id")
TEXT_COLUMNS = ("text", "document")
KNOWN = {*ID_COLUMNS, *TEXT_COLUMNS, "domain", "title", "schema_version"}
TEXT_SUFFIXES = (".txt", ".md")


class SourceError(ArgusError):
    """The input as a whole cannot be read (missing path, unknown format, unreadable file)."""

    exit_code = 7


@dataclass
class SourceRecord:
    source: str  # the file path
    position: int  # 1-based line / row number, or the file's index in a folder
    report_id: str | None
    text: str | None
    domain: str | None = None
    title: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes | str | None = None  # what to keep in a dead letter when the record fails
    error: str | None = None  # set when the record could not even be read

    @property
    def key(self) -> str:
        """The id, or a stand-in naming the position for a record without one."""
        return self.report_id or f"{Path(self.source).name}#{self.position}"


def input_format(path: Path) -> str:
    if path.is_dir():
        return "dir"
    name = path.name.lower()
    for fmt, suffixes in (("jsonl", (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json.gz")),
                          ("parquet", (".parquet", ".pq")), ("csv", (".csv", ".csv.gz")), ("text", TEXT_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    raise SourceError(f"unknown input format for {path}: use a folder of .txt/.md, .jsonl(.gz), .parquet or .csv")


def decode_text(data: bytes) -> tuple[str | None, str | None]:
    """(text, None) for UTF-8 text, else (None, reason). NUL bytes mark a binary file."""
    nul = data.find(b"\x00", 0, 8192)
    if nul >= 0:
        return None, f"binary content (NUL byte at offset {nul}), not a text document"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text: invalid byte 0x{data[exc.start]:02x} at offset {exc.start}"


def from_mapping(data: dict[str, Any], source: str, position: int, raw: bytes | str | None) -> SourceRecord:
    rid = next((data[c] for c in ID_COLUMNS if data.get(c) not in (None, "")), None)
    text = next((data[c] for c in TEXT_COLUMNS if data.get(c) is not None), None)
    extra = {k: v for k, v in data.items() if k not in KNOWN}
    rec = SourceRecord(source=source, position=position, report_id=None if rid is None else str(rid),
                       text=text if isinstance(text, str) or text is None else str(text),
                       domain=None if data.get("domain") is None else str(data["domain"]),
                       title=str(data.get("title") or ""), extra=extra, raw=raw)
    if rec.report_id is None:
        rec.error = "no id: the record has neither 'id' nor 'report_id'"
    elif text is None:
        rec.error = "no document: the record has neither 'document' nor 'text'"
    return rec


class ReportSource:
    """One input (file or folder). `count()` for the progress bar, `ids()` to resume,
    `records(skip)` to read (in input order) all but the ids in `skip`."""

    def __init__(self, path: str | Path, chunk_rows: int = 256):
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"input not found: {self.path}")
        self.format = input_format(self.path)
        self.chunk_rows = chunk_rows

    # --- folder of text files ---------------------------------------------------------------------

    def _files(self) -> list[Path]:
        if self.format == "text":
            return [self.path]
        files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise SourceError(f"no .txt or .md files in {self.path}")
        return files

    @staticmethod
    def _sidecar(path: Path) -> dict[str, Any]:
        """<name>.json next to <name>.txt (written by `argus simulate reports --output DIR`)."""
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
                return meta if isinstance(meta, dict) else {}
            except (OSError, ValueError):
                return {}
        return {}

    def _file_id(self, path: Path) -> str:
        return str(self._sidecar(path).get("report_id") or path.stem)

    def _file_record(self, i: int, path: Path) -> SourceRecord:
        meta = self._sidecar(path)
        rid = str(meta.get("report_id") or path.stem)
        try:
            data = path.read_bytes()
        except OSError as exc:
            return SourceRecord(str(path), i, rid, None, error=f"cannot read file: {exc.strerror or exc}")
        text, error = decode_text(data)
        extra = {k: v for k, v in meta.items() if k not in KNOWN}
        return SourceRecord(str(path), i, rid, text, domain=meta.get("domain"), title=str(meta.get("title") or ""),
                            extra=extra, raw=data if error else None, error=error)

    # --- JSONL ------------------------------------------------------------------------------------

    def _open_lines(self):
        opener: Callable[..., Any] = gzip.open if self.path.name.lower().endswith(".gz") else open
        return opener(self.path, "rb")

    def _jsonl(self, skip: set[str], ids_only: bool = False) -> Iterator[SourceRecord]:
        with self._open_lines() as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                text, error = decode_text(line)
                if error:
                    yield SourceRecord(str(self.path), n, None, None, raw=line, error=error)
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield SourceRecord(str(self.path), n, None, None, raw=line, error=f"malformed json: {exc}")
                    continue
                if not isinstance(data, dict):
                    yield SourceRecord(str(self.path), n, None, None, raw=line,
                                       error=f"malformed json: expected an object, got {type(data).__name__}")
                    continue
                rec = from_mapping(data, str(self.path), n, line)
                if rec.report_id in skip:
                    continue
                if ids_only:
                    rec.text, rec.raw = None, None
                yield rec

    # --- Parquet / CSV (lazy polars) --------------------------------------------------------------

    def _scan(self):
        import polars as pl

        try:
            if self.format == "parquet":
                lf = pl.scan_parquet(self.path)
            else:
                lf = pl.scan_csv(self.path, infer_schema=False)  # every column as text: ids stay ids
            names = lf.collect_schema().names()
        except Exception as exc:  # polars raises several error types for unreadable files
            raise SourceError(f"cannot read {self.path}: {' '.join(str(exc).split())[:300]}") from None
        id_col = next((c for c in ID_COLUMNS if c in names), None)
        text_col = next((c for c in TEXT_COLUMNS if c in names), None)
        if id_col is None or text_col is None:
            raise SourceError(f"{self.path}: needs an id column ({' or '.join(ID_COLUMNS)}) and a text column "
                              f"({' or '.join(TEXT_COLUMNS)}); found {names}")
        return lf.with_row_index("__row", offset=1), id_col, names

    def _table(self, skip: set[str]) -> Iterator[SourceRecord]:
        import polars as pl

        lf, id_col, names = self._scan()
        if skip:
            lf = lf.filter(~pl.col(id_col).cast(pl.String).is_in(list(skip)) | pl.col(id_col).is_null())
        start = 0
        while True:
            chunk = lf.slice(start, self.chunk_rows).collect()
            if chunk.height == 0:
                return
            for row in chunk.iter_rows(named=True):
                n = row.pop("__row")
                data = {k: v for k, v in row.items() if v is not None or k in KNOWN}
                yield from_mapping(data, str(self.path), int(n), json.dumps(row, default=str))
            start += self.chunk_rows

    # --- public -----------------------------------------------------------------------------------

    def count(self) -> int:
        """How many records the input holds (for the progress bar)."""
        if self.format in ("dir", "text"):
            return len(self._files())
        if self.format == "jsonl":
            with self._open_lines() as fh:
                return sum(1 for line in fh if line.strip())
        import polars as pl

        lf, _, _ = self._scan()
        return int(lf.select(pl.len()).collect().item())

    def ids(self) -> list[str]:
        """Every id in the input, reading as little as possible (ids only for Parquet/CSV)."""
        if self.format in ("dir", "text"):
            return [self._file_id(p) for p in self._files()]
        if self.format == "jsonl":
            return [r.report_id for r in self._jsonl(set(), ids_only=True) if r.report_id]
        import polars as pl

        lf, id_col, _ = self._scan()
        return [str(v) for v in lf.select(pl.col(id_col).cast(pl.String)).collect().to_series().drop_nulls()]

    def records(self, skip: set[str] | None = None) -> Iterator[SourceRecord]:
        skip = skip or set()
        if self.format in ("dir", "text"):
            for i, path in enumerate(self._files(), 1):
                if self._file_id(path) not in skip:
                    yield self._file_record(i, path)
        elif self.format == "jsonl":
            yield from self._jsonl(skip)
        else:
            yield from self._table(skip)
