"""Owns reading Open3D / Redwood folders: color/ and depth/ image folders, intrinsic json, .log trajectory.

Layout: `color/` (PNG/JPG) and `depth/` (16-bit PNG, millimetres) hold one image per frame, paired
by sorted name (the counts must match). Intrinsics come from `intrinsic.json` or
`camera_intrinsic.json` (Open3D PinholeCameraIntrinsic: width, height, column-major
intrinsic_matrix), else PrimeSense defaults with a warning. An optional `*.log` trajectory (Redwood
format: a line of 3 ints, then 4 rows of the 4x4 camera-to-world matrix, per frame) gives ground
truth; it must hold one pose per frame. Frame i gets timestamp i / frame_rate_hz. A folder holding
`synth.json` is the project's synthetic layout, not this one. Size policy: see `fusion.sources.folder`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fusion.errors import SourceError
from fusion.frame import Intrinsics
from fusion.sources.folder import (COLOR_SUFFIXES, DepthEncoding, FolderSource, FrameFiles, check_depth_size,
                                   require_folder)
from fusion.sources.images import check_intrinsics, check_pose, image_size, read_number_rows, read_pinhole_json

log = logging.getLogger(__name__)

INTRINSICS_FILES = ("intrinsic.json", "camera_intrinsic.json")
SYNTH_MARKER = "synth.json"


@dataclass(frozen=True)
class RedwoodConfig:
    """Settings of the Open3D / Redwood reader."""

    depth_units_per_m: float = 1000.0  # depth PNGs hold millimetres
    frame_rate_hz: float = 30.0  # timestamps are index / frame_rate_hz (the files carry none)
    default_K: tuple[float, float, float, float] = (525.0, 525.0, 319.5, 239.5)  # PrimeSense fx fy cx cy (px)


def read_redwood_log(path: Path) -> np.ndarray:
    """(N, 4, 4) camera-to-world poses from a Redwood/Open3D `.log` trajectory."""
    rows = read_number_rows(path, "trajectory")
    if len(rows) % 5:
        raise SourceError(f"{path}: expected blocks of 5 lines (3 ints, then a 4x4 matrix), got {len(rows)} lines")
    poses = []
    for k in range(0, len(rows), 5):
        lineno, head = rows[k]
        if len(head) != 3:
            raise SourceError(f"{path}:{lineno}: expected a line of 3 integers before each pose")
        mat_rows = rows[k + 1 : k + 5]
        for lineno, vals in mat_rows:
            if len(vals) != 4:
                raise SourceError(f"{path}:{lineno}: expected 4 numbers in a pose row")
            if not np.all(np.isfinite(vals)):
                raise SourceError(f"{path}:{lineno}: pose contains a non-finite number (NaN or inf)")
        poses.append(check_pose(np.array([v for _, v in mat_rows]), f"{path}:{rows[k + 1][0]}"))
    return np.array(poses).reshape(-1, 4, 4)


def _images(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


class RedwoodSource(FolderSource):
    """Open3D / Redwood folder. Used by one thread at a time (the capture/fusion thread)."""

    kind = "redwood"

    def __init__(self, path, max_frames: Optional[int] = None, config: RedwoodConfig = RedwoodConfig()):
        root = require_folder(path)
        self.config = config
        if not self.detect(root):
            raise SourceError(f"{root}: not an Open3D/Redwood folder (needs color/ and depth/)")
        colors = _images(root / "color", COLOR_SUFFIXES)
        depths = _images(root / "depth", (".png",))
        if len(colors) != len(depths):
            raise SourceError(
                f"{root}: color/ holds {len(colors)} images but depth/ holds {len(depths)}; counts must match"
            )
        if not depths:
            raise SourceError(f"{root}: color/ and depth/ hold no images")
        poses = self._read_trajectory(root, len(depths))
        files = [
            FrameFiles(c, d, i / config.frame_rate_hz, None if poses is None else poses[i])
            for i, (c, d) in enumerate(zip(colors, depths))
        ]
        intrinsics = self._read_intrinsics(root, depths[0])
        self._setup(root, files, intrinsics, DepthEncoding(config.depth_units_per_m, (0,)), max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return (
            (path / "color").is_dir()
            and (path / "depth").is_dir()
            and not (path / SYNTH_MARKER).exists()
        )

    @staticmethod
    def _read_trajectory(root: Path, n_frames: int) -> Optional[np.ndarray]:
        logs = sorted(root.glob("*.log"))
        if not logs:
            return None
        if len(logs) > 1:
            log.warning("%s: several .log files; using %s", root, logs[0].name)
        poses = read_redwood_log(logs[0])
        if len(poses) != n_frames:
            raise SourceError(f"{logs[0]}: holds {len(poses)} poses but the folder has {n_frames} frames")
        return poses

    def _read_intrinsics(self, root: Path, depth_path: Path) -> Intrinsics:
        for name in INTRINSICS_FILES:
            path = root / name
            if path.is_file():
                return check_depth_size(read_pinhole_json(path), depth_path, path)
        width, height = image_size(depth_path)
        fx, fy, cx, cy = self.config.default_K
        log.warning("%s: no %s; using PrimeSense defaults fx=%g fy=%g cx=%g cy=%g",
                    root, " or ".join(INTRINSICS_FILES), fx, fy, cx, cy)
        return check_intrinsics(Intrinsics(fx, fy, cx, cy, width, height), f"{root} (PrimeSense defaults)")
