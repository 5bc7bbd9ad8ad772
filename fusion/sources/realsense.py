"""Owns live RealSense capture as a frame source: device choice, stream mode, visual preset, the
pipeline (with an on/off recording toggle) and the newest-only capture loop.

`open_live(LiveConfig(...))` opens a camera; `LiveSource` itself only needs something with the
SDK's `try_wait_for_frames`, so tests drive the same class from a software device.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pyrealsense2 as rs

from fusion.errors import SourceError, UserError
from fusion.frame import Frame
from fusion.sources.base import FrameSource
from fusion.sources.capture import CaptureThread, NewestSlot
from fusion.sources.rs_common import (DeviceInfo, FramesetConverter, PostFilterConfig, StreamInfo,
                                      depth_scale_of, device_info, list_devices, stream_info)

log = logging.getLogger(__name__)

#: (depth w, depth h, colour w, colour h, fps), tried in order: D415/D435/D455 take the first,
#: L515 (no 848x480 depth, no 640x480 colour) the last.
DEFAULT_MODES = ((848, 480, 848, 480, 30), (640, 480, 640, 480, 30), (640, 480, 960, 540, 30))
PRESETS = {"default": "Default", "high_accuracy": "High Accuracy", "high_density": "High Density"}


@dataclass(frozen=True)
class LiveConfig:
    """How a camera is opened and read."""

    serial: Optional[str] = None  # None: the first camera found
    modes: tuple = DEFAULT_MODES  # (depth_w_px, depth_h_px, color_w_px, color_h_px, fps) tried in order
    preset: str = "high_accuracy"  # visual preset: default | high_accuracy | high_density
    filters: PostFilterConfig = field(default_factory=PostFilterConfig)  # SDK depth post-filters
    frame_timeout_s: float = 3.0  # no frame for this long: the camera is gone (SourceError)
    poll_timeout_s: float = 0.1  # one wait of the capture loop
    join_timeout_s: float = 2.0  # bound on joining the capture thread in close()
    imu: bool = True  # stream the accelerometer too when the camera has one (gravity for the world frame)


def no_camera_message(found: list[DeviceInfo], serial: Optional[str]) -> str:
    """One line saying what was asked for and what the SDK found."""
    seen = "; ".join(d.line() for d in found) or "none"
    want = f"with serial {serial}" if serial else "attached"
    return f"no RealSense camera {want} (found: {seen}); plug one in via USB 3, or replay a .bag/.db3 file"


def choose_device(serial: Optional[str]) -> DeviceInfo:
    found = list_devices()
    for d in found:
        if serial is None or d.serial == serial:
            return d
    raise SourceError(no_camera_message(found, serial))


def _set_preset(device, name: str) -> None:
    if name not in PRESETS:
        raise UserError(f"unknown visual preset {name!r}; expected one of {', '.join(PRESETS)}")
    sensor = device.first_depth_sensor()
    if not sensor.supports(rs.option.visual_preset):
        log.warning("this camera has no visual presets; using its defaults")
        return
    r = sensor.get_option_range(rs.option.visual_preset)
    for v in range(int(r.min), int(r.max) + 1):
        if sensor.get_option_value_description(rs.option.visual_preset, v) == PRESETS[name]:
            sensor.set_option(rs.option.visual_preset, v)
            log.info("visual preset: %s", PRESETS[name])
            return
    log.warning("this camera has no %r preset; using its default", PRESETS[name])


class PipelineCamera:
    """Owns one camera's `rs.pipeline`; recording can be switched on and off while streaming.

    `try_wait_for_frames` runs on the capture thread; `start`/`set_recording`/`stop` on the thread
    that owns the source. A lock keeps a restart (to start or stop recording) from racing a read.
    """

    def __init__(self, serial: str, modes: tuple, imu: bool = True):
        self.serial, self._modes, self._imu = serial, modes, imu
        self._lock = threading.Lock()
        self._pipe: Optional[rs.pipeline] = None
        self.mode: Optional[tuple] = None
        self.recording_path: Optional[Path] = None

    def _config(self, mode, record_to: Optional[Path]) -> rs.config:
        dw, dh, cw, ch, fps = mode
        cfg = rs.config()
        cfg.enable_device(self.serial)
        cfg.enable_stream(rs.stream.depth, dw, dh, rs.format.z16, fps)
        cfg.enable_stream(rs.stream.color, cw, ch, rs.format.rgb8, fps)
        if self._imu:
            cfg.enable_stream(rs.stream.accel)
        if record_to is not None:
            cfg.enable_record_to_file(str(record_to))
        return cfg

    def start(self, record_to: Optional[Path] = None):
        """Start streaming (in the first mode the camera supports); returns the pipeline profile."""
        pipe = rs.pipeline()
        mode = self._resolve(pipe)
        try:
            profile = pipe.start(self._config(mode, record_to))
        except RuntimeError as exc:
            raise SourceError(f"cannot start camera {self.serial}: {str(exc).strip()[:200]}") from None
        with self._lock:
            self._pipe, self.mode, self.recording_path = pipe, mode, record_to
        log.info("streaming depth %dx%d, colour %dx%d at %d fps%s", *mode, " and the accelerometer" * self._imu)
        return profile

    def _resolve(self, pipe) -> tuple:
        """The first stream mode the camera supports, with the accelerometer when it has one."""
        modes = (self.mode,) if self.mode else self._modes
        for imu in dict.fromkeys((self._imu, False)):
            self._imu = imu
            for mode in modes:
                if self._config(mode, None).can_resolve(rs.pipeline_wrapper(pipe)):
                    return mode
        raise SourceError(f"camera {self.serial} supports none of the stream modes {list(self._modes)}")

    def try_wait_for_frames(self, timeout_ms: int):
        with self._lock:
            if self._pipe is None:
                return False, None
            return self._pipe.try_wait_for_frames(timeout_ms)

    def set_recording(self, path: Optional[Path]) -> None:
        """Restart the pipeline recording to `path` (None: not recording); a gap of about a second."""
        self.stop()
        self.start(path)

    def stop(self) -> None:
        with self._lock:
            pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.stop()  # closes the recording file, if any


class LiveSource(FrameSource):
    """Frames from a live stream, newest first: fusion never makes the camera wait.

    Iterated by one thread (the fusion thread); the capture loop runs on its own thread, started by
    `__iter__` and joined by `close()`. `frames` is anything with `try_wait_for_frames(timeout_ms)`.
    """

    kind = "realsense"

    def __init__(self, frames, info: StreamInfo, config: LiveConfig = LiveConfig(),
                 max_frames: int | None = None, camera: Optional[PipelineCamera] = None):
        self.info, self.cfg, self.max_frames = info, config, max_frames
        self._frames, self._camera = frames, camera
        self.slot = NewestSlot()
        self._capture: Optional[CaptureThread] = None
        self._converter = FramesetConverter(info, config.filters)
        self.frames_read = 0

    def __len__(self) -> int:
        return 0  # live: unknown

    def describe(self) -> dict:
        d = {"kind": self.kind, "frames": self.frames_read, "frames_dropped_capture": self.slot.dropped,
             "framesets_received": self.slot.delivered, "incomplete_framesets": self._converter.incomplete,
             "depth_scale_m_per_unit": self.info.depth_scale_m_per_unit, "fps": self.info.fps}
        if self.info.device is not None:
            d["device"] = {"name": self.info.device.name, "serial": self.info.device.serial,
                           "firmware": self.info.device.firmware, "usb": self.info.device.usb_type}
        return d

    def start(self) -> None:
        """Start the capture loop now (iterating starts it too); safe to call twice."""
        if self._capture is None:
            self._capture = CaptureThread(self._frames.try_wait_for_frames, self.slot,
                                          self.cfg.frame_timeout_s, self.cfg.poll_timeout_s,
                                          self._converter.take_motion)
            self._capture.start()

    def __iter__(self) -> Iterator[Frame]:
        self.start()
        try:
            while self.max_frames is None or self.frames_read < self.max_frames:
                fs = self.slot.take(self.cfg.poll_timeout_s)  # raises SourceError when the camera is gone
                if fs is None:
                    continue
                frame = self._converter.convert(fs, self.frames_read)
                if frame is not None:
                    self.frames_read += 1
                    yield frame
        finally:
            self._stop_capture()

    # recording toggle, for the GUI (the fusion thread owns the source)
    @property
    def recording_path(self) -> Optional[Path]:
        return None if self._camera is None else self._camera.recording_path

    def start_recording(self, path: Path) -> Path:
        """Record the camera to `path` (extension fixed to what the SDK writes); returns the path used."""
        from fusion.recorder import recording_path

        if self._camera is None:
            raise UserError("this source cannot record (not a camera)")
        path = recording_path(Path(path))
        self._camera.set_recording(path)
        return path

    def stop_recording(self) -> Optional[Path]:
        """Stop recording; returns the closed file's path (None when not recording)."""
        path = self.recording_path
        if path is not None:
            self._camera.set_recording(None)
        return path

    def _stop_capture(self) -> None:
        if self._capture is not None:
            self._capture.stop()
            if not self._capture.join(self.cfg.join_timeout_s):
                log.warning("capture thread did not end within %.1f s", self.cfg.join_timeout_s)
            self._capture = None

    def close(self) -> None:
        self._stop_capture()
        if self._camera is not None:
            self._camera.stop()


def open_live(config: LiveConfig = LiveConfig(), max_frames: int | None = None,
              record_to: Optional[Path] = None) -> LiveSource:
    """Open the camera `config.serial` (or the first one) and start streaming."""
    dev = choose_device(config.serial)
    camera = PipelineCamera(dev.serial, config.modes, config.imu)
    profile = camera.start(record_to)
    try:
        device = profile.get_device()
        _set_preset(device, config.preset)
        info = stream_info(profile.get_streams(), depth_scale_of(device), device_info(device))
    except Exception:
        camera.stop()
        raise
    log.info("opened %s", info.device.line())
    return LiveSource(camera, info, config, max_frames, camera)
