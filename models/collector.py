"""The cyclic garbage collector paused while a large list of acyclic objects is built.

Tuples (a `Sentence` is a tuple subclass) and id lists are never untracked by the collector: a million
of them start a few full collections on the way, each walking the whole heap (the loaded tokenizer and
model: over half the cost of splitting a million one-word lines). Paused, the collector sees them once
when it next runs. Use it only where nothing built holds a cycle, so nothing is kept that a collection
would free.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

MANY = 10_000  # items from which pausing pays


@contextmanager
def collector_paused(paused: bool = True) -> Iterator[None]:
    if not paused or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
