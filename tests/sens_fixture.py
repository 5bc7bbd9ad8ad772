"""Writes tiny ScanNet `.sens` files (SensorData version 4) for tests; not product code.

`write_sens` takes per-frame colour (any size), raw uint16 depth (the header's depth size), poses
(None writes ScanNet's all -inf "invalid" pose) and depth timestamps in microseconds.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from fusion.frame import Intrinsics

COLOR_CODES = {"raw": 0, "png": 1, "jpeg": 2}
DEPTH_CODES = {"raw_ushort": 0, "zlib_ushort": 1, "occi_ushort": 2}


def k4(intr: Intrinsics) -> np.ndarray:
    """ScanNet's 4x4 intrinsics matrix for `intr`."""
    K = np.eye(4)
    K[:3, :3] = intr.matrix()
    return K


def depth_to_raw(depth_m: np.ndarray, shift: float = 1000.0) -> np.ndarray:
    return np.clip(np.round(np.asarray(depth_m, np.float64) * shift), 0, 65535).astype(np.uint16)


def _color_bytes(color: np.ndarray, codec: str) -> bytes:
    if codec == "raw":
        return np.ascontiguousarray(color, np.uint8).tobytes()
    buf = io.BytesIO()
    kwargs = {"quality": 95, "subsampling": 0} if codec == "jpeg" else {}
    Image.fromarray(np.asarray(color, np.uint8)).save(buf, format="JPEG" if codec == "jpeg" else "PNG", **kwargs)
    return buf.getvalue()


def _depth_bytes(raw: np.ndarray, codec: str) -> bytes:
    data = np.ascontiguousarray(raw, "<u2").tobytes()
    return zlib.compress(data) if codec == "zlib_ushort" else data


def write_sens(
    path: Path,
    colors: Sequence[np.ndarray],
    depths_raw: Sequence[np.ndarray],
    poses: Sequence[Optional[np.ndarray]],
    depth_intr: Intrinsics,
    color_intr: Intrinsics,
    color_codec: str = "jpeg",
    depth_codec: str = "zlib_ushort",
    stamps_us: Optional[Sequence[int]] = None,
    depth_shift: float = 1000.0,
    sensor_name: str = "StructureSensor",
) -> Path:
    """Write a `.sens` file; returns its path."""
    path = Path(path)
    stamps = list(stamps_us) if stamps_us is not None else [0] * len(colors)
    name = sensor_name.encode()
    mats = np.stack([k4(color_intr), np.eye(4), k4(depth_intr), np.eye(4)]).astype("<f4")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IQ", 4, len(name)) + name + mats.tobytes())
        fh.write(struct.pack("<iiIIIIfQ", COLOR_CODES[color_codec], DEPTH_CODES[depth_codec],
                             color_intr.width, color_intr.height, depth_intr.width, depth_intr.height,
                             depth_shift, len(colors)))
        for color, raw, T, stamp in zip(colors, depths_raw, poses, stamps):
            pose = np.full((4, 4), -np.inf) if T is None else np.asarray(T)
            cbytes, dbytes = _color_bytes(color, color_codec), _depth_bytes(raw, depth_codec)
            fh.write(pose.astype("<f4").tobytes())
            fh.write(struct.pack("<4Q", stamp, stamp, len(cbytes), len(dbytes)) + cbytes + dbytes)
    return path
