"""Owns how the workers meet their environment: the frame source opened for the GUI (recordings
frame-exact or paced, retimed to follow the model they continue) and the lower CPU priority of worker
threads, so the GUI thread stays responsive."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from fusion.sources import RECORDING_SUFFIXES, open_source
from fusion.sources.base import FrameSource

log = logging.getLogger(__name__)


def lower_thread_priority(nice: int) -> None:
    """Make the calling thread, and threads it starts later, yield the CPU to the GUI thread (Linux:
    the nice value is per thread and inherited by threads it creates); a no-op elsewhere."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        log.debug("cannot lower the worker's priority: %s", exc)


def open_gui_source(spec: str, max_frames: int | None, real_time: bool) -> FrameSource:
    """open_source, with RealSense recordings replayed in real time when asked."""
    if Path(spec).suffix.lower() in RECORDING_SUFFIXES:
        from fusion.sources.recording import RecordingConfig, RecordingSource

        return RecordingSource(Path(spec), max_frames, RecordingConfig(real_time=real_time))
    return open_source(spec, max_frames=max_frames)


def retime_offset_s(first_s: float, last_fused_s: float | None, gap_s: float) -> float:
    """Seconds to add to a source's timestamps so its first frame (at first_s) comes gap_s after the
    model's last fused frame (0 when it already does)."""
    return 0.0 if last_fused_s is None or first_s > last_fused_s else last_fused_s - first_s + gap_s
