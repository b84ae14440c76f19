"""End to end: `argus demo` on the embedded default (tansu, local Ray, shipped models, SQLite)."""

import pytest
from rich.console import Console

from sqlalchemy import func, select

from pipelines.settings import get_settings
from pipelines.store import Store, fraud_scores
from services.demo import MALFORMED, print_demo, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_lands_every_record_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGUS_HOME", str(tmp_path))
    result = run_demo(transactions=600, rate=2000, reports=2, seed=3, home=tmp_path / "demo")
    stats = result.store_stats
    assert result.produced == 600
    assert stats["fraud_scores"] == 600  # every valid transaction scored exactly once
    assert stats["dead_letters"] == len(MALFORMED)  # every malformed record dead-lettered with a reason
    assert stats["report_summaries"] == 2
    with Store.from_url(f"sqlite:///{tmp_path / 'demo' / 'demo.db'}").engine.connect() as conn:
        high = conn.execute(select(func.count()).select_from(fraud_scores)
                            .where(fraud_scores.c.score >= get_settings().fraud.alert_threshold)).scalar_one()
    assert stats["alerts"] == high  # alerts consistent with scores
    assert all(s["summary"].strip() for s in result.summaries)
    console = Console(record=True, width=120)
    print_demo(result, console)
    assert "transactions scored" in console.export_text()
