"""Owns reading Microsoft 7-Scenes / tsdf-fusion folders (frame-NNNNNN.{color,depth,pose} files).

Layout: `camera-intrinsics.txt` (3x3 K of the depth camera; 7-Scenes' 585/585/320/240 with a warning
when absent) beside frames `frame-NNNNNN.color.png|jpg`, `frame-NNNNNN.depth.png` (uint16 mm; 0 and
65535 mean no depth) and optional `frame-NNNNNN.pose.txt` (4x4 camera-to-world), either directly in
the folder or in a single subfolder (e.g. `rgbd-frames/`). The files carry no timestamps: frame i
(0-based position) gets i / frame_rate_hz seconds. Size policy: see `fusion.sources.folder`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fusion.errors import SourceError
from fusion.sources.folder import COLOR_SUFFIXES, DepthEncoding, FolderSource, FrameFiles, require_folder
from fusion.sources.images import check_pose, image_size, intrinsics_from_k, read_matrix

log = logging.getLogger(__name__)

_DEPTH_RE = re.compile(r"^frame-(\d+)\.depth\.png$")
INTRINSICS_FILE = "camera-intrinsics.txt"


@dataclass(frozen=True)
class SevenScenesConfig:
    """Settings of the 7-Scenes reader."""

    depth_units_per_m: float = 1000.0  # depth PNGs hold millimetres
    invalid_depth_raw: tuple[int, ...] = (0, 65535)  # raw values meaning "no depth"
    frame_rate_hz: float = 30.0  # timestamps are index / frame_rate_hz (the files carry none)
    default_K: tuple[float, float, float, float] = (585.0, 585.0, 320.0, 240.0)  # fx fy cx cy (px) when no K file


def _depth_files(folder: Path) -> list[Path]:
    return [p for p in folder.glob("frame-*.depth.png") if _DEPTH_RE.match(p.name)]


def _frame_folders(root: Path) -> list[Path]:
    """The folder itself when it holds frames, else its direct subfolders that do."""
    if _depth_files(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and _depth_files(p))


class SevenScenesSource(FolderSource):
    """7-Scenes / tsdf-fusion folder. Used by one thread at a time (the capture/fusion thread)."""

    kind = "7scenes"

    def __init__(self, path, max_frames: Optional[int] = None, config: SevenScenesConfig = SevenScenesConfig()):
        root = require_folder(path)
        self.config = config
        folders = _frame_folders(root)
        if not folders:
            raise SourceError(f"{root}: no frame-NNNNNN.depth.png files found")
        if len(folders) > 1:
            names = ", ".join(p.name for p in folders)
            raise SourceError(f"{root}: several frame folders ({names}); pass one of them")
        frames_dir = folders[0]
        files = self._list_frames(frames_dir)
        width, height = image_size(files[0].depth_path)
        intrinsics = self._read_intrinsics(root, frames_dir, width, height)
        depth = DepthEncoding(config.depth_units_per_m, config.invalid_depth_raw)
        self._setup(root, files, intrinsics, depth, max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return path.is_dir() and bool(_frame_folders(path))

    def _list_frames(self, frames_dir: Path) -> list[FrameFiles]:
        depth_paths = sorted(_depth_files(frames_dir), key=lambda p: int(_DEPTH_RE.match(p.name).group(1)))
        files = []
        for position, depth_path in enumerate(depth_paths):
            stem = depth_path.name[: -len(".depth.png")]
            color_path = self._color_path(frames_dir, stem)
            pose_path = frames_dir / f"{stem}.pose.txt"
            pose = None
            if pose_path.exists():
                pose = check_pose(read_matrix(pose_path, (4, 4), "pose"), str(pose_path))
            files.append(FrameFiles(color_path, depth_path, position / self.config.frame_rate_hz, pose))
        return files

    @staticmethod
    def _color_path(frames_dir: Path, stem: str) -> Path:
        for suffix in COLOR_SUFFIXES:
            candidate = frames_dir / f"{stem}.color{suffix}"
            if candidate.exists():
                return candidate
        raise SourceError(f"{frames_dir / stem}.depth.png: no matching {stem}.color.png or .jpg")

    def _read_intrinsics(self, root: Path, frames_dir: Path, width: int, height: int):
        for folder in (root, frames_dir):
            k_path = folder / INTRINSICS_FILE
            if k_path.exists():
                K = read_matrix(k_path, (3, 3), "camera matrix")
                return intrinsics_from_k(K, width, height, str(k_path))
        fx, fy, cx, cy = self.config.default_K
        log.warning("%s: no %s; using 7-Scenes defaults fx=%g fy=%g cx=%g cy=%g",
                    root, INTRINSICS_FILE, fx, fy, cx, cy)
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
        return intrinsics_from_k(K, width, height, f"{root} (default 7-Scenes intrinsics)")
