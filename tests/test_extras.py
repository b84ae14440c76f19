"""Optional dependencies: the production install (no extras) imports and serves; a command that needs
an extra says which one, in one line, instead of a ModuleNotFoundError traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from models.errors import MissingExtraError
from models.extras import require
from tests.fraud_fixtures import write_handbook_csv

OPTIONAL = ("lightgbm", "sklearn", "rouge_score", "matplotlib", "peft", "httpx", "pytest", "hypothesis")


def _block(monkeypatch, *names: str) -> None:
    for name in names:  # a None entry makes `import name` raise ModuleNotFoundError(name=name)
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra(monkeypatch):
    _block(monkeypatch, "sklearn")
    with pytest.raises(MissingExtraError, match=r"scikit-learn.*pip install 'argus\[eval\]'"):
        require("sklearn.metrics", "eval", "argus fraud replay")
    assert require("json", "eval", "x").dumps([1]) == "[1]"  # present modules are returned


def test_a_broken_dependency_of_an_extra_is_not_reported_as_the_extra(monkeypatch):
    """If the extra is installed but one of *its* imports is missing, the real error surfaces."""
    import importlib

    def fake(name, *a, **k):
        raise ModuleNotFoundError("No module named 'scipy._lib'", name="scipy._lib")

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ModuleNotFoundError) as info:
        require("sklearn.metrics", "eval", "x")
    assert not isinstance(info.value, MissingExtraError)


def test_cli_fraud_replay_without_the_eval_extra_fails_in_one_line(monkeypatch, tmp_path):
    from services.cli import app

    hb = write_handbook_csv(tmp_path / "hb.csv.gz", n_customers=10, n_terminals=10, days=3)
    _block(monkeypatch, "sklearn")
    res = CliRunner().invoke(app, ["fraud", "replay", "--input", str(hb), "--output", str(tmp_path / "o.parquet")])
    assert res.exit_code != 0
    assert isinstance(res.exception, MissingExtraError)
    assert "pip install 'argus[eval]'" in str(res.exception)


def test_runtime_modules_import_without_any_extra():
    """What the image and the manifests run (REST app, both streams, store, CLI) imports none of the
    train / eval / dev packages: checked in a fresh interpreter that cannot import them."""
    code = textwrap.dedent(f"""
        import sys
        for name in {OPTIONAL!r}:  # as if not installed: import fails, importlib.util.find_spec is None
            sys.modules[name] = None
        import services.cli, services.app, services.ingress, services.fraud_stream_actor
        import services.report_stream_runner, services.demo, pipelines.store, pipelines.fraud_stream
        import pipelines.report_stream, models.summary_writers, models.fraud_scorer
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
