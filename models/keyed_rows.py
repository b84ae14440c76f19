"""Dense per-key rows of numpy arrays: the storage under the fraud state's side memories.

A key (a customer, a terminal) owns one row of every array in `ARRAYS` (each [capacity, k] or
[capacity]); rows of forgotten keys go on a free list for reuse, and the arrays double when full.
Subclasses say what the arrays hold (`FILL`: each array's empty value) and what they mean; this
class only places keys, frees rows and moves rows in and out of snapshots.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np


class KeyedRows:
    ARRAYS: tuple[str, ...] = ()
    FILL: dict[str, Any] = {}
    DTYPES: dict[str, Any] = {}
    ONE_D: tuple[str, ...] = ()  # arrays of one value per key ([capacity]); the others are [capacity, k]
    PER_KEY_ARRAY: str = ""  # the [capacity, k] array whose width a snapshot must match
    WHAT = "entries"  # what a row holds, for messages

    def __init__(self, k: int, capacity: int):
        self.k = int(k)
        self.index: dict[str, int] = {}
        self.names: list[str | None] = []
        self.free: list[int] = []
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        for a in self.ARRAYS:
            shape = (cap,) if a in self.ONE_D else (cap, self.k)
            setattr(self, a, np.full(shape, self.FILL[a], self.DTYPES[a]))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def capacity(self) -> int:
        return len(getattr(self, self.ARRAYS[0]))

    def nbytes(self) -> int:
        return sum(getattr(self, a).nbytes for a in self.ARRAYS)

    def row(self, key: str) -> int:
        """The key's row, made (reused or grown) if it has none."""
        j = self.index.get(key)
        if j is not None:
            return j
        if self.free:
            j = self.free.pop()
            self.names[j] = key
        else:
            j = len(self.names)
            self.names.append(key)
            if j >= self.capacity:
                old = {a: getattr(self, a) for a in self.ARRAYS}
                self._alloc(2 * self.capacity)
                for a, arr in old.items():
                    getattr(self, a)[: len(arr)] = arr
        self.index[key] = j
        return j

    def rows(self, keys: Sequence[str], create: bool) -> np.ndarray:
        """Rows of keys; -1 for a key without one when not creating."""
        if create:
            return np.fromiter((self.row(k) for k in keys), np.int64, len(keys))
        index = self.index
        return np.fromiter((index.get(k, -1) for k in keys), np.int64, len(keys))

    def release(self, rows: Iterable[int]) -> None:
        """Forget the keys of these rows and empty them for reuse."""
        for j in rows:
            name = self.names[j]
            if name is None:
                continue
            del self.index[name]
            self.names[j] = None
            self.free.append(j)
            for a in self.ARRAYS:
                getattr(self, a)[j] = self.FILL[a]

    # -- snapshot helpers ------------------------------------------------------------------------
    def export(self, keys: Iterable[str] | None) -> tuple[list[str], dict[str, np.ndarray]]:
        names = [k for k in self.names if k is not None] if keys is None else [k for k in keys if k in self.index]
        rows = np.array([self.index[k] for k in names], np.int64)
        return names, {a: getattr(self, a)[rows] for a in self.ARRAYS}

    def merge(self, names: list[str], arrays: dict[str, np.ndarray]) -> None:
        if not names:
            return
        k = arrays[self.PER_KEY_ARRAY].shape[1]
        if k != self.k:
            raise ValueError(f"snapshot holds {k} {self.WHAT} per key, this state {self.k}")
        rows = self.rows(names, create=True)
        for a in self.ARRAYS:
            getattr(self, a)[rows] = arrays[a]
