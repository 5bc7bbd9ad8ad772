"""Owns settling gravity while a scan is young: the aligned start pose, re-estimates from the fused
geometry, rebuilds of the volume in a corrected world, and the report of how gravity was found.

A source with ground-truth poses keeps its own frame ("gt"). Otherwise the first frame gives a first
estimate (`fusion.gravity`: up from its accelerometer reading when the camera has an IMU, "imu", else
from its depth; the floor from its depth) and tracking starts from the aligned pose, so the fusion world
itself is gravity-aligned. While the scan is young (`max_frames` integrated frames) every frame is kept
(depth, colour, pose) and the estimate is redone from the fused surface every `every_frames` frames. A
correction beyond the rebuild bounds moves the world: a fresh volume is integrated from the kept frames
with corrected poses and re-meshed, and tracking goes on from the corrected pose. Until gravity has
settled (stable estimates, or the window is over, or `settle_now` at the end of a scan) the pipeline
holds the nets' dirty marks back, so no label is computed in a world that later moves.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from fusion.gravity import (PRIOR_UP_CAM, GravityConfig, GravityEstimate, GravityEstimator, angle_deg,
                            depth_points, subsample)

log = logging.getLogger(__name__)
UP = np.array([0.0, 0, 1])
RANK = {"assumed": 0, "walls": 1, "floor": 2, "imu": 3}  #: a later estimate replaces one of at most its rank


@dataclass(frozen=True)
class SettleConfig:
    """When gravity is re-estimated, when the world is rebuilt, when it counts as settled."""

    enabled: bool = True            #: align a world without ground truth (False: the first camera's frame)
    estimator: GravityConfig = field(default_factory=GravityConfig)
    every_frames: int = 10          #: re-estimate from the fused surface every this many integrated frames
    min_frames: int = 20            #: integrated frames before gravity may settle early
    max_frames: int = 60            #: gravity settles after this many integrated frames (all kept till then)
    stable_checks: int = 2          #: re-estimates in a row within the stable bounds settle it early
    stable_deg: float = 0.5         #: a re-estimate this close in tilt counts as stable ...
    stable_m: float = 0.01          #: ... if the floor moved less than this
    settle_confidence: float = 0.6  #: early settling needs at least this confidence
    rebuild_tilt_deg: float = 1.0   #: a larger change of up rebuilds the volume
    rebuild_yaw_deg: float = 3.0    #: a larger turn about up rebuilds it
    rebuild_m: float = 0.03         #: a larger move of the floor rebuilds it
    rebuild_guess_m: float = 0.2    #: ... or of a floor height that is a guess (no floor in view)
    min_mesh_points: int = 2000     #: fewer fused mesh vertices: re-estimate from the kept frames' depth
    frame_points: int = 3000        #: points per kept frame when estimating from depth


@dataclass(frozen=True)
class GravityReport:
    """How the world was aligned with gravity (immutable; for stats, sessions and the GUI)."""

    method: str = "camera"          #: gt | imu | floor | walls | assumed | camera (not aligned)
    confidence: float = 0.0         #: 0..1
    tilt_deg: float | None = None   #: final up against the first camera's assumed up (-y)
    settled_frame: int | None = None  #: index of the frame at which gravity settled
    rebuilds: int = 0               #: times the volume was rebuilt in a corrected world

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["confidence"] = round(self.confidence, 3)
        d["tilt_deg"] = None if self.tilt_deg is None else round(self.tilt_deg, 2)
        return d


@dataclass(frozen=True)
class SettleStep:
    """What one step did: the world change (new <- old) when it rebuilt, the chunks re-meshed, and
    whether gravity settled now."""

    correction: np.ndarray | None = None
    mesh_chunks: frozenset = frozenset()
    settled_now: bool = False


NO_STEP = SettleStep()


def restate_stamp(stamp, C: np.ndarray):
    """An integration stamp (any frozen dataclass with T_world_cam) moved into the world C @ old."""
    return dataclasses.replace(stamp, T_world_cam=C @ stamp.T_world_cam)


def _imu_up(kept: list) -> np.ndarray | None:
    """Mean accelerometer direction (up) in the world over (frame, T_world_cam) pairs; None without IMU."""
    ups = [T[:3, :3] @ (f.accel_cam / np.linalg.norm(f.accel_cam)) for f, T in kept
           if getattr(f, "accel_cam", None) is not None]
    return np.mean(ups, axis=0) if ups else None


def correction_size(C: np.ndarray) -> tuple[float, float, float]:
    """(tilt deg, yaw deg, floor move m) of a world change C (new <- old)."""
    R = C[:3, :3]
    tilt = angle_deg(R[2], np.array([0.0, 0, 1]))  # R[2] is the new up in the old world
    yaw = abs(float(np.degrees(np.arctan2(R[1, 0] - R[0, 1], R[0, 0] + R[1, 1]))))
    return tilt, yaw, abs(float(C[2, 3]))


class GravitySettler:
    """Aligns the fusion world with gravity while the scan is young. Thread: the fusion thread."""

    def __init__(self, config: SettleConfig, volume, mesher, remesh: bool = True):
        self.config = config
        self.volume, self.mesher, self.remesh = volume, mesher, remesh
        self.estimator = GravityEstimator(config.estimator)
        self.state = "idle"             #: idle | settling | settled
        self.changes: list[tuple[int, np.ndarray]] = []  #: (frame index of the rebuild, world change)
        self._report = GravityReport()
        self._kept: list[tuple] = []    # (frame, T_world_cam) of every integrated frame while settling
        self._T_first = np.eye(4)       # the first camera in the current world
        self._stable = 0

    @property
    def holds_labels(self) -> bool:
        """True while the world may still move (the nets must wait)."""
        return self.state == "settling"

    def report(self) -> GravityReport:
        return self._report

    def restore(self, report: dict | None) -> None:
        """Take a saved report (a loaded session lives in its saved world; nothing moves any more)."""
        fields = {f.name for f in dataclasses.fields(GravityReport)}
        self._report = GravityReport(**{k: v for k, v in (report or {}).items() if k in fields})
        self.state = "settled"

    def start(self, frame, T_start: np.ndarray | None, poses: str) -> np.ndarray | None:
        """The first fused frame's pose: T_start (ground truth) when given, else the aligned start."""
        if self.state != "idle":
            return T_start
        if T_start is not None or poses == "gt" or not self.config.enabled:
            method = "gt" if T_start is not None or poses == "gt" else "camera"
            self._settle(dataclasses.replace(self._report, method=method, confidence=float(method == "gt")), frame.index)
            return T_start
        P, N = depth_points(frame.depth_m, frame.intrinsics, np.eye(4), self.config.estimator)
        est = self.estimator.estimate(P, N, PRIOR_UP_CAM, np.zeros(3), _imu_up([(frame, np.eye(4))]))
        self._T_first = est.T_aligned_world.copy()
        self._report = self._report_of(est)
        self.state = "settling"
        log.info("gravity: first frame says %s (confidence %.2f, tilt %.1f deg)", est.method, est.confidence,
                 self._report.tilt_deg)
        return self._T_first.copy()

    def after_integrate(self, frame, T_world_cam: np.ndarray) -> SettleStep:
        """Keep the frame while settling; re-estimate when due (may rebuild and settle)."""
        if self.state != "settling":
            return NO_STEP
        self._kept.append((frame, np.array(T_world_cam, float)))
        n, cfg = len(self._kept), self.config
        if n % cfg.every_frames and n < cfg.max_frames:
            return NO_STEP
        step = self._reestimate(frame.index)
        r = self._report
        early = self._stable >= cfg.stable_checks and n >= cfg.min_frames and r.confidence >= cfg.settle_confidence
        if early or n >= cfg.max_frames:
            return dataclasses.replace(step, settled_now=self._settle(r, frame.index))
        return step

    def settle_now(self, frame_index: int) -> SettleStep:
        """Settle at once (end of a scan): one last estimate from what was fused, then done."""
        if self.state != "settling":
            return NO_STEP
        step = self._reestimate(frame_index + 1) if self._kept else NO_STEP  # the last frame's pose moves too
        return dataclasses.replace(step, settled_now=self._settle(self._report, frame_index))

    def restate(self, frame_index: int, T_world_cam: np.ndarray) -> np.ndarray:
        """A pose the pipeline returned for frame `frame_index`, in the final world (later rebuilds applied)."""
        for index, C in self.changes:
            if frame_index < index:
                T_world_cam = C @ T_world_cam
        return T_world_cam

    # --- internals ----------------------------------------------------------------------------
    def _settle(self, report: GravityReport, frame_index: int) -> bool:
        self._report = dataclasses.replace(report, settled_frame=int(frame_index))
        self.state, self._kept = "settled", []
        if report.method not in ("gt", "camera"):
            log.info("gravity settled at frame %d: %s, confidence %.2f, tilt %.1f deg, %d rebuild(s)", frame_index,
                     report.method, report.confidence, report.tilt_deg or 0.0, report.rebuilds)
        return True

    def _report_of(self, est: GravityEstimate) -> GravityReport:
        up_cam = self._T_first[:3, :3].T @ np.array([0.0, 0, 1])
        return dataclasses.replace(self._report, method=est.method, confidence=est.confidence,
                                   tilt_deg=angle_deg(up_cam, PRIOR_UP_CAM))

    def _reestimate(self, frame_index: int) -> SettleStep:
        P, N = self._fused_points()
        est = self.estimator.estimate(P, N, UP, self._camera_center(), _imu_up(self._kept))
        if RANK[est.method] < RANK[self._report.method] and not self._floor_refuted(P, N):
            self._stable = 0
            return NO_STEP  # saw less than before (e.g. only a wall up close): keep the world
        cfg, C = self.config, est.T_aligned_world
        tilt, yaw, move = correction_size(C)
        guess = est.floor_height_m is None
        if tilt > cfg.rebuild_tilt_deg or yaw > cfg.rebuild_yaw_deg or move > (cfg.rebuild_guess_m if guess else cfg.rebuild_m):
            self._stable = 0
            step = self._rebuild(C, frame_index)
        else:
            self._stable = self._stable + 1 if tilt <= cfg.stable_deg and (guess or move <= cfg.stable_m) else 0
            step = NO_STEP
        self._report = self._report_of(est)
        return step

    def _floor_refuted(self, P, N) -> bool:
        """The world's floor (z = 0) was measured, and surface has since been seen well below it."""
        return self._report.method == "floor" and self.estimator.floor_refuted(P, N, UP, 0.0)

    def _fused_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertices and normals of the fused mesh, else points of the kept frames' depth."""
        meshes = [m for blocks in self.mesher.chunks.values() for m in blocks.values()]
        if sum(len(m.positions_m) for m in meshes) >= self.config.min_mesh_points:
            return (np.concatenate([m.positions_m for m in meshes]), np.concatenate([m.normals for m in meshes]))
        parts = [subsample(*depth_points(f.depth_m, f.intrinsics, T, self.config.estimator), self.config.frame_points)
                 for f, T in self._kept]
        return np.concatenate([p for p, _ in parts]), np.concatenate([n for _, n in parts])

    def _camera_center(self) -> np.ndarray:
        """A kept camera at the median height (the floor lies well below the person's camera)."""
        centers = np.array([T[:3, 3] for _, T in self._kept])
        return centers[np.argsort(centers[:, 2])[len(centers) // 2]]

    def _rebuild(self, C: np.ndarray, frame_index: int) -> SettleStep:
        """Integrate the kept frames afresh with poses C @ T; re-mesh. The frame count stays."""
        log.info("gravity: the world turns by %.1f deg tilt / %.1f deg yaw and the floor moves %.3f m; "
                 "re-integrating %d frames", *correction_size(C), len(self._kept))
        old_chunks = set(self.mesher.chunks)
        count = self.volume.frames_integrated
        self.volume.clear()
        self._kept = [(f, C @ T) for f, T in self._kept]
        touched = [self.volume.integrate(f, T) for f, T in self._kept]
        self.volume.frames_integrated = count
        self.mesher.reset()
        changed = set()
        if self.remesh:
            changed = self.mesher.update(np.unique(np.concatenate(touched), axis=0)) | self.mesher.flush()
        self.changes.append((int(frame_index), C.copy()))
        self._T_first = C @ self._T_first
        self._report = dataclasses.replace(self._report, rebuilds=self._report.rebuilds + 1)
        return SettleStep(C.copy(), frozenset(old_chunks | changed))
