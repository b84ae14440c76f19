"""The fitted light parts of the summariser, loaded from one folder (models/checkpoints/summary-writers).

    writers = SummaryWriters.load(directory)       # missing folder or files: defaults, nothing fitted
    writers.impression(findings)                   # radiology impression lines (models/impression.py)
    writers.selectors["finance"].score(sentences)  # oracle-trained sentence selector per domain
    writers.budget.predict("medical", n_words)     # fitted length budget

`version` names the folder's fit (writers.json) and becomes part of the summariser's model_version,
so a refit makes resumable batch runs redo their reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from models.impression import ImpressionLine, ImpressionWriter
from models.sentence_selector import CentralityLead, LengthBudget, SentenceSelector


@dataclass
class SummaryWriters:
    impression_writer: ImpressionWriter = field(default_factory=ImpressionWriter)
    selectors: dict[str, SentenceSelector | CentralityLead] = field(default_factory=dict)
    budget: LengthBudget = field(default_factory=lambda: LengthBudget({}))
    version: str = ""

    @classmethod
    def load(cls, directory: str | Path | None) -> "SummaryWriters":
        if directory is None or not Path(directory).is_dir():
            return cls()
        d = Path(directory)
        meta = json.loads((d / "writers.json").read_text()) if (d / "writers.json").is_file() else {}
        selectors = {dom: s for dom in ("finance", "medical")
                     if (s := SentenceSelector.load(d, dom) or CentralityLead.load(d, dom)) is not None}
        return cls(ImpressionWriter.load(d), selectors, LengthBudget.load(d), str(meta.get("version", "")))

    @property
    def impression_version(self) -> str:
        return self.impression_writer.version

    @staticmethod
    def is_radiograph(text: str) -> bool:
        from models.chest_findings import is_chest_radiograph

        return is_chest_radiograph(text)

    def impression(self, findings: str):
        """(lines, labelled findings)."""
        from models.chest_findings import analyse

        labelled = analyse(findings)
        lines: list[ImpressionLine] = self.impression_writer.write(findings, labelled)
        return lines, labelled

    @staticmethod
    def bullets(sentences: list[str]) -> list[str]:
        """Each earnings-call sentence as an analyst bullet (figures verbatim; models/finance_bullets.py)."""
        from models.finance_bullets import analyst_bullet, call_context

        ctx = call_context(sentences)
        return [analyst_bullet(s, ctx) for s in sentences]
