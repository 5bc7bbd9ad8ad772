"""Owns recording a RealSense camera to a file with the SDK's own recorder (`record` command).

The file is what the installed SDK writes (`.db3` rosbag2 on 2.58 and newer, `.bag` ROS1 before),
so it opens in the RealSense Viewer and replays here. Recording while scanning uses the same path
through `LiveSource.start_recording`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from fusion.errors import UserError

log = logging.getLogger(__name__)

#: first SDK version that writes rosbag2 (.db3) instead of ROS1 (.bag)
DB3_SINCE = (2, 58)


@dataclass(frozen=True)
class RecordConfig:
    """What `record` captures."""

    seconds_s: Optional[float] = None  # None: until Ctrl-C
    live: "object" = None  # LiveConfig (serial, modes, preset); None: defaults
    progress_every_s: float = 1.0  # how often the frame count is logged


def sdk_extension(version: Optional[str] = None) -> str:
    """The recording extension the installed (or given) SDK version writes."""
    if version is None:
        import pyrealsense2 as rs

        version = rs.__version__
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return ".db3" if parts >= DB3_SINCE else ".bag"


def recording_path(requested: Path, version: Optional[str] = None) -> Path:
    """`requested` with the extension the SDK writes; says so when the user asked for the other one."""
    ext = sdk_extension(version)
    suffix = requested.suffix.lower()
    if suffix == ext:
        return requested
    path = requested.with_suffix(ext) if suffix in (".bag", ".db3") else requested.with_name(requested.name + ext)
    if suffix in (".bag", ".db3"):
        log.warning("the installed RealSense SDK writes %s files, not %s: recording to %s", ext, suffix, path)
    else:
        log.info("recording to %s", path)
    return path


@dataclass
class RecordResult:
    path: Path
    frames: int = 0
    seconds_s: float = 0.0
    extra: dict = field(default_factory=dict)


def record(out: Path, config: RecordConfig = RecordConfig(),
           on_frame: Optional[Callable[[int], None]] = None) -> RecordResult:
    """Record the camera to `out` (extension adjusted) for `config.seconds_s` or until Ctrl-C."""
    from fusion.sources.realsense import LiveConfig, choose_device, open_live

    if config.seconds_s is not None and config.seconds_s <= 0:
        raise UserError("--seconds must be positive")
    live = config.live or LiveConfig()
    choose_device(live.serial)  # no camera: one clear line before anything else is said
    path = recording_path(Path(out))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {path.parent}: {exc.strerror}") from None
    source = open_live(live, record_to=path)
    result = RecordResult(path)
    t0 = last_log = time.monotonic()
    try:
        for frame in source:
            result.frames += 1
            now = time.monotonic()
            if on_frame:
                on_frame(result.frames)
            if now - last_log >= config.progress_every_s:
                log.info("recorded %d frames (%.0f s)", result.frames, now - t0)
                last_log = now
            if config.seconds_s is not None and now - t0 >= config.seconds_s:
                break
    except KeyboardInterrupt:
        log.info("stopped by Ctrl-C")
    finally:
        result.seconds_s = time.monotonic() - t0
        result.extra = source.describe()
        source.close()
    return result
