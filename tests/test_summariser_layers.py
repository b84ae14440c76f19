"""The summariser's model side imports nothing from pipelines/ (DESIGN.md, Layers): the document
pipeline lives in pipelines/report_summariser.py. Fraud modules are outside this check for now."""

from __future__ import annotations

import ast
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "models"
CHECKED = ["summariser.py", "train_summariser.py", "sentence_scorer.py", "sentence_selector.py", "summary_writers.py",
           "impression.py", "chest_findings.py", "finance_bullets.py", "fit_writers.py", "errors.py", "tokenizer.py",
           "checkpoint.py", "engine/config.py", "engine/scheduler.py"]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_summariser_models_import_nothing_from_pipelines_or_services():
    bad = {rel: [m for m in _imports(MODELS / rel) if m.split(".")[0] in ("pipelines", "services")] for rel in CHECKED}
    assert not {k: v for k, v in bad.items() if v}, bad
