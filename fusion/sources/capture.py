"""Owns the live capture loop: a thread that reads SDK framesets and keeps only the newest one.

The loop never waits for processing: when fusion is behind, the older unprocessed frameset is
replaced by the newer one and counted as dropped. It works on anything with the SDK's
`try_wait_for_frames(timeout_ms) -> (ok, frameset)` (an `rs.pipeline`, an `rs.syncer` fed by a
software device in tests), so the code a camera runs is the code the tests run.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from fusion.errors import SourceError

log = logging.getLogger(__name__)


class NewestSlot:
    """A one-item mailbox that keeps the newest item and counts the ones replaced unread.

    Any thread may call `put`/`put_error`; one consumer thread calls `take`.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._error: Optional[Exception] = None
        self.delivered = 0  # items put
        self.dropped = 0  # items replaced before the consumer took them

    def put(self, item) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.delivered += 1
            self._cond.notify()

    def put_error(self, exc: Exception) -> None:
        """The producer failed: `take` raises `exc` once the pending item (if any) was taken."""
        with self._cond:
            self._error = exc
            self._cond.notify()

    def take(self, timeout_s: float):
        """The newest item, or None after `timeout_s`; raises the producer's error when nothing is left."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._error is not None, timeout_s)
            item, self._item = self._item, None
            if item is None and self._error is not None:
                raise self._error
            return item


class CaptureThread:
    """Reads framesets with `poll(timeout_ms)` on its own thread into a `NewestSlot`.

    Created and controlled (start/stop/join) by the consumer's thread; the loop itself runs on the
    thread named `realsense-capture`. When no frameset arrives for `frame_timeout_s` (camera
    unplugged, USB failure) it puts a `SourceError` in the slot and ends. `side(frameset) -> bool`, when
    given, sees every frameset first; one it consumes (True: IMU samples only) skips the slot.
    """

    def __init__(self, poll: Callable, slot: NewestSlot, frame_timeout_s: float, poll_timeout_s: float = 0.1,
                 side: Optional[Callable[[Any], bool]] = None):
        self._poll, self.slot, self._side = poll, slot, side
        self._frame_timeout_s, self._poll_ms = frame_timeout_s, max(1, int(poll_timeout_s * 1000))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="realsense-capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float = 2.0) -> bool:
        """Wait at most `timeout_s`; True when the thread has ended (or never started)."""
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                ok, fs = self._poll(self._poll_ms)
            except RuntimeError as exc:
                self.slot.put_error(SourceError(f"RealSense camera failed: {str(exc).strip()[:200]}"))
                return
            if ok and self._side is not None and self._side(fs):
                last = time.monotonic()
            elif ok:
                fs.keep()  # the slot may hold it past the next poll
                self.slot.put(fs)
                last = time.monotonic()
            elif time.monotonic() - last > self._frame_timeout_s:
                self.slot.put_error(SourceError(
                    f"RealSense camera delivered no frame for {self._frame_timeout_s:g} s "
                    "(unplugged or USB failure?)"))
                return
