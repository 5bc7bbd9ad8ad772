"""Owns trajectories: TUM-format read/write, pose <-> quaternion conversion and ATE after rigid alignment."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from storage.atomic import write_text_atomic
from fusion.errors import SourceError


def pose_to_tum(T_world_cam: np.ndarray) -> tuple:
    """(tx, ty, tz, qx, qy, qz, qw) of a 4x4 camera-to-world pose."""
    q = Rotation.from_matrix(T_world_cam[:3, :3]).as_quat()  # x, y, z, w
    return (*T_world_cam[:3, 3], *q)


def tum_to_pose(vals) -> np.ndarray:
    """4x4 pose from (tx, ty, tz, qx, qy, qz, qw)."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(np.asarray(vals[3:7], float)).as_matrix()
    T[:3, 3] = vals[:3]
    return T


def write_tum(path: Path | str, timestamps_s, poses) -> None:
    """Write `timestamp tx ty tz qx qy qz qw` lines atomically."""
    lines = ["# timestamp tx ty tz qx qy qz qw (T_world_cam)"]
    for t, T in zip(timestamps_s, poses):
        lines.append(f"{t:.6f} " + " ".join(f"{v:.7f}" for v in pose_to_tum(np.asarray(T))))
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_tum(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory; returns (timestamps (N,), poses (N,4,4)). Raises SourceError on bad lines."""
    stamps, poses = [], []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            vals = [float(x) for x in line.split()]
        except ValueError:
            raise SourceError(f"{path}:{lineno}: not a number in trajectory line") from None
        if len(vals) != 8 or not np.all(np.isfinite(vals)):
            raise SourceError(f"{path}:{lineno}: expected 8 finite numbers (timestamp tx ty tz qx qy qz qw)")
        if np.linalg.norm(vals[4:8]) < 1e-6:
            raise SourceError(f"{path}:{lineno}: zero quaternion")
        stamps.append(vals[0])
        poses.append(tum_to_pose(vals[1:]))
    return np.array(stamps), np.array(poses).reshape(-1, 4, 4)


def align_rigid(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation R and translation t with R @ src + t ~= dst (Kabsch, no scale)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    H = (src - mu_s).T @ (dst - mu_d)
    U, _, Vt = np.linalg.svd(H)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    return R, mu_d - R @ mu_s


def ate_rmse_m(est_poses: np.ndarray, gt_poses: np.ndarray) -> float:
    """Absolute trajectory error RMSE (metres) of camera positions after rigid alignment."""
    p_est = np.asarray(est_poses)[:, :3, 3]
    p_gt = np.asarray(gt_poses)[:, :3, 3]
    if len(p_est) < 3:
        return float(np.sqrt(np.mean(np.sum((p_est - p_gt) ** 2, 1))))
    R, t = align_rigid(p_est, p_gt)
    err = (p_est @ R.T + t) - p_gt
    return float(np.sqrt(np.mean(np.sum(err ** 2, 1))))
