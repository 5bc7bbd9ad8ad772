"""Owns reading TUM RGB-D benchmark folders (rgb.txt, depth.txt, optional groundtruth.txt).

Each depth frame (in depth.txt order) is paired with the rgb frame nearest in time; depth frames with
no rgb frame within `max_rgb_dt_s` are dropped (logged). Ground truth is interpolated between the two
samples around the depth timestamp when they are close (`max_gt_gap_s`), else taken from the nearest
sample within `max_gt_dt_s`. Depth PNGs hold 5000 units per metre. Intrinsics come from
`intrinsics.json` (Open3D format or flat fx/fy/cx/cy) or `camera.txt` (one line `fx fy cx cy [d0..d4]`
or a 3x3 K), else from the freiburg number in the folder name (fr3 with a warning when it says none).
Timestamps in rgb.txt and depth.txt must increase strictly. Size policy: see `fusion.sources.folder`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from fusion.errors import SourceError
from fusion.frame import Intrinsics
from fusion.sources.folder import DepthEncoding, FolderSource, FrameFiles, check_depth_size, require_folder
from fusion.sources.images import (check_intrinsics, check_pose, image_size, intrinsics_from_k,
                                   read_number_rows, read_pinhole_json)
from fusion.trajectory import read_tum

log = logging.getLogger(__name__)

# fx, fy, cx, cy (pixels, 640x480) from the TUM RGB-D site.
FREIBURG_K = {
    1: (517.3, 516.5, 318.6, 255.3),
    2: (520.9, 521.0, 325.1, 249.7),
    3: (535.4, 539.2, 320.1, 247.6),
}
_FREIBURG_RE = re.compile(r"(?:freiburg|fr)_?([123])(?![0-9])", re.IGNORECASE)


@dataclass(frozen=True)
class TumConfig:
    """Settings of the TUM RGB-D reader."""

    depth_units_per_m: float = 5000.0  # depth PNGs hold 1/5000 m
    max_rgb_dt_s: float = 0.02  # largest depth-to-rgb timestamp difference for a pair
    max_gt_dt_s: float = 0.02  # largest distance to the nearest ground-truth sample
    max_gt_gap_s: float = 0.05  # interpolate between two gt samples at most this far apart
    default_freiburg: int = 3  # camera assumed when the folder name names none


def read_list(path: Path) -> tuple[np.ndarray, list[str]]:
    """(timestamps, relative paths) of a TUM `timestamp path` list; timestamps must increase strictly."""
    if not path.is_file():
        raise SourceError(f"{path}: list file is missing")
    stamps, names, last = [], [], -np.inf
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            stamp = float(parts[0])
        except ValueError:
            raise SourceError(f"{path}:{lineno}: timestamp is not a number: {parts[0][:40]!r}") from None
        if len(parts) != 2 or not np.isfinite(stamp):
            raise SourceError(f"{path}:{lineno}: expected 'timestamp filename'")
        if stamp <= last:
            raise SourceError(f"{path}:{lineno}: timestamp {stamp:.6f} does not increase (previous {last:.6f})")
        stamps.append(stamp)
        names.append(parts[1])
        last = stamp
    if not stamps:
        raise SourceError(f"{path}: list file holds no frames")
    return np.array(stamps), names


def nearest(sorted_stamps: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of `sorted_stamps` for each query."""
    right = np.clip(np.searchsorted(sorted_stamps, queries), 1, len(sorted_stamps) - 1)
    left = right - 1
    if len(sorted_stamps) == 1:
        return np.zeros(len(queries), dtype=int)
    pick_left = np.abs(queries - sorted_stamps[left]) <= np.abs(sorted_stamps[right] - queries)
    return np.where(pick_left, left, right)


def interpolate_pose(stamps: np.ndarray, poses: np.ndarray, t: float, cfg: TumConfig) -> Optional[np.ndarray]:
    """Ground-truth pose at time t: interpolated between close bracketing samples, else nearest, else None."""
    i = int(np.searchsorted(stamps, t))
    if 0 < i < len(stamps) and stamps[i] - stamps[i - 1] <= cfg.max_gt_gap_s:
        t0, t1 = stamps[i - 1], stamps[i]
        a = (t - t0) / (t1 - t0)
        slerp = Slerp([0.0, 1.0], Rotation.from_matrix(poses[i - 1 : i + 1, :3, :3]))
        T = np.eye(4)
        T[:3, :3] = slerp([a]).as_matrix()[0]
        T[:3, 3] = (1 - a) * poses[i - 1, :3, 3] + a * poses[i, :3, 3]
        return T
    j = int(nearest(stamps, np.array([t]))[0])
    return poses[j].copy() if abs(stamps[j] - t) <= cfg.max_gt_dt_s else None


class TumSource(FolderSource):
    """TUM RGB-D folder. Used by one thread at a time (the capture/fusion thread)."""

    kind = "tum"

    def __init__(self, path, max_frames: Optional[int] = None, config: TumConfig = TumConfig()):
        root = require_folder(path)
        self.config = config
        rgb_t, rgb_names = read_list(root / "rgb.txt")
        depth_t, depth_names = read_list(root / "depth.txt")
        pairs = self._associate(root, rgb_t, depth_t)
        gt = self._read_gt(root)
        files = []
        for d, r in pairs:
            color_path, depth_path = root / rgb_names[r], root / depth_names[d]
            for p, listed_in in ((color_path, "rgb.txt"), (depth_path, "depth.txt")):
                if not p.is_file():
                    raise SourceError(f"{p}: image listed in {listed_in} is missing")
            pose = None if gt is None else interpolate_pose(*gt, depth_t[d], config)
            files.append(FrameFiles(color_path, depth_path, float(depth_t[d]), pose))
        intrinsics = self._read_intrinsics(root, files[0].depth_path)
        self._setup(root, files, intrinsics, DepthEncoding(config.depth_units_per_m, (0,)), max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return (path / "rgb.txt").is_file() and (path / "depth.txt").is_file()

    def _associate(self, root: Path, rgb_t: np.ndarray, depth_t: np.ndarray) -> list[tuple[int, int]]:
        """(depth index, rgb index) pairs within max_rgb_dt_s."""
        idx = nearest(rgb_t, depth_t)
        ok = np.abs(rgb_t[idx] - depth_t) <= self.config.max_rgb_dt_s
        if not ok.any():
            raise SourceError(
                f"{root}: no depth frame has an rgb frame within {self.config.max_rgb_dt_s} s"
            )
        if not ok.all():
            log.warning("%s: dropped %d depth frames with no rgb frame within %g s",
                        root, int((~ok).sum()), self.config.max_rgb_dt_s)
        return [(int(d), int(idx[d])) for d in np.flatnonzero(ok)]

    @staticmethod
    def _read_gt(root: Path) -> Optional[tuple[np.ndarray, np.ndarray]]:
        path = root / "groundtruth.txt"
        if not path.is_file():
            return None
        stamps, poses = read_tum(path)
        if len(stamps) == 0:
            raise SourceError(f"{path}: holds no poses")
        if np.any(np.diff(stamps) <= 0):
            line = int(np.flatnonzero(np.diff(stamps) <= 0)[0]) + 2
            raise SourceError(f"{path}: timestamps do not increase (pose {line})")
        for i, T in enumerate(poses):
            check_pose(T, f"{path} (pose {i + 1})")
        return stamps, poses

    def _read_intrinsics(self, root: Path, depth_path: Path) -> Intrinsics:
        width, height = image_size(depth_path)
        if (root / "intrinsics.json").is_file():
            intr = read_pinhole_json(root / "intrinsics.json")
            return check_depth_size(intr, depth_path, root / "intrinsics.json")
        if (root / "camera.txt").is_file():
            return read_camera_txt(root / "camera.txt", width, height)
        match = _FREIBURG_RE.search(root.resolve().name)
        number = int(match.group(1)) if match else self.config.default_freiburg
        if not match:
            log.warning("%s: folder name names no freiburg camera; assuming fr%d intrinsics", root, number)
        fx, fy, cx, cy = FREIBURG_K[number]
        return check_intrinsics(Intrinsics(fx, fy, cx, cy, width, height), f"{root} (fr{number} intrinsics)")


def read_camera_txt(path: Path, width: int, height: int) -> Intrinsics:
    """Intrinsics from `fx fy cx cy [d0 d1 d2 d3 d4]` on one line, or a 3x3 K on three lines."""
    rows = read_number_rows(path, "camera")
    if len(rows) == 3 and all(len(v) == 3 for _, v in rows):
        return intrinsics_from_k(np.array([v for _, v in rows]), width, height, str(path))
    if len(rows) != 1 or len(rows[0][1]) not in (4, 9):
        raise SourceError(f"{path}: expected one line 'fx fy cx cy [d0..d4]' or a 3x3 camera matrix")
    fx, fy, cx, cy = rows[0][1][:4]
    return check_intrinsics(Intrinsics(fx, fy, cx, cy, width, height), str(path))
