"""Owns camera tracking: frame-to-model ICP against the fused volume, failure checks and recovery.

Each frame is registered (point-to-plane, multi-scale, Open3D's solver) against the model's depth
rendered from the predicted pose at reduced resolution by the trilinear raycaster. A frame whose
registration has too few inliers, a large residual or an implausible jump is rejected (not
integrated); tracking then retries from the last good pose until it locks on again for
`recover_frames` frames in a row.
"""
from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

import numba as nb
import numpy as np
import open3d as o3d
import open3d.core as o3c
from scipy.spatial.transform import Rotation

from fusion.frame import Frame
from fusion.volume import TsdfVolume

log = logging.getLogger(__name__)
odom = o3d.t.pipelines.odometry


class TrackState(str, enum.Enum):
    OK = "ok"
    LOST = "lost"
    RECOVERING = "recovering"


@dataclass(frozen=True)
class TrackerConfig:
    scale: float = 0.5                          #: resolution of tracking images relative to the frame
    iterations: tuple = (6, 8, 12)              #: ICP iterations per pyramid level, fine to coarse
    outlier_m: float = 0.07                     #: correspondences farther apart are ignored
    huber_m: float = 0.05                       #: Huber threshold of the point-to-plane residual
    min_fitness: float = 0.25                   #: least share of pixels with a correspondence
    max_rmse_m: float = 0.025                   #: largest inlier RMSE accepted
    max_jump_m: float = 0.12                    #: largest translation away from the prediction
    max_jump_deg: float = 12.0                  #: largest rotation away from the prediction
    recover_frames: int = 3                     #: good frames in a row to leave the lost state
    depth_max_m: float = 4.0                    #: depth beyond is not used for tracking
    min_valid_share: float = 0.02               #: least share of valid pixels in frame and model render

    def __post_init__(self):
        if self.scale not in (0.5, 1.0):
            raise ValueError("tracking scale must be 0.5 or 1.0")


@dataclass
class TrackResult:
    """Outcome for one frame: the pose to use (None when rejected) and the quality measures."""

    T_world_cam: np.ndarray | None
    state: TrackState
    fitness: float = 0.0
    rmse_m: float = 0.0
    reason: str = ""


@nb.njit(cache=True)
def downsample_depth(depth_m: np.ndarray) -> np.ndarray:
    """Half-size depth: mean of the valid pixels in each 2x2 cell, if at least two agree within 3 cm."""
    h, w = depth_m.shape[0] // 2, depth_m.shape[1] // 2
    out = np.zeros((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            s = 0.0
            n = 0
            lo = 1e9
            hi = 0.0
            for dy in range(2):
                for dx in range(2):
                    d = depth_m[2 * y + dy, 2 * x + dx]
                    if d > 0:
                        s += d
                        n += 1
                        lo = min(lo, d)
                        hi = max(hi, d)
            if n >= 2 and hi - lo < 0.03:
                out[y, x] = s / n
    return out


def relative_motion(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(translation m, rotation deg) between two poses."""
    D = np.linalg.inv(T_a) @ T_b
    return float(np.linalg.norm(D[:3, 3])), float(np.degrees(Rotation.from_matrix(D[:3, :3]).magnitude()))


@dataclass
class _Motion:
    last_good: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.eye(4))


class Tracker:
    """Frame-to-model tracker. Thread: the fusion thread only."""

    def __init__(self, volume: TsdfVolume, config: TrackerConfig = TrackerConfig()):
        self.volume = volume
        self.config = config
        self.state = TrackState.OK
        self._motion: _Motion | None = None
        self._good_run = 0
        self.failures = 0
        self.last_timings_ms: dict[str, float] = {}  #: render and ICP time of the latest track()
        self._criteria = [odom.OdometryConvergenceCriteria(n) for n in config.iterations]
        self._params = odom.OdometryLossParams(config.outlier_m, config.huber_m)

    def reset(self, T_world_cam: np.ndarray) -> None:
        """Start (or restart) at a known pose."""
        self._motion = _Motion(np.array(T_world_cam, float))
        self.state = TrackState.OK
        self._good_run = 0

    @property
    def started(self) -> bool:
        return self._motion is not None

    def predict(self) -> np.ndarray:
        m = self._motion
        return m.last_good @ (m.velocity if self.state == TrackState.OK else np.eye(4))

    def track(self, frame: Frame) -> TrackResult:
        """Register `frame` against the model; returns the accepted pose or a rejection."""
        cfg = self.config
        T_pred = self.predict()
        intr = frame.intrinsics.scaled(cfg.scale)
        src_depth = downsample_depth(frame.depth_m) if cfg.scale == 0.5 else frame.depth_m
        if np.count_nonzero(src_depth) < cfg.min_valid_share * src_depth.size:
            return self._reject("too little valid depth")
        t0 = time.perf_counter()
        model_depth = self.volume.render_depth(T_pred, intr)
        t1 = time.perf_counter()
        self.last_timings_ms = {"track_render": (t1 - t0) * 1e3}
        if np.count_nonzero(model_depth) < cfg.min_valid_share * model_depth.size:
            return self._reject("the model is out of view")
        src, dst = (self._rgbd(d) for d in (src_depth, model_depth))
        K = o3c.Tensor(intr.matrix(), o3c.float64)
        try:
            res = odom.rgbd_odometry_multi_scale(
                src, dst, K, o3c.Tensor(np.eye(4)), 1.0, cfg.depth_max_m, self._criteria,
                odom.Method.PointToPlane, self._params)
        except RuntimeError as exc:  # Open3D raises when the system is degenerate (no overlap)
            return self._reject(f"registration failed ({str(exc).splitlines()[0][:80]})")
        self.last_timings_ms["track_icp"] = (time.perf_counter() - t1) * 1e3
        T = T_pred @ res.transformation.cpu().numpy()
        jump_m, jump_deg = relative_motion(T_pred, T)
        if res.fitness < cfg.min_fitness:
            return self._reject(f"fitness {res.fitness:.2f} < {cfg.min_fitness}", res)
        if res.inlier_rmse > cfg.max_rmse_m:
            return self._reject(f"residual {res.inlier_rmse * 1000:.1f} mm", res)
        if jump_m > cfg.max_jump_m or jump_deg > cfg.max_jump_deg:
            return self._reject(f"implausible motion {jump_m:.2f} m / {jump_deg:.1f} deg", res)
        return self._accept(T, res)

    def _rgbd(self, depth_m: np.ndarray):
        image = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth_m), device=self.volume.device))
        return o3d.t.geometry.RGBDImage(image, image)

    def _accept(self, T: np.ndarray, res) -> TrackResult:
        m = self._motion
        if self.state == TrackState.OK:
            m.velocity = np.linalg.inv(m.last_good) @ T
        else:
            self._good_run += 1
            if self._good_run >= self.config.recover_frames:
                log.info("tracking recovered")
                self.state = TrackState.OK
            m.velocity = np.eye(4)
        m.last_good = T
        if self.state != TrackState.OK:
            return TrackResult(None, self.state, res.fitness, res.inlier_rmse, "recovering")
        return TrackResult(T, self.state, res.fitness, res.inlier_rmse)

    def _reject(self, reason: str, res=None) -> TrackResult:
        self.failures += 1
        if self.state == TrackState.OK:
            log.warning("tracking lost: %s; move back to known geometry", reason)
        self.state = TrackState.LOST if self.state == TrackState.OK else TrackState.RECOVERING
        self._good_run = 0
        self._motion.velocity = np.eye(4)
        fit = res.fitness if res is not None else 0.0
        rmse = res.inlier_rmse if res is not None else 0.0
        return TrackResult(None, self.state, fit, rmse, reason)
