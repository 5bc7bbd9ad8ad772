"""Owns the shared machinery of dataset-folder sources: a frame list made at open, decoded on iteration.

Size policy (all folder layouts): the intrinsics describe the depth camera, so depth is the reference.
Every depth image must have the intrinsics' size (else `SourceError` naming the file). When a colour
image's size differs from its depth image, the colour is resized to the depth resolution (bilinear,
Pillow) and this is logged once per source. Layout modules (7-Scenes, TUM, Redwood) parse their
structure at open time (fail fast) and hand a list of `FrameFiles` to `FolderSource`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from fusion.errors import SourceError
from fusion.frame import Frame, Intrinsics
from fusion.sources.base import FrameSource
from fusion.sources.images import image_size, read_color, read_depth_m, resize_color

log = logging.getLogger(__name__)

COLOR_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class FrameFiles:
    """Where one frame lives on disk, plus what the layout knows about it without decoding images."""

    color_path: Path
    depth_path: Path
    timestamp_s: float
    T_world_cam_gt: Optional[np.ndarray] = None


@dataclass(frozen=True)
class DepthEncoding:
    """How a layout stores depth in 16-bit images."""

    units_per_m: float  # raw depth units per metre (1000 = millimetres)
    invalid_raw: tuple[int, ...] = (0,)  # raw values meaning "no depth"


def check_max_frames(max_frames: Optional[int]) -> Optional[int]:
    """Validate max_frames (None = all frames)."""
    if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames < 1):
        raise SourceError(f"max_frames must be a positive integer, got {max_frames!r}")
    return max_frames


def require_folder(path: Path) -> Path:
    """The path as a Path, after checking it is an existing folder."""
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"{path}: no such dataset folder")
    return path


def check_depth_size(intr: Intrinsics, depth_path: Path, intrinsics_path: Path) -> Intrinsics:
    """Raise SourceError unless the depth image at `depth_path` has the size the intrinsics file states."""
    width, height = image_size(depth_path)
    if (intr.width, intr.height) != (width, height):
        raise SourceError(
            f"{depth_path}: depth image is {width}x{height} but {intrinsics_path.name} "
            f"says {intr.width}x{intr.height}"
        )
    return intr


class FolderSource(FrameSource):
    """A dataset folder read frame by frame. Used by one thread at a time (the capture/fusion thread).

    Subclasses parse their layout in `__init__` and then call `_setup`.
    """

    kind = "folder"

    def _setup(
        self,
        root: Path,
        files: Sequence[FrameFiles],
        intrinsics: Intrinsics,
        depth: DepthEncoding,
        max_frames: Optional[int],
    ) -> None:
        if not files:
            raise SourceError(f"{root}: no frames found")
        self.root = Path(root)
        self.intrinsics = intrinsics
        self.depth_encoding = depth
        files = list(files[: check_max_frames(max_frames)])
        self._all_have_gt = all(f.T_world_cam_gt is not None for f in files)
        if not self._all_have_gt and any(f.T_world_cam_gt is not None for f in files):
            missing = sum(f.T_world_cam_gt is None for f in files)
            log.warning("%s: %d of %d frames have no ground-truth pose", root, missing, len(files))
        self.files = files
        self._warned_resize = False

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        for index, files in enumerate(self.files):
            yield self.read_frame(index, files)

    def read_frame(self, index: int, files: FrameFiles) -> Frame:
        """Decode one frame; raises SourceError naming the file on a bad image."""
        intr = self.intrinsics
        depth = read_depth_m(files.depth_path, self.depth_encoding.units_per_m, self.depth_encoding.invalid_raw)
        if depth.shape != (intr.height, intr.width):
            raise SourceError(
                f"{files.depth_path}: depth image is {depth.shape[1]}x{depth.shape[0]}, "
                f"expected {intr.width}x{intr.height} like the intrinsics"
            )
        color = read_color(files.color_path)
        if color.shape[:2] != depth.shape:
            if not self._warned_resize:
                log.info(
                    "%s: colour %dx%d differs from depth %dx%d; resizing colour to the depth size",
                    self.root, color.shape[1], color.shape[0], intr.width, intr.height,
                )
                self._warned_resize = True
            color = resize_color(color, intr.width, intr.height)
        pose = None if files.T_world_cam_gt is None else files.T_world_cam_gt.copy()
        return Frame(color, depth, intr, timestamp_s=float(files.timestamp_s), index=index, T_world_cam_gt=pose)

    @property
    def has_gt_poses(self) -> bool:
        return self._all_have_gt

    def first_gt_pose(self) -> Optional[np.ndarray]:
        pose = self.files[0].T_world_cam_gt
        return None if pose is None else pose.copy()

    def describe(self) -> dict:
        intr = self.intrinsics
        return {
            "kind": self.kind,
            "path": str(self.root),
            "frames": len(self),
            "has_gt_poses": self.has_gt_poses,
            "intrinsics": {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy,
                           "width": intr.width, "height": intr.height},
            "depth_units_per_m": self.depth_encoding.units_per_m,
        }
