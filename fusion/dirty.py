"""Owns dirty-chunk bookkeeping: one set of changed chunk keys per consumer, taken and cleared by it."""
from __future__ import annotations

import threading
from typing import Iterable

import numpy as np

CONSUMERS = ("mesh", "semantics", "completion")


def chunk_keys_of_blocks(blocks: np.ndarray, block_size_m: float, chunk_size_m: float) -> set:
    """Chunk keys (tuples) of every chunk a block overlaps (also when blocks straddle chunk borders)."""
    if len(blocks) == 0:
        return set()
    lo = np.floor(np.asarray(blocks, np.float64) * block_size_m / chunk_size_m + 1e-9).astype(np.int64)
    hi = np.floor((np.asarray(blocks, np.float64) + 1) * block_size_m / chunk_size_m - 1e-9).astype(np.int64)
    keys = {tuple(k) for k in np.unique(lo, axis=0).tolist()}
    for i in np.nonzero(np.any(hi != lo, axis=1))[0]:
        axes = [range(a, b + 1) for a, b in zip(lo[i], hi[i])]
        keys.update((x, y, z) for x in axes[0] for y in axes[1] for z in axes[2])
    return keys


class DirtyChunks:
    """Per-consumer dirty sets. Thread-safe: the fusion thread marks, any consumer thread takes.

    The lock is held only to swap sets, never during inference or integration.
    """

    def __init__(self, consumers: Iterable[str] = CONSUMERS):
        self._lock = threading.Lock()
        self._sets: dict[str, set] = {c: set() for c in consumers}

    def mark(self, keys: Iterable[tuple], consumers: Iterable[str] | None = None) -> None:
        keys = set(keys)
        with self._lock:
            for name in (self._sets if consumers is None else consumers):
                self._sets[name] |= keys

    def take(self, consumer: str) -> set:
        """Return and clear the consumer's dirty set."""
        with self._lock:
            taken, self._sets[consumer] = self._sets[consumer], set()
        return taken

    def pending(self, consumer: str) -> int:
        with self._lock:
            return len(self._sets[consumer])
