"""The FraudScorer Serve deployment: the fraud scoring core (services/fraud_scoring.py: model holder,
stream state hook, registry champion, callers kept apart) hosted on its own replicas, with dynamic
batching (`@serve.batch`) for single `score` calls. The Ingress sends it batch requests
(`{"transactions": [...]}`) and, when `score_in_ingress` is off, its gathered single-transaction
requests too; by default the Ingress scores single transactions itself with the same core.

`user_config` (hot-reconfigurable from infra/serve.yaml without a restart): max_batch_size,
batch_wait_timeout_s, alert_threshold, review_threshold, explain_top_k (reasons per flagged score).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from pipelines.contracts import FraudScore, Transaction
from services.fraud_scoring import FraudScoring
from services.loading import ModelNotReady


@serve.deployment(name="FraudScorer", max_ongoing_requests=256)
class FraudScorerDeployment(FraudScoring):
    def reconfigure(self, config: dict[str, Any]) -> None:
        if "max_batch_size" in config:
            self.score_batch.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self.score_batch.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))
        self.configure(config)

    def check_health(self) -> None:
        # A failed load keeps the replica up (it answers ready() with the reason); nothing to check.
        return None

    async def score(self, transaction: Transaction, history: list[Transaction] | None = None) -> tuple[FraudScore, int]:
        """Score one transaction; returns the score and the size of the batch it was scored in."""
        await self.model.get(wait_s=0.0)
        return await self.score_batch((transaction, tuple(history or ())))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def score_batch(self, items: list[tuple[Transaction, tuple[Transaction, ...]]]) -> list[tuple[FraudScore, int]]:
        scores, size = await self.score_many(items, independent=True)
        return [(s, size) for s in scores]


__all__ = ["FraudScorerDeployment", "ModelNotReady"]
