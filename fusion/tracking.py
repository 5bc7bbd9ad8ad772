"""Owns camera tracking: frame-to-model ICP against the fused volume, failure checks, relocalisation.

Each frame is registered (`fusion.icp`: point-to-plane, multi-scale, refined with the sensor's depth
noise as weights and a normal gate) against the model's depth rendered at reduced resolution by the
trilinear raycaster, first from the constant-velocity prediction. When that fails a check (too few
inliers, a large residual, an implausible jump), the frame's ORB features give pose guesses against
stored keyframes (`fusion.relocalise`): the recent ones for fast motion, the most similar ones after a
loss. Each guess is refined and checked by the same ICP and must agree with the model seen from it
(`_inconsistency`): a young model overlaps a fast moving frame too little for the plain inlier share
to tell. A frame without an accepted pose is not
integrated; while lost, or beyond fast hand-held motion, an accepted pose (close to a keyframe) is a
relocalisation and integration resumes.
"""
from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

import numba as nb
import numpy as np
from scipy.spatial.transform import Rotation

from fusion.frame import Frame
from fusion.icp import IcpConfig, register
from fusion.relocalise import Features, Relocaliser, RelocaliserConfig
from fusion.volume import TsdfVolume

log = logging.getLogger(__name__)


class TrackState(str, enum.Enum):
    OK = "ok"
    LOST = "lost"


LOST_MESSAGE = "lost: point the camera at a part already scanned"


@dataclass(frozen=True)
class TrackerConfig:
    scale: float = 0.5                          #: resolution of tracking images relative to the frame
    iterations: tuple = (6, 8, 12)              #: ICP iterations per pyramid level, fine to coarse
    outlier_m: float = 0.07                     #: correspondences farther apart are ignored
    huber_m: float = 0.05                       #: Huber threshold of the point-to-plane residual
    normal_gate_deg: float = 20.0               #: refining: pairs whose normals differ more are ignored
    depth_noise_weights: bool = True            #: refining: weight residuals by the depth noise (grows with z^2)
    model_noise_voxels: float = 0.1             #: the model surface's own noise in voxels (adds to the sensor's)
    min_fitness: float = 0.25                   #: least share of pixels with a correspondence
    max_rmse_m: float = 0.025                   #: largest inlier RMSE accepted
    max_jump_m: float = 0.12                    #: largest translation of ICP away from its initial guess
    max_jump_deg: float = 12.0                  #: largest rotation of ICP away from its initial guess
    crosscheck_m: float = 0.04                  #: an ICP correction beyond this is checked against feature guesses
    crosscheck_deg: float = 4.0                 #: ... or beyond this rotation
    fast_max_m: float = 0.35                    #: largest frame-to-frame motion a feature guess may propose
    fast_max_deg: float = 35.0                  #: ... in rotation (while tracking)
    guess_min_fitness: float = 0.1              #: least inlier share from a feature guess (then checked below)
    reloc_min_overlap: float = 0.2              #: a guess: least share of frame pixels the model also sees
    reloc_min_agree: float = 0.6                #: ... least share of those within `reloc_agree_m` of the model
    reloc_agree_m: float = 0.03                 #: depth difference counted as agreement
    reloc_max_through: float = 0.1              #: ... most share seeing more than `outlier_m` behind the model
    reloc_max_keyframe_m: float = 2.0           #: a relocalised camera must be this close to a keyframe
    reloc_max_refine_m: float = 0.30            #: largest ICP translation away from a relocalisation guess
    reloc_max_refine_deg: float = 20.0          #: ... in rotation
    depth_max_m: float = 4.0                    #: depth beyond is not used for tracking
    motion_in_time: bool = True                 #: the motion model extrapolates over the time since the last good frame
    max_motion_extrapolation: float = 4.0       #: ... by at most this many times the last motion
    min_valid_share: float = 0.02               #: least share of valid pixels in frame and model render
    relocaliser: RelocaliserConfig = field(default_factory=RelocaliserConfig)

    def __post_init__(self):
        if self.scale not in (0.5, 1.0):
            raise ValueError("tracking scale must be 0.5 or 1.0")

    def icp(self, voxel_size_m: float) -> IcpConfig:
        """The solver's settings for a model of `voxel_size_m` voxels."""
        return IcpConfig(iterations=tuple(self.iterations), outlier_m=self.outlier_m, huber_m=self.huber_m,
                         normal_gate_deg=self.normal_gate_deg, depth_weighting=self.depth_noise_weights,
                         model_sigma_m=self.model_noise_voxels * voxel_size_m)


@dataclass
class TrackResult:
    """Outcome for one frame: the pose to use (None when rejected) and the quality measures."""

    T_world_cam: np.ndarray | None
    state: TrackState
    fitness: float = 0.0
    rmse_m: float = 0.0
    reason: str = ""  #: why it was rejected, or "relocalised"


@dataclass
class _Registration:
    """One ICP run from an initial guess: the pose (None when it failed a check) and why."""

    T: np.ndarray | None
    fitness: float = 0.0
    rmse_m: float = 0.0
    reason: str = ""
    moved_far: np.ndarray | None = None  #: where ICP ended when its only fault was moving too far from its start


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


def scale_motion(T: np.ndarray, factor: float) -> np.ndarray:
    """The rigid motion `factor` times T (rotation angle and translation scaled; exact for a screw
    motion along the rotation axis, close enough for the small motions between frames)."""
    if factor == 1.0:
        return np.array(T, float)
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(Rotation.from_matrix(T[:3, :3]).as_rotvec() * factor).as_matrix()
    out[:3, 3] = T[:3, 3] * factor
    return out


def relative_motion(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(translation m, rotation deg) between two poses."""
    D = np.linalg.inv(T_a) @ T_b
    return float(np.linalg.norm(D[:3, 3])), float(np.degrees(Rotation.from_matrix(D[:3, :3]).magnitude()))


@dataclass
class _Motion:
    last_good: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.eye(4))  #: motion between the last two good frames
    velocity_dt_s: float = 0.0           #: ... and the time between them (0: unknown)
    last_time_s: float | None = None     #: timestamp of the last good frame


class Tracker:
    """Frame-to-model tracker with feature guesses and relocalisation. Thread: the fusion thread only."""

    def __init__(self, volume: TsdfVolume, config: TrackerConfig = TrackerConfig()):
        self.volume = volume
        self.config = config
        self.state = TrackState.OK
        self.relocaliser = Relocaliser(config.relocaliser)
        self._motion: _Motion | None = None
        self.failures = 0          #: frames rejected
        self.losses = 0            #: times tracking was lost
        self.relocalisations = 0   #: times it was found again
        self.fast_recoveries = 0   #: frames posed by a feature guess where the motion model failed or slid
        self.last_timings_ms: dict[str, float] = {}  #: render and ICP time of the latest track()
        self._icp_config = config.icp(volume.config.voxel_size_m)

    def reset(self, T_world_cam: np.ndarray, timestamp_s: float | None = None) -> None:
        """Start (or restart) at a known pose (of the frame at `timestamp_s`, when known)."""
        self._motion = _Motion(np.array(T_world_cam, float), last_time_s=timestamp_s)
        self.state = TrackState.OK

    def lose(self) -> None:
        """Treat the next frames as lost: they relocalise against the keyframes and the model
        (a loaded session continued with another source)."""
        self.state = TrackState.LOST
        if self._motion is not None:
            self._motion.velocity = np.eye(4)

    @property
    def started(self) -> bool:
        return self._motion is not None

    def predict(self, timestamp_s: float | None = None) -> np.ndarray:
        """The pose expected at `timestamp_s`: constant velocity in time, so a frame that comes after
        a gap (a live camera whose frames fusion could not all take) is predicted that much further;
        without a timestamp, one more step of the last motion."""
        m = self._motion
        if self.state != TrackState.OK:
            return m.last_good
        factor = 1.0
        if timestamp_s is not None and m.last_time_s is not None and m.velocity_dt_s > 0:
            factor = float(np.clip((timestamp_s - m.last_time_s) / m.velocity_dt_s, 0.0,
                                   self.config.max_motion_extrapolation))
        return m.last_good @ scale_motion(m.velocity, factor)

    def keyframe(self, frame: Frame, T_world_cam: np.ndarray, feats: Features | None = None) -> None:
        """Offer an integrated frame as a keyframe (kept when far enough from the others)."""
        if self.relocaliser.wants(T_world_cam):
            t0 = time.perf_counter()
            self.relocaliser.add(frame, T_world_cam, feats)
            self.last_timings_ms["keyframe"] = (time.perf_counter() - t0) * 1e3

    def track(self, frame: Frame) -> TrackResult:
        """Register `frame` against the model; returns the accepted pose or a rejection.

        Order: ICP from the motion model; if that fails, or corrects the model by more than
        `crosscheck_m` / `crosscheck_deg` (fast motion, where ICP may slide along walls and floors),
        ICP from each feature guess (the recent keyframes and the most similar ones), checked against
        the model rendered from it. While lost (or beyond fast motion) an accepted guess is a
        relocalisation and must lie near a keyframe."""
        cfg = self.config
        self.last_timings_ms = {}
        src_depth = downsample_depth(frame.depth_m) if cfg.scale == 0.5 else frame.depth_m
        if np.count_nonzero(src_depth) < cfg.min_valid_share * src_depth.size:
            return self._reject("too little valid depth")
        T_pred = self.predict(frame.timestamp_s if cfg.motion_in_time else None)
        lost = self.state != TrackState.OK
        first = self._register(src_depth, frame, T_pred, verify=lost, jump=lost)
        if first.T is not None and not self._needs_crosscheck(T_pred, first.T):
            return self._accept(frame, first)
        t0 = time.perf_counter()
        feats = self.relocaliser.features(frame)
        found = self._from_features(src_depth, frame, feats, first)
        self.last_timings_ms["relocalise"] = (time.perf_counter() - t0) * 1e3
        if found is not None:  # a large ICP correction slides as often as it is right: features decide
            reg, jump, recovered = found
            return self._accept(frame, reg, feats, relocalised=jump, recovered=recovered)
        if first.T is not None:
            return self._accept(frame, first)
        return self._reject(first.reason, first)

    def _needs_crosscheck(self, T_pred: np.ndarray, T: np.ndarray) -> bool:
        """True when ICP moved far from the motion model (fast motion: on walls and floors it can slide)."""
        m, deg = relative_motion(T_pred, T)
        return m > self.config.crosscheck_m or deg > self.config.crosscheck_deg

    def _from_features(self, src_depth, frame: Frame, feats: Features,
                       first: _Registration) -> tuple[_Registration, bool, bool] | None:
        """The first feature guess that ICP refines and the model confirms, whether it is a jump and whether it
        recovered from ICP from the motion model (not a confirmation of it).
        When a guess (the most recent keyframes are matched first) lies within the cross-check's reach of `first`
        (ICP from the motion model), ICP did not slide: `first` stands (ICP from that guess ends where it did:
        within 3 mm in a probe of a fast synthetic scan), without matching the other keyframes, a second ICP and
        two model renders. So does ICP that moved farther from the motion model than it may (a camera that sped up
        between two fused frames) when a guess confirms it."""
        icp = first.T if first.T is not None else first.moved_far
        guesses = []
        for prop in self.relocaliser.each_proposal(frame, feats):
            jump = self._is_jump(prop.T_world_cam)
            if icp is not None and not jump and not self._needs_crosscheck(prop.T_world_cam, icp):
                return _Registration(icp, first.fitness, first.rmse_m), False, False
            guesses.append((prop, jump))
        for prop, jump in sorted(guesses, key=lambda g: -g[0].inliers):  # the guesses with most inliers first
            if jump and self._far_from_keyframes(prop.T_world_cam):
                continue
            reg = self._register(src_depth, frame, prop.T_world_cam, verify=True, jump=jump)
            if reg.T is not None:
                return reg, jump, True
        return None

    def _is_jump(self, T: np.ndarray) -> bool:
        """True when T is no continuation of the track (lost, or beyond fast hand-held motion)."""
        cfg = self.config
        if self.state != TrackState.OK:
            return True
        jump_m, jump_deg = relative_motion(self._motion.last_good, T)
        return jump_m > cfg.fast_max_m or jump_deg > cfg.fast_max_deg

    def _far_from_keyframes(self, T: np.ndarray) -> bool:
        positions = np.array([k.T_world_cam[:3, 3] for k in self.relocaliser.keyframes])
        return float(np.min(np.linalg.norm(positions - T[:3, 3], axis=1))) > self.config.reloc_max_keyframe_m

    def _register(self, src_depth: np.ndarray, frame: Frame, T_init: np.ndarray, verify: bool,
                  jump: bool) -> _Registration:
        """ICP of the frame against the model rendered from T_init, with the acceptance checks
        (`verify`: a guess, checked for agreement with the model instead of the plain inlier share;
        `jump`: a relocalisation, which ICP may refine further than a guess while tracking)."""
        cfg = self.config
        intr = frame.intrinsics.scaled(cfg.scale)
        t0 = time.perf_counter()
        model_depth = self.volume.render_depth(T_init, intr)
        t1 = time.perf_counter()
        self._add_time("track_render", t1 - t0)
        if np.count_nonzero(model_depth) < cfg.min_valid_share * model_depth.size:
            return _Registration(None, reason="the model is out of view")
        try:
            res = self._icp(src_depth, model_depth, intr)
        except RuntimeError:  # the system is degenerate (no overlap)
            return _Registration(None, reason="registration failed (no overlap)")
        self._add_time("track_icp", time.perf_counter() - t1)
        T = T_init @ res.transformation
        reason = self._fit_fault(res.fitness, res.inlier_rmse, verify)
        if not reason and (moved := self._motion_fault(*relative_motion(T_init, T), jump)):
            return _Registration(None, res.fitness, res.inlier_rmse, moved, moved_far=T)
        if verify and not reason:
            reason = self._inconsistency(src_depth, self.volume.render_depth(T, intr))
        return _Registration(None if reason else T, res.fitness, res.inlier_rmse, reason)

    def _icp(self, src_depth: np.ndarray, model_depth: np.ndarray, intr):
        src_depth = np.where(src_depth <= self.config.depth_max_m, src_depth, 0).astype(np.float32)
        return register(src_depth, model_depth, (intr.fx, intr.fy, intr.cx, intr.cy), self._icp_config,
                        downsample_depth)

    def _inconsistency(self, src_depth: np.ndarray, model_depth: np.ndarray) -> str:
        """Why a relocalised pose disagrees with the model ("" when it agrees): too little overlap,
        too few agreeing pixels, or the frame seeing through surfaces the model holds (a camera
        inside a wall or behind the scene)."""
        cfg = self.config
        src_valid = src_depth > 0
        both = src_valid & (model_depth > 0)
        n = max(1, int(np.count_nonzero(both)))
        overlap = n / max(1, int(np.count_nonzero(src_valid)))
        diff = src_depth[both] - model_depth[both]
        agree = np.count_nonzero(np.abs(diff) < cfg.reloc_agree_m) / n
        through = np.count_nonzero(diff > cfg.outlier_m) / n
        if overlap < cfg.reloc_min_overlap:
            return f"relocalisation overlaps the model by {overlap:.2f} < {cfg.reloc_min_overlap}"
        if agree < cfg.reloc_min_agree or through > cfg.reloc_max_through:
            return f"relocalisation disagrees with the model (agree {agree:.2f}, see-through {through:.2f})"
        return ""

    def _fit_fault(self, fitness: float, rmse_m: float, verify: bool) -> str:
        """Why an ICP result fits too poorly ("" when it fits)."""
        cfg = self.config
        min_fitness = cfg.guess_min_fitness if verify else cfg.min_fitness
        if fitness < min_fitness:
            return f"fitness {fitness:.2f} < {min_fitness}"
        if rmse_m > cfg.max_rmse_m:
            return f"residual {rmse_m * 1000:.1f} mm"
        return ""

    def _motion_fault(self, moved_m: float, moved_deg: float, jump: bool) -> str:
        """Why ICP moved implausibly far from its start ("" when it did not)."""
        cfg = self.config
        max_m, max_deg = (cfg.reloc_max_refine_m, cfg.reloc_max_refine_deg) if jump else (cfg.max_jump_m, cfg.max_jump_deg)
        if moved_m > max_m or moved_deg > max_deg:
            return f"implausible motion {moved_m:.2f} m / {moved_deg:.1f} deg"
        return ""

    def _add_time(self, key: str, seconds: float) -> None:
        self.last_timings_ms[key] = self.last_timings_ms.get(key, 0.0) + seconds * 1e3

    def _accept(self, frame: Frame, reg: _Registration, feats: Features | None = None,
                relocalised: bool = False, recovered: bool = False) -> TrackResult:
        m = self._motion
        relocalised = relocalised or self.state != TrackState.OK
        if relocalised:
            self.relocalisations += 1
            self.state = TrackState.OK
            m.velocity = np.eye(4)
            log.info("relocalised at frame %d", frame.index)
        else:
            self.fast_recoveries += recovered
            m.velocity = np.linalg.inv(m.last_good) @ reg.T
            m.velocity_dt_s = frame.timestamp_s - m.last_time_s if m.last_time_s is not None else 0.0
        m.last_good, m.last_time_s = reg.T, frame.timestamp_s
        self.keyframe(frame, reg.T, feats)
        return TrackResult(reg.T, self.state, reg.fitness, reg.rmse_m, "relocalised" if relocalised else "")

    def _reject(self, reason: str, reg: _Registration | None = None) -> TrackResult:
        self.failures += 1
        if self.state == TrackState.OK:
            self.losses += 1
            log.warning("tracking %s (%s)", LOST_MESSAGE, reason)
        self.state = TrackState.LOST
        self._motion.velocity = np.eye(4)
        fit = reg.fitness if reg is not None else 0.0
        rmse = reg.rmse_m if reg is not None else 0.0
        return TrackResult(None, self.state, fit, rmse, reason)
