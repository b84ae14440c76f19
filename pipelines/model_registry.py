"""The fraud model registry: which checkpoint is the champion, which are challengers, who changed it.

Rows live in the store (schema v8, `model_registry` and `model_registry_events`, PostgreSQL or
SQLite). A version is the `model_version` its scores carry in `fraud_scores`. Guarantees:

* **One champion.** `promote` and `rollback` retire the champion and crown the next one in ONE
  transaction, under a lock (a PostgreSQL advisory lock, SQLite's write lock), with an audit row
  (action, version, previous champion, who, when). Readers see the old champion or the new one.
* **Refused, in one line** (`RegistryError`): an unknown version, a checkpoint that does not load
  (`FraudScorer.load`), one whose state layout (history lengths, fields) differs from the champion's
  (the stream's per-partition state would not fit it), nothing to roll back to, a bad name.
* **Rollback walks back.** It returns to the champion the current one replaced (its last
  promotion's `previous`); a second rollback goes one further back.

The stream and the REST deployment follow the champion through `pipelines/model_holder.py`.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from pipelines.errors import ArgusError
from pipelines.store import Store, _utc, model_registry, model_registry_events

CHAMPION, CHALLENGER, RETIRED = "champion", "challenger", "retired"
MAX_NAME = 128


class RegistryError(ArgusError):
    """A registry request that cannot be done as asked (the message says why, in one line)."""

    exit_code = 8


@dataclass(frozen=True)
class ModelVersion:
    version: str
    parent: str | None
    checkpoint: str
    data_window: dict[str, Any]
    metrics: dict[str, Any]
    status: str
    created_at: datetime
    promoted_at: datetime | None


def state_layout(scorer: Any) -> tuple:
    """What a stream's `FraudState` must match to be scored by this model (two models with the same
    layout can take over each other's state)."""
    c = scorer.config
    return (c.customer_history, c.terminal_history, tuple(c.hist_fields), tuple(c.current_fields))


def load_checkpoint(path: str | Path) -> Any:
    """The default loader: the fraud scorer from a checkpoint directory (CPU)."""
    from models.fraud_scorer import FraudScorer

    return FraudScorer.load(Path(path), device="cpu")


def one_line(exc: BaseException, limit: int = 300) -> str:
    return (" ".join(f"{type(exc).__name__}: {exc}".split()))[:limit]


def check_name(value: Any, what: str) -> str:
    """A version or actor name: 1..128 printable characters, no control or separator characters."""
    if not isinstance(value, str):
        raise RegistryError(f"{what} must be a string")
    if not value or len(value) > MAX_NAME:
        raise RegistryError(f"{what} must be 1 to {MAX_NAME} characters")
    if value != value.strip() or any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in value):
        raise RegistryError(f"{what} {value[:20]!r} has control, separator or surrounding blank characters")
    return value


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Metrics and windows as plain JSON: non-finite floats become None (JSONB refuses NaN)."""
    if depth > 20:
        raise RegistryError("metrics / data window nested too deeply")
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    return str(value)


def _row(r: Any) -> ModelVersion:
    return ModelVersion(r.version, r.parent, r.checkpoint, r.data_window or {}, r.metrics or {}, r.status,
                        _utc(r.created_at), _utc(r.promoted_at))


class ModelRegistry:
    """Register, list, promote and roll back fraud model versions in `store`."""

    def __init__(self, store: Store, load: Callable[[str], Any] = load_checkpoint):
        self.store = store
        self.load = load

    # -- reads ---------------------------------------------------------------------------------------

    def list(self) -> list[ModelVersion]:
        """Every version, newest first."""
        t = model_registry.c
        with self.store.engine.connect() as conn:
            return [_row(r) for r in conn.execute(select(model_registry).order_by(t.created_at.desc(), t.version))]

    def get(self, version: str) -> ModelVersion | None:
        with self.store.engine.connect() as conn:
            r = conn.execute(select(model_registry).where(model_registry.c.version == version)).first()
        return None if r is None else _row(r)

    def champion(self) -> ModelVersion | None:
        """The version to serve now (None: the registry is empty; serve the configured checkpoint)."""
        with self.store.engine.connect() as conn:
            r = conn.execute(select(model_registry).where(model_registry.c.status == CHAMPION)).first()
        return None if r is None else _row(r)

    def events(self, limit: int = 50, version: str | None = None) -> list[dict[str, Any]]:
        """The audit trail, newest first."""
        e = model_registry_events.c
        query = select(model_registry_events).order_by(e.id.desc()).limit(max(1, int(limit)))
        if version is not None:
            query = query.where(e.version == version)
        with self.store.engine.connect() as conn:
            return [{**r, "at": _utc(r["at"])} for r in conn.execute(query).mappings()]

    # -- writes --------------------------------------------------------------------------------------

    def register(self, version: str, checkpoint: str | Path, *, actor: str, parent: str | None = None,
                 data_window: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> ModelVersion:
        """Add a challenger. Its checkpoint must load; the version must be new."""
        version, actor = check_name(version, "version"), check_name(actor, "actor")
        if parent is not None:
            check_name(parent, "parent")
        checkpoint = str(Path(checkpoint).expanduser().resolve())
        self._loadable(version, checkpoint)
        row = {"version": version, "parent": parent, "checkpoint": checkpoint,
               "data_window": _json_safe(dict(data_window or {})), "metrics": _json_safe(dict(metrics or {})),
               "status": CHALLENGER, "created_at": _now(), "promoted_at": None}

        def work(conn: Connection) -> None:
            self._lock(conn)
            if conn.execute(select(model_registry.c.version).where(model_registry.c.version == version)).first():
                raise RegistryError(f"version {version!r} is already registered")
            conn.execute(model_registry.insert().values(**row))
            self._event(conn, "register", version, None, actor, f"checkpoint {checkpoint}")

        self.store._transact(work)
        return self.get(version)

    def promote(self, version: str, *, actor: str, detail: str | None = None) -> ModelVersion:
        """Make `version` the champion (the champion before is retired). Refused for an unknown
        version or a checkpoint that does not load or does not fit the champion's state layout."""
        version, actor = check_name(version, "version"), check_name(actor, "actor")
        target = self.get(version)
        if target is None:
            raise RegistryError(f"unknown model version {version!r} (see `argus models list`)")
        if target.status == CHAMPION:
            raise RegistryError(f"{version!r} is already the champion")
        scorer = self._loadable(version, target.checkpoint)
        current = self.champion()
        if current is not None:
            self._same_layout(scorer, current)
        self._switch(version, actor, "promote", detail)
        return self.get(version)

    def rollback(self, *, actor: str, detail: str | None = None) -> ModelVersion:
        """Back to the champion the current one replaced (checked to load, like a promotion)."""
        actor = check_name(actor, "actor")
        current = self.champion()
        if current is None:
            raise RegistryError("no champion to roll back (the registry is empty: `argus store init`)")
        e = model_registry_events.c
        with self.store.engine.connect() as conn:
            previous = conn.execute(select(e.previous).where(e.action == "promote", e.version == current.version)
                                    .order_by(e.id.desc()).limit(1)).scalar()
        if previous is None:
            raise RegistryError(f"nothing to roll back to: {current.version!r} replaced no earlier champion")
        target = self.get(previous)
        if target is None:
            raise RegistryError(f"the earlier champion {previous!r} is no longer registered")
        self._same_layout(self._loadable(previous, target.checkpoint), current)
        self._switch(previous, actor, "rollback", detail, expect=current.version)
        return self.get(previous)

    def record_failure(self, version: str, actor: str, detail: str) -> None:
        """A server could not load the champion (it keeps serving its model): an audit row for operators."""
        self.store._transact(lambda conn: self._event(conn, "load_failed", version, None, actor[:MAX_NAME],
                                                      detail[:1000]))

    def ensure_champion(self, checkpoint: str | Path, actor: str) -> ModelVersion | None:
        """When the registry is empty: register `checkpoint` (under its own model_version) and promote
        it. Returns the champion registered, or None when there already was one."""
        if self.champion() is not None or self.list():
            return None
        scorer = self._loadable("the shipped checkpoint", str(checkpoint))
        import json

        config = json.loads((Path(checkpoint) / "config.json").read_text())
        version = scorer.model_version
        self.register(version, checkpoint, actor=actor, data_window=config.get("split") or {},
                      metrics=config.get("metrics") or {})
        return self.promote(version, actor=actor, detail="first champion (registry was empty)")

    # -- internals -----------------------------------------------------------------------------------

    def _loadable(self, version: str, checkpoint: str) -> Any:
        try:
            return self.load(checkpoint)
        except Exception as exc:  # noqa: BLE001 - any load failure is the same answer: refused, and why
            raise RegistryError(f"checkpoint of {version} at {checkpoint} does not load: {one_line(exc, 200)}") from None

    def _same_layout(self, scorer: Any, current: ModelVersion) -> None:
        """Refuse a model the stream's state would not fit. A champion whose own checkpoint no longer
        loads is no reference (the new one replaces it whatever its layout)."""
        try:
            champion = self.load(current.checkpoint)
        except Exception:  # noqa: BLE001
            return
        if state_layout(champion) != state_layout(scorer):
            raise RegistryError(f"its state layout (histories {state_layout(scorer)[:2]}) differs from the champion "
                                f"{current.version!r} (histories {state_layout(champion)[:2]}) or its fields: "
                                "the stream's state would not fit it")

    def _switch(self, version: str, actor: str, action: str, detail: str | None, expect: str | None = None) -> None:
        def work(conn: Connection) -> None:
            self._lock(conn)
            t = model_registry.c
            current = conn.execute(select(t.version).where(t.status == CHAMPION)).scalar()
            if expect is not None and current != expect:
                raise RegistryError(f"the champion changed meanwhile (now {current!r}); try again")
            if conn.execute(select(t.version).where(t.version == version)).first() is None:
                raise RegistryError(f"unknown model version {version!r}")
            now = _now()
            conn.execute(model_registry.update().where(t.status == CHAMPION).values(status=RETIRED))
            values = {"status": CHAMPION, **({"promoted_at": now} if action == "promote" else {})}
            conn.execute(model_registry.update().where(t.version == version).values(**values))
            self._event(conn, action, version, current, actor, detail, now)

        self.store._transact(work)

    @staticmethod
    def _event(conn: Connection, action: str, version: str, previous: str | None, actor: str, detail: str | None,
               at: datetime | None = None) -> None:
        conn.execute(model_registry_events.insert().values(action=action, version=version, previous=previous,
                                                           actor=actor, at=at or _now(), detail=detail))

    @staticmethod
    def _lock(conn: Connection) -> None:
        """Serialise registry writers (SQLite: the write transaction already holds the lock)."""
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('argus.model_registry'))"))


def _now() -> datetime:
    return datetime.now(timezone.utc)


__all__ = ["CHALLENGER", "CHAMPION", "RETIRED", "ModelRegistry", "ModelVersion", "RegistryError", "check_name",
           "load_checkpoint", "state_layout"]
