"""Owns injected drift for loop-closure benchmarks and tests: odometry that slowly goes wrong.

`drifted_poses` composes the true relative motion between consecutive frames with a small bias per
metre walked (a turn about the world's up axis and a stretch of the step), as visual odometry drifts.
`pose_offset` is one pose error (where a map alignment starts). `DriftedFrames` hands a source's frames
with drifted poses in place of the ground truth, so that `--poses gt` fuses with the drifting odometry
while the true poses stay available for ATE.
Pure functions; a `DriftedFrames` is used by one thread at a time, like its source.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial.transform import Rotation


def drifted_poses(poses: np.ndarray, yaw_deg_per_m: float, scale_error: float) -> np.ndarray:
    """(n,4,4) poses whose steps are the true ones turned by yaw_deg_per_m per metre walked (about world z,
    at the camera) and stretched by (1 + scale_error); the first pose is exact."""
    poses = np.asarray(poses, float)
    out = poses.copy()
    for k in range(1, len(poses)):
        rel = np.linalg.inv(poses[k - 1]) @ poses[k]
        step_m = float(np.linalg.norm(rel[:3, 3]))
        rel[:3, 3] *= 1.0 + scale_error
        prev = out[k - 1] @ rel
        turn = Rotation.from_euler("z", yaw_deg_per_m * step_m, degrees=True).as_matrix()
        prev[:3, :3] = turn @ prev[:3, :3]
        out[k] = prev
    return out


def pose_offset(m: float, deg: float) -> np.ndarray:
    """A pose error (right-multiplied: in the camera's frame): m metres along (1, 0.3, 0.5), deg degrees about
    the camera's vertical axis."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("y", deg, degrees=True).as_matrix()
    T[:3, 3] = np.array([1.0, 0.3, 0.5]) / np.linalg.norm([1.0, 0.3, 0.5]) * m
    return T


class DriftedFrames:
    """Iterates a posed source's frames with drifted poses as their `T_world_cam_gt`; `true_poses` keeps
    the source's own."""

    def __init__(self, source, yaw_deg_per_m: float, scale_error: float = 0.0):
        self.source = source
        self.true_poses = np.asarray(source.poses, float)
        self.poses = drifted_poses(self.true_poses, yaw_deg_per_m, scale_error)

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self):
        for frame in self.source:
            yield dataclasses.replace(frame, T_world_cam_gt=self.poses[frame.index].copy())

    def drift_m(self) -> float:
        """Largest position error of the drifted poses."""
        return float(np.max(np.linalg.norm(self.poses[:, :3, 3] - self.true_poses[:, :3, 3], axis=1)))
