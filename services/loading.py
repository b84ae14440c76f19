"""Load a model in the background so a replica answers `ready()` (and the ingress `/healthz`) while
it loads, instead of hiding behind Serve's start-up. A load error is kept and reported, not raised,
so a bad checkpoint path shows up as a 503 with the reason rather than a crash loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("ray.serve.argus")  # Serve writes ray.serve.* to the replica log files


class ModelNotReady(RuntimeError):
    """The model is still loading, or failed to load (the message says which, without the cause:
    the cause, which may name files, is in the replica log and in `ready()` for operators)."""

    def __init__(self, message: str, state: str = "loading"):
        super().__init__(message)
        self.state = state

    def __reduce__(self):  # crosses a Ray handle: keep `state`
        return (type(self), (self.args[0] if self.args else "", self.state))


class BadInput(ValueError):
    """A request the model rejects (e.g. a report with no sentences): the ingress answers 422."""


class BackgroundLoad:
    def __init__(self, name: str, load: Callable[[], Any]):
        self.name = name
        self.value: Any = None
        self.error: str | None = None
        self.seconds: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(load,), name=f"load-{name}", daemon=True)
        self._thread.start()

    def _run(self, load: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            self.value = load()
        except Exception as exc:  # reported through ready(); the replica stays up to say why
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("loading %s failed: %s", self.name, self.error)
        finally:
            self.seconds = time.perf_counter() - start
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set() and self.error is None

    def status(self) -> dict[str, Any]:
        state = "ready" if self.ready else ("failed" if self.error else "loading")
        return {"state": state, "error": self.error, "load_seconds": self.seconds}

    async def get(self, wait_s: float = 0.0) -> Any:
        """The loaded value; waits up to `wait_s` for a load in progress, else raises ModelNotReady."""
        if not self._done.is_set() and wait_s > 0:
            await asyncio.get_running_loop().run_in_executor(None, self._done.wait, wait_s)
        if self.error:
            raise ModelNotReady(f"{self.name} failed to load", "failed")
        if not self._done.is_set():
            raise ModelNotReady(f"{self.name} is still loading", "loading")
        return self.value
