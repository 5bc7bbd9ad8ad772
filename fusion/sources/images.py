"""Owns image and small text-file reading for dataset folders: colour, 16-bit depth, K matrices, poses.

Every reader raises `SourceError` with a one-line message naming the file (and line where there is
one) for a missing, unreadable, truncated or wrongly formatted file. Any thread may call these
functions; they keep no state.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fusion.errors import SourceError
from fusion.frame import Intrinsics

# Pillow modes that decode to 3-channel 8-bit RGB without losing meaning.
_COLOR_MODES = {"RGB", "RGBA", "RGBX", "P", "CMYK", "YCbCr"}
# Pillow modes of single-channel 16-bit (or wider integer) images.
_DEPTH16_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_MAX_UINT16 = 65535


def _open_image(path: Path, what: str) -> Image.Image:
    """Open and fully decode `path` (so truncation shows up here, not later)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: {what} image is missing")
    try:
        img = Image.open(path)
        img.load()
    except _DECODE_ERRORS as exc:
        raise SourceError(f"{path}: cannot read {what} image ({_one_line(exc)})") from None
    return img


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def image_size(path: Path, what: str = "depth") -> tuple[int, int]:
    """(width, height) from the image header only (cheap; no pixel decode)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: {what} image is missing")
    try:
        with Image.open(path) as img:
            return img.size
    except _DECODE_ERRORS as exc:
        raise SourceError(f"{path}: cannot read {what} image ({_one_line(exc)})") from None


def read_color(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PNG/JPG colour image; alpha is dropped, palettes expanded."""
    img = _open_image(path, "colour")
    if img.mode not in _COLOR_MODES:
        bands = len(img.getbands())
        raise SourceError(
            f"{path}: colour image must be 8-bit RGB, got Pillow mode {img.mode} ({bands} channel(s))"
        )
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_depth_raw(path: Path) -> np.ndarray:
    """(H, W) uint16 raw depth units from a single-channel 16-bit PNG."""
    img = _open_image(path, "depth")
    if img.mode not in _DEPTH16_MODES:
        bands = len(img.getbands())
        if bands == 1:
            raise SourceError(f"{path}: depth image must be 16-bit, got Pillow mode {img.mode}")
        raise SourceError(f"{path}: depth image must have 1 channel, got {bands} (mode {img.mode})")
    raw = np.asarray(img)
    if raw.dtype != np.uint16:
        if raw.size and (raw.min() < 0 or raw.max() > _MAX_UINT16):
            raise SourceError(f"{path}: depth values outside the 16-bit range")
        raw = raw.astype(np.uint16)
    return raw


def read_depth_m(path: Path, units_per_m: float, invalid_raw: tuple[int, ...] = (0,)) -> np.ndarray:
    """(H, W) float32 depth in metres; raw values in `invalid_raw` become 0 (invalid)."""
    raw = read_depth_raw(path)
    depth = raw.astype(np.float32) / np.float32(units_per_m)
    for bad in invalid_raw:
        depth[raw == bad] = 0.0
    return depth


def resize_color(color: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image to (height, width, 3)."""
    img = Image.fromarray(color).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy()


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise SourceError(f"{path}: {what} file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read {what} file ({_one_line(exc)})") from None


def read_number_rows(path: Path, what: str) -> list[tuple[int, list[float]]]:
    """Non-empty, non-`#` lines of a whitespace/comma-separated numeric file as (line number, values)."""
    rows = []
    for lineno, line in enumerate(_read_text(path, what).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rows.append((lineno, [float(x) for x in line.replace(",", " ").split()]))
        except ValueError:
            raise SourceError(f"{path}:{lineno}: {what} line is not numeric: {line[:60]!r}") from None
    return rows


def read_matrix(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    """A small matrix written as `shape[0]` rows of `shape[1]` finite numbers."""
    rows = read_number_rows(path, what)
    if len(rows) != shape[0] or any(len(vals) != shape[1] for _, vals in rows):
        got = "x".join(str(len(v)) for _, v in rows) or "nothing"
        raise SourceError(f"{path}: {what} must be {shape[0]} rows of {shape[1]} numbers, got rows of {got}")
    mat = np.array([vals for _, vals in rows], dtype=np.float64)
    for lineno, vals in rows:
        if not np.all(np.isfinite(vals)):
            raise SourceError(f"{path}:{lineno}: {what} contains a non-finite number (NaN or inf)")
    return mat


def check_pose(T: np.ndarray, where: str) -> np.ndarray:
    """Validate a 4x4 camera-to-world pose (finite, last row 0 0 0 1, rotation near orthonormal)."""
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise SourceError(f"{where}: pose must be a finite 4x4 matrix")
    if not np.allclose(T[3], (0, 0, 0, 1), atol=1e-4):
        raise SourceError(f"{where}: pose's last row must be 0 0 0 1")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-2) or np.linalg.det(R) < 0:
        raise SourceError(f"{where}: pose's rotation is not a rotation matrix")
    return T


def intrinsics_from_k(K: np.ndarray, width: int, height: int, where: str) -> Intrinsics:
    """Intrinsics from a 3x3 K, checked for positive focal lengths and a principal point in the image."""
    if not np.allclose([K[0, 1], K[1, 0], K[2, 0], K[2, 1]], 0, atol=1e-6) or abs(K[2, 2] - 1) > 1e-6:
        raise SourceError(f"{where}: camera matrix must be [[fx 0 cx] [0 fy cy] [0 0 1]]")
    intr = Intrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))
    return check_intrinsics(intr, where)


def check_intrinsics(intr: Intrinsics, where: str) -> Intrinsics:
    """Raise SourceError naming `where` unless the intrinsics are plausible for their image size."""
    vals = (intr.fx, intr.fy, intr.cx, intr.cy)
    if not all(np.isfinite(v) for v in vals):
        raise SourceError(f"{where}: intrinsics contain a non-finite number")
    if intr.fx <= 0 or intr.fy <= 0:
        raise SourceError(f"{where}: focal lengths must be positive (fx={intr.fx:g}, fy={intr.fy:g})")
    if intr.width <= 0 or intr.height <= 0:
        raise SourceError(f"{where}: image size must be positive ({intr.width}x{intr.height})")
    if not intr.is_plausible():
        raise SourceError(
            f"{where}: principal point ({intr.cx:g}, {intr.cy:g}) lies outside the "
            f"{intr.width}x{intr.height} image"
        )
    return intr


def read_pinhole_json(path: Path) -> Intrinsics:
    """Intrinsics from an Open3D PinholeCameraIntrinsic json (width, height, column-major intrinsic_matrix).

    Also accepts flat {"width", "height", "fx", "fy", "cx", "cy"}.
    """
    try:
        data = json.loads(_read_text(path, "intrinsics"))
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}:{exc.lineno}: intrinsics file is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: intrinsics JSON must be an object")
    try:
        width, height = int(data["width"]), int(data["height"])
        if "intrinsic_matrix" in data:
            vals = np.asarray(data["intrinsic_matrix"], dtype=np.float64)
            if vals.shape != (9,):
                raise SourceError(f"{path}: intrinsic_matrix must hold 9 numbers, got shape {vals.shape}")
            return intrinsics_from_k(vals.reshape(3, 3).T, width, height, str(path))
        intr = Intrinsics(*(float(data[k]) for k in ("fx", "fy", "cx", "cy")), width, height)
    except KeyError as exc:
        raise SourceError(f"{path}: intrinsics JSON lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise SourceError(f"{path}: intrinsics JSON holds a non-numeric value") from None
    return check_intrinsics(intr, str(path))
