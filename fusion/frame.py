"""Owns the frame contract: camera intrinsics and one RGB-D frame, as immutable snapshots.

Any thread may create and read these; they are never mutated after construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for an image of width x height pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def backproject(self, u_px, v_px, z_m) -> np.ndarray:
        """Camera-frame points (..., 3) in metres of pixels (u, v) at depth z (arrays broadcast)."""
        z_m = np.asarray(z_m)
        return np.stack([(np.asarray(u_px) - self.cx) / self.fx * z_m, (np.asarray(v_px) - self.cy) / self.fy * z_m,
                         z_m], -1)

    def matrix(self) -> np.ndarray:
        """3x3 camera matrix K (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, factor: float) -> "Intrinsics":
        """Intrinsics of the same camera at `factor` times the resolution (pixel-centre convention)."""
        return Intrinsics(
            fx=self.fx * factor,
            fy=self.fy * factor,
            cx=(self.cx + 0.5) * factor - 0.5,
            cy=(self.cy + 0.5) * factor - 0.5,
            width=int(round(self.width * factor)),
            height=int(round(self.height * factor)),
        )

    def is_plausible(self) -> bool:
        """True when focal lengths are positive and the principal point lies inside the image."""
        vals = (self.fx, self.fy, self.cx, self.cy)
        return (
            all(np.isfinite(v) for v in vals)
            and self.fx > 0
            and self.fy > 0
            and self.width > 0
            and self.height > 0
            and 0 <= self.cx <= self.width
            and 0 <= self.cy <= self.height
        )


@dataclass(frozen=True)
class Frame:
    """One RGB-D frame; depth is registered to colour (same size, same intrinsics).

    color: (H, W, 3) uint8 RGB.  depth_m: (H, W) float32 metres, 0 = invalid.
    timestamp_s: seconds.  T_world_cam_gt: optional 4x4 camera-to-world ground-truth pose.
    index: position of the frame in its source (0-based).
    accel_cam: optional accelerometer reading (3,) m/s^2 in the camera's axes (gravity's reaction, about
    9.81 m/s^2 pointing up when still), from a camera with an IMU.
    """

    color: np.ndarray
    depth_m: np.ndarray
    intrinsics: Intrinsics
    timestamp_s: float
    index: int = 0
    T_world_cam_gt: Optional[np.ndarray] = None
    accel_cam: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        h, w = self.depth_m.shape[:2]
        if self.color.shape[:2] != (h, w):
            raise ValueError(f"colour {self.color.shape[:2]} and depth {(h, w)} sizes differ")
        if (self.intrinsics.width, self.intrinsics.height) != (w, h):
            raise ValueError("intrinsics size does not match the depth image")
        for arr in (self.color, self.depth_m):
            arr.setflags(write=False)
        for arr in (self.T_world_cam_gt, self.accel_cam):
            if arr is not None:
                arr.setflags(write=False)
