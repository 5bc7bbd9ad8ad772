"""Owns the stall guard: read any FrameSource ahead on a reader thread and give up with a clear
message when it delivers nothing for too long (a hung network drive, a USB disk gone, an SDK that
never answers), so the consumer never blocks forever in `next()`.

Live cameras and recordings time out on their own (`CaptureThread`, `RecordingConfig`) and are read
directly: a read-ahead queue would hold stale frames where the live path keeps only the newest.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

from fusion.errors import SourceError
from fusion.frame import Frame
from fusion.sources.base import FrameSource

log = logging.getLogger(__name__)
_END = object()


@dataclass(frozen=True)
class StallGuardConfig:
    frame_timeout_s: float = 10.0        #: no frame for this long after the first one: the source stalled
    first_frame_timeout_s: float = 60.0  #: the first frame may take longer (opening files, compiling kernels)
    prefetch_frames: int = 2             #: frames read ahead of the consumer at most
    join_timeout_s: float = 1.0          #: bound on joining the reader when the consumer stops
    direct_kinds: tuple = ("realsense", "realsense-recording")  #: source kinds with their own timeout, read directly


def _read(source: FrameSource, out: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: iterate `source`, put frames (then _END, or the exception) into `out`."""
    try:
        for frame in source:
            while not stop.is_set():
                try:
                    out.put(frame, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        item = _END
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
        item = exc
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return
        except queue.Full:
            continue


def guarded_frames(source: FrameSource, config: StallGuardConfig = StallGuardConfig()) -> Iterator[Frame]:
    """Frames of `source`, read on a thread named `source-reader`; raises SourceError when none comes
    within the timeout. Thread: the consumer's (one thread). Close the generator (or let it end) to
    stop the reader; a reader stuck inside the source is left behind as a daemon thread."""
    if source.kind in config.direct_kinds:
        yield from source
        return
    out: queue.Queue = queue.Queue(maxsize=max(1, config.prefetch_frames))
    stop = threading.Event()
    reader = threading.Thread(target=_read, args=(source, out, stop), name="source-reader", daemon=True)
    reader.start()
    count = 0
    try:
        while True:
            timeout_s = config.frame_timeout_s if count else config.first_frame_timeout_s
            try:
                item = out.get(timeout=timeout_s)
            except queue.Empty:
                raise SourceError(f"{source.kind}: no frame for {timeout_s:g} s after {count} frames "
                                  "(the source stalled: hung drive, disconnected device?)") from None
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            count += 1
            yield item
    finally:
        stop.set()
        reader.join(config.join_timeout_s)
        if reader.is_alive():
            log.warning("the %s source is still blocked in a read; left behind", source.kind)
