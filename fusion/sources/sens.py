"""Owns reading ScanNet `.sens` files (SensorData version 4): the header at open, frames streamed lazily.

Layout (little-endian): uint32 version (4); uint64 length + sensor name; four 4x4 float32 matrices
(colour intrinsics, colour extrinsics, depth intrinsics, depth extrinsics); int32 colour codec
(-1 unknown, 0 raw, 1 png, 2 jpeg); int32 depth codec (-1 unknown, 0 raw_ushort, 1 zlib_ushort,
2 occi_ushort); uint32 colour width, height, depth width, height; float32 depth shift (units per
metre); uint64 frame count. Then per frame: 4x4 float32 camera-to-world pose, uint64 colour and depth
timestamps (microseconds), uint64 colour and depth byte counts, the colour bytes, the depth bytes.

Intrinsics come from the depth intrinsics; colour of another size is resized to the depth size (the
size policy of `fusion.sources.folder`; ScanNet's colour and depth cameras share a field of view and
its extrinsics are identities). ScanNet marks a frame whose pose it could not compute with -inf: such
frames (any non-finite pose) get `T_world_cam_gt=None`. Many files carry all-zero timestamps: when the
first two frames' depth timestamps are both 0, frame i gets i / frame_rate_hz seconds.
"""
from __future__ import annotations

import io
import logging
import struct
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import numpy as np
from PIL import Image

from fusion.errors import SourceError
from fusion.frame import Frame, Intrinsics
from fusion.sources.base import FrameSource
from fusion.sources.folder import check_max_frames
from fusion.sources.images import check_pose, intrinsics_from_k, resize_color

log = logging.getLogger(__name__)

SUFFIX = ".sens"
VERSION = 4
COLOR_CODECS = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_CODECS = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
SUPPORTED_COLOR = ("raw", "png", "jpeg")
SUPPORTED_DEPTH = ("raw_ushort", "zlib_ushort")

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_MATRICES = struct.Struct("<64f")  # colour K, colour extrinsics, depth K, depth extrinsics
_TAIL = struct.Struct("<iiIIIIfQ")  # codecs, colour w h, depth w h, depth shift, frame count
FRAME_HEAD = struct.Struct("<16f4Q")  # pose, colour/depth timestamps, colour/depth byte counts
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class SensConfig:
    """Settings of the `.sens` reader."""

    frame_rate_hz: float = 30.0  # timestamps are index / frame_rate_hz when the file's are all 0
    timestamp_units_per_s: float = 1e6  # file timestamps are microseconds
    max_sensor_name_bytes: int = 4096  # a longer sensor name means a corrupt header
    max_image_side_px: int = 16384  # a wider or taller image means a corrupt header


@dataclass(frozen=True)
class SensHeader:
    """What a `.sens` header says (matrices float64, sizes (width, height) in pixels)."""

    sensor_name: str
    K_color: np.ndarray
    T_color_extrinsics: np.ndarray
    K_depth: np.ndarray
    T_depth_extrinsics: np.ndarray
    color_codec: str
    depth_codec: str
    color_size: tuple[int, int]
    depth_size: tuple[int, int]
    depth_shift: float  # raw depth units per metre
    n_frames: int
    data_offset: int  # byte offset of frame 0


def _read_exact(fh: BinaryIO, n: int, fail: str) -> bytes:
    """Exactly n bytes, else SourceError(fail)."""
    data = fh.read(n)
    if len(data) != n:
        raise SourceError(fail)
    return data


def _codec(table: dict, code: int, supported: tuple, what: str, path: Path) -> str:
    name = table.get(code)
    if name is None:
        raise SourceError(f"{path}: corrupt header ({what} compression type {code} is not a ScanNet one)")
    if name not in supported:
        raise SourceError(f"{path}: {what} compression '{name}' is not supported "
                          f"(supported: {', '.join(supported)})")
    return name


def read_header(path: Path, config: SensConfig = SensConfig()) -> SensHeader:
    """Parse and check the header; SourceError (one line) for a missing, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such .sens file")
    short = f"{path}: truncated or not a ScanNet .sens file (the header is incomplete)"
    with open(path, "rb") as fh:
        (version,) = _U32.unpack(_read_exact(fh, 4, short))
        if version != VERSION:
            raise SourceError(f"{path}: not a ScanNet .sens version {VERSION} file (version field is {version})")
        (name_len,) = _U64.unpack(_read_exact(fh, 8, short))
        if name_len > config.max_sensor_name_bytes:
            raise SourceError(f"{path}: corrupt header (sensor name of {name_len} bytes)")
        name = _read_exact(fh, name_len, short).decode("utf-8", errors="replace")
        mats = np.array(_MATRICES.unpack(_read_exact(fh, _MATRICES.size, short)), np.float64).reshape(4, 4, 4)
        c_code, d_code, cw, ch, dw, dh, shift, n_frames = _TAIL.unpack(_read_exact(fh, _TAIL.size, short))
        offset = fh.tell()
    color_codec = _codec(COLOR_CODECS, c_code, SUPPORTED_COLOR, "colour", path)
    depth_codec = _codec(DEPTH_CODECS, d_code, SUPPORTED_DEPTH, "depth", path)
    if not all(0 < s <= config.max_image_side_px for s in (cw, ch, dw, dh)):
        raise SourceError(f"{path}: corrupt header (colour {cw}x{ch}, depth {dw}x{dh})")
    if not (np.isfinite(shift) and shift > 0):
        raise SourceError(f"{path}: corrupt header (depth shift {shift:g} must be positive)")
    if n_frames == 0:
        raise SourceError(f"{path}: holds no frames")
    return SensHeader(name, mats[0], mats[1], mats[2], mats[3], color_codec, depth_codec,
                      (cw, ch), (dw, dh), float(shift), int(n_frames), offset)


class SensSource(FrameSource):
    """Frames of one ScanNet `.sens` file. Used by one thread at a time (the capture/fusion thread).

    The header and frame 0's pose and timestamp are read in the constructor (a bad file fails early);
    frames are read one at a time while iterating, so memory holds one frame. A frame cut short by the
    end of the file raises SourceError naming it, after the frames before it were yielded.
    """

    kind = "scannet-sens"

    def __init__(self, path, max_frames: Optional[int] = None, config: SensConfig = SensConfig()):
        self.path, self.config = Path(path), config
        self.header = read_header(self.path, config)
        h = self.header
        self.intrinsics: Intrinsics = intrinsics_from_k(
            h.K_depth[:3, :3], *h.depth_size, f"{self.path} (depth intrinsics)")
        self.n_frames = min(h.n_frames, check_max_frames(max_frames) or h.n_frames)
        self._file_size = self.path.stat().st_size
        self._first_pose, self._recorded_stamps = self._peek()
        self._live: "weakref.WeakSet" = weakref.WeakSet()
        self._warned_resize = False
        self.frames_without_pose = 0

    @classmethod
    def detect(cls, path: Path) -> bool:
        """True for a file named `*.sens`."""
        return Path(path).suffix.lower() == SUFFIX

    def __len__(self) -> int:
        return self.n_frames

    @property
    def has_gt_poses(self) -> bool:
        """True when frame 0 has a valid pose (ScanNet files carry one per frame; a few are -inf)."""
        return self._first_pose is not None

    def first_gt_pose(self) -> Optional[np.ndarray]:
        return None if self._first_pose is None else self._first_pose.copy()

    def describe(self) -> dict:
        h, intr = self.header, self.intrinsics
        return {
            "kind": self.kind, "path": str(self.path), "frames": len(self), "sensor": h.sensor_name,
            "has_gt_poses": self.has_gt_poses, "frames_without_pose": self.frames_without_pose,
            "intrinsics": {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy,
                           "width": intr.width, "height": intr.height},
            "color": {"codec": h.color_codec, "width": h.color_size[0], "height": h.color_size[1]},
            "depth": {"codec": h.depth_codec, "units_per_m": h.depth_shift},
        }

    def __iter__(self) -> Iterator[Frame]:
        frames = self._frames()
        self._live.add(frames)
        return frames

    def close(self) -> None:
        """Close the file of every iteration still open; safe to call twice."""
        for frames in list(self._live):
            frames.close()

    def _peek(self) -> tuple[Optional[np.ndarray], bool]:
        """(frame 0's pose, whether timestamps are recorded) from the first two frame heads."""
        with open(self.path, "rb") as fh:
            fh.seek(self.header.data_offset)
            head = self._read_head(fh, 0)
            stamps = [head[17]]
            if self.header.n_frames > 1:
                fh.seek(head[18] + head[19], io.SEEK_CUR)
                second = fh.read(FRAME_HEAD.size)  # a short read here is reported when iterating
                if len(second) == FRAME_HEAD.size:
                    stamps.append(FRAME_HEAD.unpack(second)[17])
        return self._pose(head[:16], 0), any(s != 0 for s in stamps)

    def _frames(self) -> Iterator[Frame]:
        with open(self.path, "rb") as fh:
            fh.seek(self.header.data_offset)
            for index in range(self.n_frames):
                yield self._read_frame(fh, index)

    def _read_head(self, fh: BinaryIO, index: int) -> tuple:
        where = fh.tell()
        data = fh.read(FRAME_HEAD.size)
        if len(data) != FRAME_HEAD.size:
            raise SourceError(f"{self.path}: frame {index} is truncated (the file ends at byte "
                              f"{where + len(data)}; the header says {self.header.n_frames} frames)")
        head = FRAME_HEAD.unpack(data)
        if head[18] + head[19] > self._file_size - fh.tell():
            raise SourceError(f"{self.path}: frame {index} is truncated (its {head[18]} colour and "
                              f"{head[19]} depth bytes run past the end of the file)")
        return head

    def _read_frame(self, fh: BinaryIO, index: int) -> Frame:
        head = self._read_head(fh, index)
        fail = f"{self.path}: frame {index} is truncated"
        color_bytes = _read_exact(fh, head[18], fail)
        depth_bytes = _read_exact(fh, head[19], fail)
        depth = self._decode_depth(depth_bytes, index)
        color = self._decode_color(color_bytes, index)
        pose = self._pose(head[:16], index)
        if pose is None:
            self.frames_without_pose += 1
        if self._recorded_stamps:
            stamp_s = head[17] / self.config.timestamp_units_per_s
        else:
            stamp_s = index / self.config.frame_rate_hz
        return Frame(color, depth, self.intrinsics, float(stamp_s), index, pose)

    def _pose(self, values: tuple, index: int) -> Optional[np.ndarray]:
        T = np.array(values, np.float64).reshape(4, 4)
        if not np.all(np.isfinite(T)):
            return None
        return check_pose(T, f"{self.path} (frame {index})")

    def _decode_depth(self, data: bytes, index: int) -> np.ndarray:
        """(H, W) float32 metres; raw 0 stays 0 (invalid)."""
        width, height = self.header.depth_size
        if self.header.depth_codec == "zlib_ushort":
            try:
                data = zlib.decompress(data)
            except zlib.error as exc:
                raise SourceError(f"{self.path}: frame {index}: corrupt zlib depth ({exc})") from None
        if len(data) != width * height * 2:
            raise SourceError(f"{self.path}: frame {index}: depth holds {len(data)} bytes, "
                              f"expected {width * height * 2} for {width}x{height} uint16")
        raw = np.frombuffer(data, "<u2").reshape(height, width)
        return raw.astype(np.float32) / np.float32(self.header.depth_shift)

    def _decode_color(self, data: bytes, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB at the depth size."""
        if self.header.color_codec == "raw":
            width, height = self.header.color_size
            if len(data) != width * height * 3:
                raise SourceError(f"{self.path}: frame {index}: raw colour holds {len(data)} bytes, "
                                  f"expected {width * height * 3} for {width}x{height} RGB")
            color = np.frombuffer(data, np.uint8).reshape(height, width, 3)
        else:
            color = self._decode_image(data, index)
        intr = self.intrinsics
        if color.shape[:2] != (intr.height, intr.width):
            if not self._warned_resize:
                log.info("%s: colour %dx%d differs from depth %dx%d; resizing colour to the depth size",
                         self.path, color.shape[1], color.shape[0], intr.width, intr.height)
                self._warned_resize = True
            return resize_color(color, intr.width, intr.height)
        return color.copy()

    def _decode_image(self, data: bytes, index: int) -> np.ndarray:
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except _DECODE_ERRORS as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SourceError(f"{self.path}: frame {index}: cannot decode "
                              f"{self.header.color_codec} colour ({first})") from None
        if len(img.getbands()) not in (3, 4) and img.mode != "P":
            raise SourceError(f"{self.path}: frame {index}: colour must be RGB, got Pillow mode {img.mode}")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
