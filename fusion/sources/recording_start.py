"""Owns knowing where a RealSense recording starts, so a replay can tell that it lost its first frames.

The SDK's pipeline sometimes drops the first framesets of a replay on a loaded machine, even with real
time off (seen: 2 to 52 of them). The playback position cannot tell (it reads 0 at the first delivered
frame either way), but the file can: reading the playback device's sensors directly (their callbacks
see every frame) gives the first depth and colour timestamps, and a replay whose first frameset has
both streams later than those started late. Any thread; it opens its own playback device.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pyrealsense2 as rs

STREAMS = {rs.stream.depth: "depth", rs.stream.color: "color"}


@dataclass(frozen=True)
class RecordingStart:
    """The first depth and colour timestamps of a file (ms, the SDK's clock; colour None without it)
    and the depth stream's frame period."""

    depth_ms: float
    color_ms: float | None
    period_ms: float

    def missed(self, depth_ms: float, color_ms: float | None) -> bool:
        """True when a first frameset with these timestamps comes after the file's first frames: every
        stream it holds is more than half a frame period late. (The syncer may pair the first colour
        frame with the second depth frame; that is not a loss.)"""
        late = depth_ms > self.depth_ms + self.period_ms / 2
        if color_ms is not None and self.color_ms is not None:
            late = late and color_ms > self.color_ms + self.period_ms / 2
        return late


def read_start(path: Path, fps: float, wait_s: float = 3.0) -> RecordingStart | None:
    """The start of `path` (None when its sensors gave no depth frame within `wait_s`)."""
    device = rs.context().load_device(str(path))
    playback = device.as_playback()
    playback.set_real_time(False)
    first: dict[str, float] = {}
    wanted = set()
    done = threading.Event()

    def on_frame(frame) -> None:  # SDK thread
        name = STREAMS.get(frame.get_profile().stream_type())
        if name is not None and name not in first:
            first[name] = float(frame.get_timestamp())
            if wanted <= first.keys():
                done.set()

    sensors = []
    for sensor in device.query_sensors():
        profiles = [p for p in sensor.get_stream_profiles() if p.stream_type() in STREAMS]
        if profiles:
            wanted.update(STREAMS[p.stream_type()] for p in profiles)
            sensor.open(profiles)
            sensors.append(sensor)
    try:
        playback.pause()  # every sensor listens before the first frame plays
        for sensor in sensors:
            sensor.start(on_frame)
        playback.resume()
        done.wait(wait_s)
    finally:
        for sensor in sensors:
            try:
                sensor.stop()
                sensor.close()
            except RuntimeError:  # already stopped at the end of a short file
                pass
    if "depth" not in first:
        return None
    return RecordingStart(first["depth"], first.get("color"), 1000.0 / max(fps, 1e-3))
