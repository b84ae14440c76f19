"""The scorer a server should use now: the registry's champion, noticed by polling, loaded between batches.

A job asks `current()` once before each batch and scores the whole batch with what it gets, so a
batch is scored by exactly one model version (the `model_version` of its rows). `current()` reads
the champion at most every `poll_s` seconds (one small SELECT); when it names another version, the
checkpoint is loaded right there, between two batches, and served from the next batch on. The
stream's state carries over: a model with another state layout is refused like a broken one.

A champion that does not load (a missing or corrupt checkpoint, another layout) leaves the old model
serving: the error is logged, kept in `error` (the REST `ready()` shows it) and written once to the
registry's audit trail (`load_failed`); it is not tried again until the champion changes. A store
that cannot be read is the same: keep serving, try at the next poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pipelines.model_registry import ModelRegistry, load_checkpoint, one_line, state_layout
from pipelines.store import Store

log = logging.getLogger("argus.models")


class ModelHolder:
    def __init__(self, store: Store, scorer: Any, poll_s: float = 10.0, name: str = "fraud",
                 load: Callable[[str], Any] = load_checkpoint, clock: Callable[[], float] = time.monotonic):
        self.registry = ModelRegistry(store, load)
        self.scorer = scorer
        self.version: str = scorer.model_version  # the registry version served (also in every score row)
        self.poll_s = max(0.0, float(poll_s))
        self.name = name
        self.error: str | None = None
        self.swaps = 0
        self._load, self._clock = load, clock
        self._checked: float | None = None
        self._failed: str | None = None  # the champion that did not load (not retried until it changes)

    def due(self) -> bool:
        """Whether the next `current()` reads the registry (else it returns the scorer it has)."""
        return self._checked is None or self._clock() - self._checked >= self.poll_s

    def current(self) -> Any:
        """The scorer for the next batch (call it between batches, never during one)."""
        if not self.due():
            return self.scorer
        self._checked = self._clock()
        try:
            champion = self.registry.champion()
        except Exception as exc:  # noqa: BLE001 - the store is down: serve what we have
            log.warning("model registry not read (%s); still serving %s", one_line(exc, 200), self.version,
                        extra={"consumer": self.name})
            return self.scorer
        if champion is None or champion.version in (self.version, self._failed):
            return self.scorer
        try:
            scorer = self._load(champion.checkpoint)
            if state_layout(scorer) != state_layout(self.scorer):
                raise ValueError(f"state layout {state_layout(scorer)[:2]} differs from the one served "
                                 f"{state_layout(self.scorer)[:2]}")
        except Exception as exc:  # noqa: BLE001 - a broken champion must not stop scoring
            self._failed = champion.version
            self.error = f"champion {champion.version} not loaded, still serving {self.version}: {one_line(exc, 200)}"
            log.error(self.error, extra={"consumer": self.name})
            try:
                self.registry.record_failure(champion.version, self.name, self.error)
            except Exception:  # noqa: BLE001 - the log line above already says it
                pass
            return self.scorer
        scorer.model_version = champion.version  # the registry's name is what the rows carry
        log.info("model swapped between batches: %s -> %s", self.version, champion.version,
                 extra={"consumer": self.name})
        self.scorer, self.version, self.error, self._failed = scorer, champion.version, None, None
        self.swaps += 1
        return scorer

    def status(self) -> dict[str, Any]:
        return {"model_version": self.version, "swaps": self.swaps, "registry_error": self.error}
