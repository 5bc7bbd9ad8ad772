"""Owns replay of RealSense recordings (`.bag` ROS1, `.db3` rosbag2) as a frame source.

Frame-exact by default (every frame, in order, as fast as possible): the playback device is set to
non-real-time *before* the pipeline starts, which is the only order that never loses the first frames.
With `RecordingConfig.real_time` the SDK paces frames at the recorded rate instead (live-like; frames
fusion cannot keep up with are dropped by the SDK). Intrinsics, depth scale and the depth-to-colour
extrinsics come from the file.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pyrealsense2 as rs

from fusion.errors import SourceError
from fusion.frame import Frame
from fusion.sources.base import FrameSource
from fusion.sources.recording_start import RecordingStart, read_start
from fusion.sources.rs_common import (FramesetConverter, PostFilterConfig, StreamInfo, depth_scale_of,
                                      device_info, stream_info)

log = logging.getLogger(__name__)

#: first bytes of each container the SDK reads
MAGIC = {".bag": b"#ROSBAG V2.0", ".db3": b"SQLite format 3\x00"}


@dataclass(frozen=True)
class RecordingConfig:
    """How a recording is replayed."""

    real_time: bool = False  # False: every frame, as fast as possible; True: paced at the recorded rate
    poll_timeout_s: float = 0.05  # one wait for the next frameset before checking for end of file
    stall_timeout_s: float = 5.0  # no frame for this long while the file is still playing: an error
    end_grace_s: float = 0.3  # after playback stops, wait this long for framesets still in the SDK
    first_frame_grace_s: float = 3.0  # before the first frame, "stopped" may mean "not started yet"
    replay_retries: int = 6  # a replay that delivered nothing or lost its first frames is tried again this many times
    filters: PostFilterConfig = field(default_factory=PostFilterConfig)


def check_container(path: Path) -> None:
    """Raise SourceError unless `path` exists and starts like the container its suffix names."""
    suffix = path.suffix.lower()
    if suffix not in MAGIC:
        raise SourceError(f"{path}: unsupported recording format {suffix or '(no suffix)'!r}; "
                          "expected a RealSense .bag or .db3")
    if not path.is_file():
        raise SourceError(f"{path}: no such recording")
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC[suffix]))
    if head != MAGIC[suffix]:
        kind = "ROS1 bag" if suffix == ".bag" else "rosbag2 SQLite database"
        raise SourceError(f"{path}: not a RealSense recording (the file does not start like a {kind})")


def _sdk_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _LateStart(Exception):
    """The replay began past the file's first framesets; it is started again."""


class RecordingSource(FrameSource):
    """Replays one recording. Used by one thread at a time (the capture/fusion thread).

    The file is opened and its streams read in the constructor (so a bad file fails early); the SDK
    pipeline runs only while iterating. `__len__` is 0: the SDK does not tell the frame count cheaply.
    """

    kind = "realsense-recording"

    def __init__(self, path: Path, max_frames: int | None = None, config: RecordingConfig | None = None):
        self.path, self.cfg = Path(path), config or RecordingConfig()
        self.max_frames = max_frames
        check_container(self.path)
        try:
            profile = self._open()
            device = profile.get_device()
            info = stream_info(profile.get_streams(), depth_scale_of(device), device_info(device))
        except RuntimeError as exc:
            raise SourceError(f"{self.path}: cannot open recording ({_sdk_message(exc)})") from None
        except SourceError as exc:
            raise SourceError(f"{self.path}: {exc}") from None
        if not info.has_color:
            log.warning("%s has depth but no colour: reconstructing depth only (grey mesh)", self.path)
        self.info: StreamInfo = info
        self._started = self._replayed = False
        self.frames_read = 0
        self._converter: Optional[FramesetConverter] = None
        self._file_start: Optional[RecordingStart] = None

    def _open(self):
        """A fresh pipeline and playback device for the file; real time set before start (no frame
        lost at the start). Returns the resolved profile."""
        self._pipe, self._rs_cfg = rs.pipeline(), rs.config()
        self._rs_cfg.enable_device_from_file(str(self.path), repeat_playback=False)
        profile = self._rs_cfg.resolve(rs.pipeline_wrapper(self._pipe))
        self._playback = profile.get_device().as_playback()
        self._playback.set_real_time(self.cfg.real_time)
        return profile

    def __len__(self) -> int:
        return 0

    def describe(self) -> dict:
        d = {"kind": self.kind, "path": str(self.path), "frames": self.frames_read,
             "real_time": self.cfg.real_time, "depth_only": not self.info.has_color,
             "depth_scale_m_per_unit": self.info.depth_scale_m_per_unit, "fps": self.info.fps}
        if self.info.device is not None:
            d["device"] = {"name": self.info.device.name, "serial": self.info.device.serial}
        if self._converter is not None:
            d["incomplete_framesets"] = self._converter.incomplete
        return d

    def __iter__(self) -> Iterator[Frame]:
        if self._replayed:
            raise SourceError(f"{self.path}: a recording can be replayed once per source; open it again")
        self._replayed = True
        self._converter = FramesetConverter(self.info, self.cfg.filters)
        self._file_start = self._read_start()
        retries = self.cfg.replay_retries
        for attempt in range(retries + 1):
            if attempt:  # the SDK sometimes loses a file's first frames: replay it afresh
                log.info("%s: the replay lost its first frames; replaying it again", self.path)
                try:
                    self._open()
                except RuntimeError as exc:
                    raise SourceError(f"{self.path}: cannot reopen recording ({_sdk_message(exc)})") from None
            self._start()
            try:
                yield from self._frames(may_restart=attempt < retries)
            except _LateStart:
                continue
            finally:
                self.close()
            if self.frames_read or self._converter.incomplete:
                return

    def _start(self) -> None:
        try:
            self._pipe.start(self._rs_cfg)
        except RuntimeError as exc:
            raise SourceError(f"{self.path}: cannot start replay ({_sdk_message(exc)})") from None
        self._started = True

    def _frames(self, may_restart: bool = False) -> Iterator[Frame]:
        poll_ms = max(1, int(self.cfg.poll_timeout_s * 1000))
        last_frame_t = time.monotonic()
        stopped_since: float | None = None  # first poll that saw playback stopped, since the last frame
        while self.max_frames is None or self.frames_read < self.max_frames:
            try:
                ok, fs = self._pipe.try_wait_for_frames(poll_ms)
            except RuntimeError as exc:
                raise SourceError(f"{self.path}: cannot read frame {self.frames_read} ({_sdk_message(exc)})") from None
            now = time.monotonic()
            if not ok:
                if self._at_end(now, stopped_since):
                    return
                if self._playback.current_status() == rs.playback_status.stopped:
                    stopped_since = now if stopped_since is None else stopped_since
                else:
                    stopped_since = None
                if now - last_frame_t > self.cfg.stall_timeout_s:
                    raise SourceError(f"{self.path}: replay stalled after {self.frames_read} frames "
                                      "(truncated or corrupted file?)")
                continue
            last_frame_t, stopped_since = now, None
            frame = self._converter.convert(fs, self.frames_read)
            if frame is not None:
                if not self.frames_read and may_restart and self._started_late(fs):
                    raise _LateStart
                self.frames_read += 1
                yield frame

    def _read_start(self) -> Optional[RecordingStart]:
        """Where the file starts (None when its sensors cannot tell: then a late start goes unnoticed)."""
        try:
            return read_start(self.path, self.info.fps)
        except RuntimeError as exc:
            log.warning("%s: cannot read where the recording starts (%s)", self.path, _sdk_message(exc))
            return None

    def _started_late(self, fs) -> bool:
        """True when the first frameset comes after the file's first frames: the SDK's pipeline
        sometimes drops the first framesets of a replay (seen on a loaded machine, even with real time
        off)."""
        if self._file_start is None:
            return False
        fs = fs.as_frameset()
        color = fs.get_color_frame()
        return self._file_start.missed(float(fs.get_depth_frame().get_timestamp()),
                                       float(color.get_timestamp()) if color else None)

    def _at_end(self, now: float, stopped_since: float | None) -> bool:
        """End of file: playback has stayed stopped with nothing delivered for a grace period.

        The SDK's syncer may still hold the last frameset a moment after playback stops; and before
        the first frame, "stopped" may only mean the playback thread has not started yet (it reads
        "stopped" before `start`), so the first frame gets a longer grace."""
        if stopped_since is None:
            return False
        grace_s = self.cfg.end_grace_s if self.frames_read else self.cfg.first_frame_grace_s
        return now - stopped_since > grace_s

    def close(self) -> None:
        if self._started:
            self._started = False
            try:
                self._pipe.stop()
            except RuntimeError:  # already stopped by the SDK at end of file
                pass
