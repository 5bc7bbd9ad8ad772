"""Owns how the loop-closure worker shares the machine with the live loop: its lowered priority and kernel
threads (`lower_worker_priority`) and its duty-cycle pacing by its own CPU time (`WorkerPacer`).

The loop closer's worker uses both; `bench.loop_bench` runs a map rebuild beside the live loop with the
same two, to measure what a correction costs the live loop.
Thread: both act on the thread that calls them (the worker's), a pacer belongs to that thread.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numba as nb

log = logging.getLogger(__name__)


def lower_worker_priority(kernel_threads: int, nice: int) -> None:
    """Limit the calling thread's numba kernels to `kernel_threads` and make it `nice` nicer (Linux: a thread id
    names one thread; the live loop's threads keep their priority)."""
    nb.set_num_threads(max(1, min(kernel_threads, nb.config.NUMBA_NUM_THREADS)))
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):
        log.debug("the loop-closure worker's priority could not be lowered")


class WorkerPacer:
    """Calling it sleeps so that its thread computes `duty` of the time since the last call (or `restart`);
    it returns True once `stop` is set. Busy time is the thread's own CPU time, not wall time: time it waited
    for a core (a loaded machine, its lower priority) is not paid for again by sleeping. While `hold` is set,
    calling it also waits until it is cleared (a benchmark compares the live loop with the worker held and running
    within one run).
    Thread: the one thread that calls it."""

    def __init__(self, duty: float, stop: threading.Event, hold: threading.Event | None = None):
        self.duty = min(max(duty, 0.05), 1.0)
        self._stop, self._hold = stop, hold
        self._since = time.thread_time()

    def restart(self) -> None:
        """Count busy time from now (after a wait that was not work)."""
        self._since = time.thread_time()

    def __call__(self) -> bool:
        busy = max(0.0, time.thread_time() - self._since)  # made on another thread: its CPU time is not ours
        if self.duty < 1.0:
            self._stop.wait(busy * (1.0 - self.duty) / self.duty)
        while self._hold is not None and self._hold.is_set() and not self._stop.wait(0.01):
            pass
        self._since = time.thread_time()
        return self._stop.is_set()
