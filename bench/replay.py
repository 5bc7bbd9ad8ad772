"""Owns replaying a source as a live camera: its frames held in memory (`load_frames`, refusing a source too large
to hold), put in play order (`play_list`: forward, backward, forward...) and handed out on the camera's clock
(`ReplayCamera`) to the app's capture thread, which keeps only the newest in a `NewestSlot`, exactly as a live
RealSense does; the loop fed by `replay` takes what is there when it is ready. Shared by the live and the
contention benchmarks. Thread: `replay` runs the loop in the calling thread, the capture thread beside it.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fusion.errors import UserError
from fusion.sources.capture import CaptureThread, NewestSlot


class _Held:
    """A frame in the capture slot (the SDK's framesets need `keep()`; frames do not)."""

    def __init__(self, frame):
        self.frame = frame

    def keep(self) -> None:
        pass


class ReplayCamera:
    """Hands out `frames` on the camera's clock through `try_wait_for_frames(timeout_ms)`, like the SDK.
    Thread: the capture thread polls it; `finished` is set once the last frame was handed out."""

    def __init__(self, frames, fps: float):
        self.frames, self.period_s = frames, 1.0 / fps
        self.next = 0
        self.t0 = 0.0
        self.late_s: list[float] = []   # how late each frame was handed out (a starved capture thread)
        self.finished = threading.Event()

    def start(self) -> None:
        self.t0 = time.monotonic()

    def try_wait_for_frames(self, timeout_ms: int):
        if self.next >= len(self.frames):
            self.finished.set()
            time.sleep(timeout_ms / 1000)
            return False, None
        due = self.t0 + self.next * self.period_s
        wait = due - time.monotonic()
        if wait > timeout_ms / 1000:
            time.sleep(timeout_ms / 1000)
            return False, None
        if wait > 0:
            time.sleep(wait)
        frame = self.frames[self.next]
        self.next += 1
        self.late_s.append(max(0.0, time.monotonic() - due))
        return True, _Held(frame)


@dataclass
class Replay:
    """What one replay did: which frames were fused and when it ended."""

    fused: list            # play-list indices of the frames handed to the loop
    wall_s: float          # due time of the first frame to the end of the last fusion
    slot_dropped: int      # frames replaced in the slot before the loop took them
    late_p95_s: float      # how late the capture thread handed frames out (p95)
    end_s: float           # time.monotonic() at the end


def replay(frames, fps: float, fuse: Callable, poll_timeout_s: float = 0.05,
           camera: ReplayCamera | None = None) -> Replay:
    """Play `frames` in real time into a newest-only slot; `fuse(frame)` takes what is there (`poll_timeout_s`:
    the capture thread's and the loop's wait for a frame; `camera`: a ReplayCamera of these frames to use, for a
    caller that watches it)."""
    camera = camera or ReplayCamera(frames, fps)
    slot = NewestSlot()
    capture = CaptureThread(camera.try_wait_for_frames, slot, frame_timeout_s=3600.0,
                            poll_timeout_s=poll_timeout_s)
    fused = []
    camera.start()
    capture.start()
    try:
        while True:
            held = slot.take(poll_timeout_s)
            if held is None and camera.finished.is_set():
                held = slot.take(0.0)   # the last frame may have landed just before `finished`
                if held is None:
                    break
            if held is not None:
                fuse(held.frame)
                fused.append(held.frame.index)
    finally:
        capture.stop()
        capture.join(5.0)
    end = time.monotonic()
    late = np.asarray(camera.late_s or [0.0])
    return Replay(fused, end - camera.t0, slot.dropped, float(np.percentile(late, 95)), end)


def play_list(frames, passes: int, fps: float) -> list:
    """The frames forward, backward, forward... `passes` times, re-indexed and re-timed on the camera's clock."""
    order = []
    for p in range(passes):
        order += frames if p % 2 == 0 else frames[::-1][1:-1] if len(frames) > 2 else frames[::-1]
    return [dataclasses.replace(f, index=i, timestamp_s=i / fps) for i, f in enumerate(order)]


def _preload(source, spec: str, max_mb: float) -> list:
    """Every frame of `source` in memory, refusing (one line) a source larger than `max_mb`."""
    frames, total = [], 0
    for frame in source:
        total += frame.color.nbytes + frame.depth_m.nbytes
        if total > max_mb * 2**20:
            raise UserError(f"{spec}: more than {max_mb:g} MB of frames to hold in memory after {len(frames)} "
                            "frames; use --max-frames (or --max-preload-mb)")
        frames.append(frame)
    return frames


def load_frames(spec: str, max_frames: int | None, gt_path: Path | None, max_mb: float = 4096.0) -> list:
    from fusion.sources import open_source
    from fusion.trajectory import read_tum

    source = open_source(spec, max_frames=max_frames)
    try:
        frames = _preload(source, spec, max_mb)
    finally:
        source.close()
    if not frames:
        raise UserError(f"{spec}: the source gave no frames")
    if gt_path is not None:
        if not gt_path.is_file():
            raise UserError(f"--gt {gt_path}: no such file")
        _, poses = read_tum(gt_path)
        if len(poses) < len(frames):
            raise UserError(f"--gt {gt_path}: {len(poses)} poses for {len(frames)} frames")
        frames = [dataclasses.replace(f, T_world_cam_gt=poses[i]) for i, f in enumerate(frames)]
    return frames
