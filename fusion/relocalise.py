"""Owns keyframes and pose proposals from features: ORB keypoints with world points, RANSAC PnP.

A keyframe keeps the ORB keypoints of a tracked frame that have valid depth, as points in the world,
and a small zero-mean thumbnail (a global descriptor). `each_proposal()` takes the most recent keyframes
(for fast motion), then those with the most similar thumbnails (for a return after a loss), matches the
frame's ORB descriptors against each one's (ratio test) and solves the camera pose by RANSAC PnP on its
world points, one keyframe at a time. The proposals are only guesses: the tracker verifies each one against
the model (ICP, residual and overlap) before it uses it.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from fusion.frame import Frame

log = logging.getLogger(__name__)
cv2.setNumThreads(1)


@dataclass(frozen=True)
class RelocaliserConfig:
    max_keyframes: int = 400            #: keyframes kept (the oldest are thinned out beyond)
    keyframe_step_m: float = 0.10       #: a tracked frame this far from every keyframe becomes one
    keyframe_step_deg: float = 10.0     #: ... or turned this much from the nearest one
    n_features: int = 1500              #: ORB keypoints per frame at most
    ratio: float = 0.8                  #: Lowe ratio of best to second-best descriptor distance
    reprojection_px: float = 8.0        #: RANSAC PnP inlier threshold (full-resolution pixels)
    min_inliers: int = 20               #: fewest PnP inliers for a proposal
    candidates: int = 4                 #: keyframes tried by thumbnail similarity
    recent: int = 2                     #: most recent keyframes always tried as well
    thumb_px: tuple = (32, 24)          #: thumbnail size (width, height) of the global descriptor
    depth_range_m: tuple = (0.3, 6.0)   #: keypoint depth used for world points
    depth_spread: float = 0.03          #: keypoints whose neighbours' depth differs more (share) are not used


@dataclass(frozen=True)
class Features:
    """ORB keypoints (N,2) px, descriptors (N,32) uint8 and the thumbnail (immutable)."""

    keypoints_px: np.ndarray
    descriptors: np.ndarray
    thumb: np.ndarray


@dataclass(frozen=True)
class Keyframe:
    index: int                  #: the frame's index in its source
    T_world_cam: np.ndarray
    descriptors: np.ndarray     #: (N,32) uint8, only keypoints with valid depth
    points_world_m: np.ndarray  #: (N,3) float32
    thumb: np.ndarray


@dataclass(frozen=True)
class Proposal:
    T_world_cam: np.ndarray
    inliers: int
    keyframe: int               #: source index of the keyframe it came from


def _flat_depth(depth_m: np.ndarray, u: np.ndarray, v: np.ndarray, spread: float) -> np.ndarray:
    """True for pixels whose 5x5 neighbourhood is all valid and within `spread` of its depth
    (keypoints on depth edges would take foreground or background depth at random)."""
    h, w = depth_m.shape
    ok = np.ones(len(u), bool)
    z = depth_m[v, u]
    for dv in (-2, 0, 2):
        for du in (-2, 0, 2):
            n = depth_m[np.clip(v + dv, 0, h - 1), np.clip(u + du, 0, w - 1)]
            ok &= (n > 0) & (np.abs(n - z) <= spread * z)
    return ok


def _gray(frame: Frame) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame.color), cv2.COLOR_RGB2GRAY)


def _thumb(gray: np.ndarray, size) -> np.ndarray:
    t = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-6)


class Relocaliser:
    """Keyframe store and PnP proposals. Thread: the fusion thread only."""

    def __init__(self, config: RelocaliserConfig = RelocaliserConfig()):
        self.config = config
        self.keyframes: list[Keyframe] = []
        self._orb = cv2.ORB_create(nfeatures=config.n_features)
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def features(self, frame: Frame) -> Features:
        gray = _gray(frame)
        kps, desc = self._orb.detectAndCompute(gray, None)
        pts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
        desc = desc if desc is not None else np.zeros((0, 32), np.uint8)
        return Features(pts, desc, _thumb(gray, self.config.thumb_px))

    def wants(self, T_world_cam: np.ndarray) -> bool:
        """True when a frame at this pose is far enough from every keyframe to become one."""
        cfg = self.config
        if not self.keyframes:
            return True
        poses = np.array([kf.T_world_cam for kf in self.keyframes])
        near = np.linalg.norm(poses[:, :3, 3] - T_world_cam[:3, 3], axis=1) < cfg.keyframe_step_m
        # rotation angle of R_kf^T R from its trace
        cos = (np.einsum("kij,ij->k", poses[near, :3, :3], T_world_cam[:3, :3]) - 1) / 2
        return not np.any(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) < cfg.keyframe_step_deg)

    def add(self, frame: Frame, T_world_cam: np.ndarray, feats: Features | None = None) -> None:
        feats = feats if feats is not None else self.features(frame)
        pts, ok = self.keypoint_points(frame, T_world_cam, feats.keypoints_px)
        if np.count_nonzero(ok) < self.config.min_inliers:
            return
        self.keyframes.append(Keyframe(frame.index, np.array(T_world_cam, float), feats.descriptors[ok],
                                       pts[ok], feats.thumb))
        if len(self.keyframes) > self.config.max_keyframes:  # thin the older half, keep the recent ones
            half = len(self.keyframes) // 2
            self.keyframes = self.keyframes[:half:2] + self.keyframes[half:]

    def keypoint_points(self, frame: Frame, T: np.ndarray, kp: np.ndarray):
        """Keypoints `kp` (N,2) px lifted with the frame's depth and moved by T: ((N,3) float32 points,
        (N,) bool usable: depth in range and not on a depth edge)."""
        h, w = frame.depth_m.shape
        u = np.clip(np.round(kp[:, 0]).astype(int), 0, w - 1)
        v = np.clip(np.round(kp[:, 1]).astype(int), 0, h - 1)
        z = frame.depth_m[v, u]
        lo, hi = self.config.depth_range_m
        ok = (z > lo) & (z < hi) & _flat_depth(frame.depth_m, u, v, self.config.depth_spread)
        cam = frame.intrinsics.backproject(kp[:, 0], kp[:, 1], z)
        return (cam @ T[:3, :3].T + T[:3, 3]).astype(np.float32), ok

    def _candidates(self, thumb: np.ndarray) -> list[Keyframe]:
        """The most recent keyframes (newest first), then the most similar thumbnails."""
        cfg = self.config
        kfs = self.keyframes
        sims = np.array([kf.thumb @ thumb for kf in kfs])
        order = list(range(len(kfs) - 1, max(0, len(kfs) - cfg.recent) - 1, -1))
        order += [i for i in np.argsort(-sims)[:cfg.candidates] if i not in order]
        return [kfs[i] for i in order]

    def each_proposal(self, frame: Frame, feats: Features | None = None):
        """Camera poses for `frame`, one keyframe at a time (the most recent first), as they are solved: a caller
        that finds what it needs stops the matching there (each keyframe costs about 18 ms on 2 cores)."""
        if not self.keyframes:
            return
        feats = feats if feats is not None else self.features(frame)
        if len(feats.descriptors) < self.config.min_inliers:
            return
        for kf in self._candidates(feats.thumb):
            if (p := self._solve(frame, feats, kf)) is not None:
                yield p

    def match(self, query: np.ndarray, train: np.ndarray) -> list:
        """ORB matches (cv2.DMatch) of `query` descriptors in `train` that pass the ratio test."""
        if len(query) < 2 or len(train) < 2:
            return []
        pairs = self._matcher.knnMatch(query, train, k=2)
        return [m[0] for m in pairs if len(m) == 2 and m[0].distance < self.config.ratio * m[1].distance]

    def _solve(self, frame: Frame, feats: Features, kf: Keyframe) -> Proposal | None:
        cfg = self.config
        good = self.match(feats.descriptors, kf.descriptors)
        if len(good) < cfg.min_inliers:
            return None
        obj = kf.points_world_m[[m.trainIdx for m in good]].astype(np.float64)
        img = feats.keypoints_px[[m.queryIdx for m in good]].astype(np.float64)
        ok, rvec, tvec, inl = cv2.solvePnPRansac(obj, img, frame.intrinsics.matrix(), None,
                                                 iterationsCount=300, reprojectionError=cfg.reprojection_px,
                                                 confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or inl is None or len(inl) < cfg.min_inliers:
            return None
        T_cam_world = np.eye(4)
        T_cam_world[:3, :3] = cv2.Rodrigues(rvec)[0]
        T_cam_world[:3, 3] = tvec.ravel()
        return Proposal(np.linalg.inv(T_cam_world), int(len(inl)), kf.index)

    def move_world(self, C: np.ndarray) -> None:
        """The keyframes (poses and world points) follow a change of world C (new <- old)."""
        self.move_each(lambda _index: C)

    def move_each(self, correction_of_index) -> None:
        """Each keyframe follows its own change of world: `correction_of_index(frame index)` -> C (new <- old)
        (a loop closure moves the parts of a scan differently)."""
        def moved(k: Keyframe, C: np.ndarray) -> Keyframe:
            return dataclasses.replace(k, T_world_cam=C @ k.T_world_cam,
                                       points_world_m=(k.points_world_m @ C[:3, :3].T + C[:3, 3]).astype(np.float32))

        self.keyframes = [moved(k, correction_of_index(k.index)) for k in self.keyframes]

    def to_arrays(self) -> dict:
        """The keyframes as flat arrays (for sessions)."""
        kfs = self.keyframes
        return {"index": np.array([k.index for k in kfs], np.int64),
                "poses": np.array([k.T_world_cam for k in kfs], np.float64).reshape(-1, 4, 4),
                "counts": np.array([len(k.descriptors) for k in kfs], np.int64),
                "descriptors": np.concatenate([k.descriptors for k in kfs]) if kfs else np.zeros((0, 32), np.uint8),
                "points_m": np.concatenate([k.points_world_m for k in kfs]) if kfs else np.zeros((0, 3), np.float32),
                "thumbs": np.array([k.thumb for k in kfs], np.float32).reshape(len(kfs), np.prod(self.config.thumb_px))}

    def load_arrays(self, a: dict) -> None:
        """Replace the keyframes with those of `to_arrays` output."""
        ends = np.cumsum(a["counts"])
        starts = ends - a["counts"]
        self.keyframes = [Keyframe(int(i), T, a["descriptors"][s:e], a["points_m"][s:e], th)
                          for i, T, s, e, th in zip(a["index"], a["poses"], starts, ends, a["thumbs"])]
