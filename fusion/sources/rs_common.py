"""Owns what live RealSense capture and recording replay share: device listing, stream metadata,
SDK post-filters and the frameset -> `Frame` conversion (depth aligned to colour by the SDK).

Everything here is read from the device or file (depth scale, intrinsics, extrinsics); nothing is
assumed. Only `pyrealsense2` and numpy are imported; no Qt.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyrealsense2 as rs

from fusion.errors import SourceError
from fusion.frame import Frame, Intrinsics
from fusion.sources.imu import AccelConfig, AccelFilter, rotation_from_sdk

log = logging.getLogger(__name__)

#: colour filled in when a recording has depth but no colour (mid grey -> a grey mesh)
DEPTH_ONLY_GREY = 128
_RGB_FORMATS = {rs.format.rgb8: (3, False), rs.format.bgr8: (3, True),
                rs.format.rgba8: (4, False), rs.format.bgra8: (4, True)}


@dataclass(frozen=True)
class PostFilterConfig:
    """Optional SDK depth post-filters, run on raw depth before alignment (Intel's recommended order)."""

    spatial: bool = False  # edge-preserving spatial smoothing (rs.spatial_filter)
    temporal: bool = False  # smoothing across frames (rs.temporal_filter); assumes a slow camera
    hole_filling: bool = False  # fill holes from neighbours (rs.hole_filling_filter)


@dataclass(frozen=True)
class DeviceInfo:
    """One RealSense device as the SDK reports it."""

    name: str
    serial: str
    firmware: str
    usb_type: str

    def line(self) -> str:
        return f"{self.name} (serial {self.serial}, firmware {self.firmware}, USB {self.usb_type})"


@dataclass(frozen=True)
class StreamInfo:
    """Metadata of an opened device or file: depth scale and the streams' intrinsics (pixels)."""

    depth_scale_m_per_unit: float
    depth_intrinsics: Intrinsics
    color_intrinsics: Optional[Intrinsics]  # None: depth-only
    depth_to_color_rotation: tuple = ()  # 9 floats, column-major, as the SDK reports them
    depth_to_color_translation_m: tuple = ()
    fps: int = 0
    device: Optional[DeviceInfo] = None
    accel_to_cam_rotation: Optional[tuple] = None  # 9 floats, column-major; None: no accelerometer stream

    @property
    def has_accel(self) -> bool:
        return self.accel_to_cam_rotation is not None

    @property
    def has_color(self) -> bool:
        return self.color_intrinsics is not None

    @property
    def already_registered(self) -> bool:
        """Depth and colour share intrinsics and pose: alignment would only add the SDK's rounding holes."""
        return (self.has_color and self.depth_intrinsics == self.color_intrinsics
                and np.allclose(self.depth_to_color_rotation, np.eye(3).ravel(), atol=1e-9)
                and np.allclose(self.depth_to_color_translation_m, 0.0, atol=1e-9))


def _info(dev, what) -> str:
    return dev.get_info(what) if dev.supports(what) else "unknown"


def device_info(dev) -> DeviceInfo:
    """Name, serial, firmware and USB type of an `rs.device` ("unknown" where it does not say)."""
    ci = rs.camera_info
    return DeviceInfo(_info(dev, ci.name), _info(dev, ci.serial_number), _info(dev, ci.firmware_version),
                      _info(dev, ci.usb_type_descriptor))


def list_devices(context=None) -> list[DeviceInfo]:
    """Every RealSense device the SDK sees now (empty when none is attached)."""
    ctx = context or rs.context()
    return [device_info(d) for d in ctx.query_devices()]


def intrinsics_of(profile) -> Intrinsics:
    """`Intrinsics` of an `rs.video_stream_profile`."""
    i = profile.as_video_stream_profile().get_intrinsics()
    return Intrinsics(float(i.fx), float(i.fy), float(i.ppx), float(i.ppy), int(i.width), int(i.height))


def stream_info(streams, depth_scale: float, device: DeviceInfo | None) -> StreamInfo:
    """StreamInfo from a list of stream profiles; refuses a set of streams without depth."""
    by_type = {s.stream_type(): s for s in streams}
    depth, color = by_type.get(rs.stream.depth), by_type.get(rs.stream.color)
    if depth is None:
        kinds = ", ".join(sorted(str(t).split(".")[-1] for t in by_type)) or "none"
        raise SourceError(f"no depth stream (streams: {kinds}); a depth stream is needed to reconstruct")
    if depth_scale <= 0:
        raise SourceError(f"depth scale {depth_scale} m/unit is not positive")
    rot, trans = (), ()
    if color is not None:
        if color.format() not in _RGB_FORMATS:
            raise SourceError(f"colour stream format {color.format()} is not supported (need rgb8/bgr8/rgba8/bgra8)")
        ex = depth.get_extrinsics_to(color)
        rot, trans = tuple(float(v) for v in ex.rotation), tuple(float(v) for v in ex.translation)
    return StreamInfo(float(depth_scale), intrinsics_of(depth), None if color is None else intrinsics_of(color),
                      rot, trans, int(depth.fps()), device, accel_rotation(by_type.get(rs.stream.accel), depth, color))


def accel_rotation(accel, depth, color) -> Optional[tuple]:
    """Rotation (9 floats, column-major) from the accelerometer's axes to the frame's (colour's, to which
    depth is aligned; else depth's); None without an accelerometer, identity when no extrinsics say."""
    if accel is None:
        return None
    for target in (color, depth):
        try:
            R = rotation_from_sdk(accel.get_extrinsics_to(target).rotation) if target is not None else None
        except RuntimeError:  # not in the file: try the other stream
            continue
        if R is not None:
            if target is depth and color is not None:
                R = rotation_from_sdk(depth.get_extrinsics_to(color).rotation) @ R
            return tuple(float(v) for v in R.T.reshape(-1))
    log.warning("the accelerometer's extrinsics are missing: its axes are taken as the camera's")
    return tuple(float(v) for v in np.eye(3).reshape(-1))


def depth_scale_of(device) -> float:
    """Metres per depth unit, read from the device's depth sensor (0.0 without one; see stream_info)."""
    for s in device.query_sensors():
        if s.is_depth_sensor():
            return float(s.as_depth_sensor().get_depth_scale())
    return 0.0


class FramesetConverter:
    """Turns SDK framesets into `Frame`s: post-filters, align depth to colour, scale to metres.

    Used by one thread at a time (the SDK filters keep per-stream state, e.g. the temporal filter).
    """

    def __init__(self, info: StreamInfo, filters: PostFilterConfig = PostFilterConfig(),
                 accel: AccelConfig = AccelConfig()):
        self.info = info
        self.accel = AccelFilter(rotation_from_sdk(info.accel_to_cam_rotation), accel) if info.has_accel else None
        self._with_color = info.has_color
        self._align = rs.align(rs.stream.color) if info.has_color and not info.already_registered else None
        self._filters = self._build_filters(filters)
        self.incomplete = 0  # framesets skipped because a stream was missing

    @staticmethod
    def _build_filters(cfg: PostFilterConfig) -> list:
        chain = []
        if cfg.spatial or cfg.temporal:
            chain.append(rs.disparity_transform(True))
            chain += [rs.spatial_filter()] if cfg.spatial else []
            chain += [rs.temporal_filter()] if cfg.temporal else []
            chain.append(rs.disparity_transform(False))
        if cfg.hole_filling:
            chain.append(rs.hole_filling_filter())
        return chain

    def take_motion(self, fs) -> bool:
        """Keep the accelerometer samples of a frameset (any thread); True when it holds nothing else."""
        fs = fs.as_frameset()
        video = False
        for f in fs:
            if not f.is_motion_frame():
                video = True
            elif self.accel is not None and f.get_profile().stream_type() == rs.stream.accel:
                v = f.as_motion_frame().get_motion_data()
                self.accel.add(fs_timestamp_s(f), (v.x, v.y, v.z))
        return not video

    def convert(self, fs, index: int) -> Optional[Frame]:
        """The `Frame` of a frameset, or None (counted in `incomplete`) when a stream is missing; a
        frameset of motion samples alone gives None too (not counted)."""
        fs = fs.as_frameset()
        if self.take_motion(fs):
            return None
        if not fs.get_depth_frame() or (self._with_color and not fs.get_color_frame()):
            self.incomplete += 1  # e.g. the SDK syncer's first, unpaired framesets
            return None
        for f in self._filters:  # on the frameset: the filter replaces depth, keeps colour
            fs = f.process(fs).as_frameset()
        if self._align is not None:
            fs = self._align.process(fs)
        depth, color = fs.get_depth_frame(), (fs.get_color_frame() if self._with_color else None)
        if not depth or (self._with_color and not color):
            self.incomplete += 1
            return None
        return self._to_frame(depth, color, fs_timestamp_s(depth), index)

    def _to_frame(self, depth, color, timestamp_s: float, index: int) -> Frame:
        raw = np.asanyarray(depth.get_data())  # a view of the SDK buffer: copied by the scaling below
        depth_m = raw.astype(np.float32) * np.float32(self.info.depth_scale_m_per_unit)
        intr = intrinsics_of(depth.get_profile())
        if color is None:
            rgb = np.full(raw.shape + (3,), DEPTH_ONLY_GREY, np.uint8)
        else:
            channels, bgr = _RGB_FORMATS[color.get_profile().format()]
            img = np.asanyarray(color.get_data())
            rgb = img[..., :3][..., ::-1] if bgr else img[..., :3]
            rgb = np.array(rgb, dtype=np.uint8, order="C", copy=True)  # never keep the SDK's buffer
        accel = None if self.accel is None else self.accel.at(timestamp_s)
        return Frame(rgb, depth_m, intr, timestamp_s, index, accel_cam=accel)


def fs_timestamp_s(frame) -> float:
    """The SDK timestamp of a frame in seconds (the SDK reports milliseconds)."""
    return float(frame.get_timestamp()) / 1000.0
