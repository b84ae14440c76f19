"""The fraud scoring core that serves REST: one model holder, one scoring thread, the stream's state
read-only. Two hosts use this one implementation: the FraudScorer deployment
(services/fraud_deployment.py: `@serve.batch`, batch requests, other callers) and the Ingress, which
by default scores single-transaction requests in its own replica with it (no second Ray hop).

State hook: the scorer keeps a `FraudState` (per-customer / per-terminal history). With
`state_snapshot` set (a file the stream job writes with `FraudState.save`, or
`store://<group>/<topic>`: the stream's per-partition snapshots in the store), it is loaded at start
and re-read every `state_refresh_s` seconds when it changed (on the scoring thread, between
batches), so known customers are scored with the stream job's context. Without it the state starts
empty. REST scoring never writes to this state: the stream job owns it, and a synchronous lookup
must not change what the stream sees. A request may carry `history` (recent transactions of that
customer); it is scored against a private copy of the state with that history added, so it never
leaks into other requests.

Callers are kept apart: a batch gathered from many requests (`score_many(..., independent=True)`)
scores every transaction against the state as it was before the batch, read-only, plus that
request's own history: never with another request's transactions. Only the transactions of one
request (`{"transactions": [...]}`) see each other, in order. With a `store_url`, the scorer
creates/upgrades the store schema when it loads.

Model registry: with a `store_url` and `registry_poll_s` > 0 (and no pinned `checkpoint`), it serves
the registry's champion (pipelines/model_holder.py): looked up every `registry_poll_s` seconds on the
scoring thread, before a batch, and loaded there, so a batch is scored by one model version and no
request is lost or answered twice across a promotion. A champion that does not load leaves the old
model serving; `ready()` says so (`registry_error`).

Where a batch is scored: the FraudScorer deployment scores on its one scoring thread (its event loop
keeps taking calls meanwhile); the Ingress scores `inline`, on its event loop, because there a thread
only fought the loop for the GIL (more CPU a request, smaller batches): while a batch scores, the
next one gathers. Either way the state snapshot and the registry are read on the scoring thread,
between batches, never during one.

The model loads in the background (services/loading.py): until it has, `score_many` raises
`ModelNotReady` (the ingress answers 503). `configure` takes the hot-reloadable settings
(alert_threshold, review_threshold, explain_top_k) from a Serve `user_config`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipelines.contracts import FraudScore, Transaction
from pipelines.allocator import keep_freed_memory
from services.loading import BackgroundLoad

log = logging.getLogger("ray.serve.argus")  # Serve writes ray.serve.* to the replica log files

#: The settings `configure` takes (a Serve user_config may carry others, for its host).
SCORING_KNOBS = ("alert_threshold", "review_threshold", "explain_top_k")


def import_attr(path: str) -> Any:
    """'package.module:Name' -> the object (lets a config swap in another class with the same API)."""
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _single_threaded_torch() -> None:
    import torch

    from models.fraud_scorer import default_threads

    torch.set_num_threads(default_threads())
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass


STORE_PREFIX = "store://"


def stream_state_source(source: str, store_url: str | None) -> tuple[Any, Any]:
    """(a token that changes when the stream's state changes, a function reading that state).

    `source` is a file holding `FraudState.snapshot()` bytes, or `store://<group>/<topic>`: the
    per-partition snapshots the fraud stream job keeps in the store (merged into one state).
    The token is None when there is nothing to read yet.
    """
    from models.fraud_state import FraudState

    if not source.startswith(STORE_PREFIX):
        path = Path(source)
        if not path.is_file():
            return None, None
        return path.stat().st_mtime_ns, lambda: FraudState.from_snapshot(path.read_bytes())
    from sqlalchemy import select

    from pipelines.fraud_state_store import fraud_state_snapshots as t
    from pipelines.store import Store

    if not store_url:
        raise ValueError("a store:// state source needs a store_url")
    stream = source[len(STORE_PREFIX):]
    store = Store.from_url(store_url, check=False)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(t.c.partition, t.c.tx_offset, t.c.labels_offset, t.c.dispositions_offset,
                                       t.c.state)
                                .where(t.c.stream == stream).order_by(t.c.partition)).all()
    finally:
        store.close()
    if not rows:
        return None, None

    def read() -> Any:
        state = FraudState.from_snapshot(bytes(rows[0].state))
        for row in rows[1:]:  # partitions hold disjoint customers; restore merges them
            state.restore(bytes(row.state))
        return state

    # every offset the snapshot carries: a snapshot that only took in dispositions is a change too
    return tuple((r.partition, r.tx_offset, r.labels_offset, r.dispositions_offset) for r in rows), read


class FraudScoring:
    """The scoring core: see the module docstring. Not a Serve deployment itself."""

    def __init__(self, checkpoint: str | None = None, device: str = "auto", alert_threshold: float = 0.5,
                 review_threshold: float = 0.2, state_snapshot: str | None = None, state_refresh_s: float = 30.0,
                 warmup: bool = True, scorer_class: str = "models.fraud_scorer:FraudScorer",
                 store_url: str | None = None, registry_poll_s: float = 0.0, inline: bool = False):
        self.scorer_class = scorer_class
        # inline: score on the caller's event loop, not on the scoring thread (the Ingress: there the
        # thread only fought the event loop for the GIL; while a batch scores, the next one gathers).
        # Reading a new state snapshot or a new champion still runs on the scoring thread, awaited.
        self.inline = inline
        self._inline_lock: tuple[Any, asyncio.Lock] | None = None  # (its event loop, the lock)
        self.alert_threshold = alert_threshold
        self.review_threshold = review_threshold
        self.explain_top_k = 5  # reasons per review/decline score; 0 turns them off (cheaper)
        self.state_snapshot = state_snapshot
        self.store_url = store_url
        self.state_refresh_s = state_refresh_s
        self._state_token: Any = None
        self._state_checked = 0.0
        self.device = device
        self.registry_poll_s = registry_poll_s if store_url else 0.0
        self._models: Any = None  # a ModelHolder when following the registry
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fraud-score")
        self.model = BackgroundLoad("fraud scorer", lambda: self._load(checkpoint, warmup))

    def _load(self, checkpoint: str | None, warmup: bool) -> Any:
        FraudScorer = import_attr(self.scorer_class)
        self.device = resolve_device(self.device)
        _single_threaded_torch()  # one replica = one scoring thread; more only fight over shared cores
        keep_freed_memory()  # batch-sized activations would otherwise be page-faulted back in every batch
        scorer = FraudScorer.load(checkpoint, device=self.device)
        self._scorer = scorer
        self.state = scorer.new_state()  # history lengths that match the model
        self._state_from_stream = False
        if self.store_url:  # every server that reads the store brings its schema up to date
            from pipelines.store import Store

            try:
                with Store.from_url(self.store_url, check=False) as store:
                    store.create_schema()
            except Exception as exc:  # noqa: BLE001 - scoring does not need the store; say so and go on
                log.error("store schema not created: %s", type(exc).__name__)
        if self.registry_poll_s > 0:  # serve the champion from the start (the configured model if none)
            from pipelines.model_holder import ModelHolder
            from pipelines.store import Store

            loader = lambda path: FraudScorer.load(path, device=self.device)  # noqa: E731
            self._models = ModelHolder(Store.from_url(self.store_url, check=False), scorer, self.registry_poll_s,
                                       name="rest", load=loader)
            scorer = self._scorer = self._models.current()
        self._refresh_state(force=True)
        if warmup:  # the first forward pass allocates; keep that out of the first request
            tx = Transaction(transaction_id="warmup", timestamp="2024-01-01T00:00:00Z", customer_id="warmup",
                             terminal_id="warmup", amount=1.0)
            scorer.score([tx], self._private_state([tx], []), self.alert_threshold, self.review_threshold)
        log.info("fraud scorer %s loaded on %s", scorer.model_version, self.device)
        gc.freeze()  # torch's and the model's objects live as long as the process: out of every full collection
        return scorer

    def configure(self, config: dict[str, Any]) -> None:
        """The hot-reloadable settings (`SCORING_KNOBS`) of a Serve user_config; other keys are ignored."""
        self.alert_threshold = float(config.get("alert_threshold", self.alert_threshold))
        self.review_threshold = float(config.get("review_threshold", self.review_threshold))
        self.explain_top_k = int(config.get("explain_top_k", self.explain_top_k))

    # -- the state hook ---------------------------------------------------------------------------

    def _state_due(self) -> bool:
        """Whether the state snapshot is due to be looked at again (every state_refresh_s)."""
        return self.state_snapshot is not None and time.monotonic() - self._state_checked >= self.state_refresh_s

    def _refresh_state(self, force: bool = False) -> None:
        if self.state_snapshot is None or not (force or self._state_due()):
            return
        self._state_checked = time.monotonic()
        try:
            token, read = stream_state_source(self.state_snapshot, self.store_url)
            if token is None:
                log.warning("fraud state snapshot %s not found; scoring without stream state", self.state_snapshot)
                return
            if token == self._state_token:
                return
            self.state = read()
        except Exception as exc:  # a broken snapshot must not stop scoring: keep the state we have
            log.error("fraud state from %s not loaded: %s", self.state_snapshot, type(exc).__name__)
            return
        self._state_from_stream = True
        self._state_token = token
        log.info("fraud state loaded from %s", self.state_snapshot)

    def _private_state(self, transactions: list[Transaction], history: list[Transaction]) -> Any:
        """A small private state for these transactions: the shared state's entries for their
        customers/terminals (a partial snapshot, not a copy of everything) plus `history`.
        The scorer may advance it freely; the shared state never changes here."""
        from models.fraud_state import FraudState

        if not self._state_from_stream:
            state = self._scorer.new_state()
        else:
            keys = transactions + history
            state = FraudState.from_snapshot(self.state.snapshot(customers={t.customer_id for t in keys},
                                                                 terminals={t.terminal_id for t in keys}))
        if history:
            state.update_batch(sorted(history, key=lambda t: t.timestamp))
        return state

    # -- serving ----------------------------------------------------------------------------------

    async def ready(self) -> dict[str, Any]:
        status = self.model.status()
        if self.model.ready:
            status["model_version"] = self._serving(self.model.value).model_version
            if self._models is not None:
                status["registry_error"] = self._models.error
            status["device"] = self.device
            status["backend"] = getattr(self.model.value, "backend", "transformers")  # engine | transformers
        return status

    async def score_many(self, items: list[tuple[Transaction, tuple[Transaction, ...]]],
                         independent: bool = False) -> tuple[list[FraudScore], int]:
        """Score a batch the caller already gathered (the ingress batches its requests, so one
        call carries many transactions): returns the scores in order and the batch size.
        `independent`: the items come from different requests and must not see each other; else
        they are one request's transactions, scored in order. Runs on one scoring thread, so
        concurrent calls queue instead of fighting for the cores."""
        scorer = await self.model.get(wait_s=0.0)
        loop = asyncio.get_running_loop()
        if not self.inline:
            work = self._score_independent if independent else self._score_items
            return await loop.run_in_executor(self._executor, work, scorer, items), len(items)
        async with self._lock(loop):  # one batch at a time, and none while the thread swaps state
            if self._maintenance_due():
                await loop.run_in_executor(self._executor, self._maintain)
            return self._score(scorer, items, ordered=not independent, maintain=False), len(items)

    def _score_items(self, scorer: Any, items: list[tuple[Transaction, tuple[Transaction, ...]]]) -> list[FraudScore]:
        """One request's transactions: those without a history in order (each sees the earlier
        ones) on a private copy of the state; each with a history against that history alone."""
        return self._score(scorer, items, ordered=True)

    def _score_independent(self, scorer: Any, items: list[tuple[Transaction, tuple[Transaction, ...]]]) -> list[FraudScore]:
        """Items of different requests: each read against the state before the batch (read-only)
        plus its own history, then all in one forward. No item sees another."""
        return self._score(scorer, items, ordered=False)

    def _serving(self, scorer: Any) -> Any:
        """The scorer serving now: the registry's champion when following it (else the loaded one)."""
        return self._models.scorer if self._models is not None else scorer

    def _lock(self, loop: Any) -> asyncio.Lock:
        if self._inline_lock is None or self._inline_lock[0] is not loop:
            self._inline_lock = (loop, asyncio.Lock())
        return self._inline_lock[1]

    def _maintenance_due(self) -> bool:
        """Whether the next batch must first look for a new state snapshot or champion."""
        return self._state_due() or (self._models is not None and self._models.due())

    def _maintain(self) -> None:
        """Between batches, on the scoring thread: the state snapshot re-read when it changed, the
        registry's champion looked up (and loaded) when due: one state and one version per batch."""
        self._refresh_state()
        if self._models is not None:
            scorer = self._models.current()
            if scorer is not self._scorer:  # a new champion: its objects out of the full collections too
                gc.freeze()
            self._scorer = scorer

    def _score(self, scorer: Any, items: list[tuple[Transaction, tuple[Transaction, ...]]], ordered: bool,
               maintain: bool = True) -> list[FraudScore]:
        import numpy as np

        if maintain:
            self._maintain()
        if self._models is not None:
            scorer = self._scorer

        from models.fraud_state import FraudContext

        plain = [i for i, (_, history) in enumerate(items) if not history]
        parts, order = [], []
        if plain:
            txs = [items[i][0] for i in plain]
            if ordered:  # a private copy advanced through the request's own transactions
                parts.append(self._private_state(txs, []).advance_batch(txs))
            else:  # the shared state, only read
                base = self.state if self._state_from_stream else self._empty_state(scorer)
                parts.append(base.context_batch(txs))
            order += plain
        for i, (tx, history) in enumerate(items):
            if history:
                parts.append(self._private_state([tx], list(history)).context_batch([tx]))
                order.append(i)
        ctx = parts[0] if len(parts) == 1 else FraudContext.concat(parts)
        if order != sorted(order):
            inverse = np.empty(len(order), np.int64)
            inverse[np.asarray(order)] = np.arange(len(order))
            ctx = ctx.take(inverse)
        txs = [tx for tx, _ in items]
        if not hasattr(scorer, "score_context"):  # a scorer class without it: hand it the context read above
            return scorer.score(txs, _ReadContext(ctx), self.alert_threshold, self.review_threshold,
                                explain_top_k=self.explain_top_k)
        return scorer.score_context(txs, ctx, self.alert_threshold, self.review_threshold,
                                    explain_top_k=self.explain_top_k)

    def _empty_state(self, scorer: Any) -> Any:
        if getattr(self, "_empty", None) is None:
            self._empty = scorer.new_state()  # never written: every read of it is a read of nothing
        return self._empty


class _ReadContext:
    """A 'state' whose advance_batch returns a context already read (and changes nothing)."""

    def __init__(self, ctx: Any):
        self.ctx = ctx

    def advance_batch(self, transactions: Any) -> Any:
        return self.ctx


__all__ = ["FraudScoring", "SCORING_KNOBS", "stream_state_source"]
