"""Owns loop detection: keyframe descriptors, place recognition among old keyframes, geometric verification.

A keyframe (`MapKeyframe`, kept by `loopclosure.closer`) is described once (`describe`) by the
relocaliser's ORB features and thumbnail (`fusion.relocalise`), its keypoints lifted into its own camera
frame. `candidates` proposes old keyframes (not the recent neighbours) near the current one, allowing for
drift along the path between them: the most similar thumbnails, re-ranked by their ORB matches.
`verify` checks a candidate strictly, since repeated furniture looks alike: ORB matches, 3D-3D RANSAC,
point-to-plane ICP on the two depth images (must agree with the feature pose), then both depth images
seen from each other must agree where they overlap and neither may see through the other's surfaces (a
look-alike chair in front of another wall fails here), and the implied drift must be plausible for the
path walked.
Thread: the loop-closure worker only (one detector per worker).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

from fusion.frame import Frame, Intrinsics
from fusion.relocalise import Relocaliser, RelocaliserConfig
from fusion.tracking import relative_motion
from fusion.trajectory import align_rigid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopDetectConfig:
    min_age_keyframes: int = 12         #: candidates are at least this many keyframes older ...
    min_walk_m: float = 3.0             #: ... and this far back along the path walked
    search_m: float = 0.6               #: candidates lie this close to the keyframe (plus the drift allowance)
    shortlist: int = 12                 #: old keyframes within reach ranked by ORB matches (most similar thumbnails)
    candidates: int = 3                 #: ... of which those with the most matches are verified
    min_matches: int = 40               #: fewest ORB matches (ratio test) to try RANSAC
    ransac_m: float = 0.03              #: 3D-3D RANSAC inlier distance
    ransac_iterations: int = 400        #: RANSAC hypotheses
    min_inliers: int = 30               #: fewest RANSAC inliers
    min_inlier_share: float = 0.25      #: ... and least share of the matches
    icp_voxel_m: float = 0.02           #: depth clouds are thinned to this spacing for ICP
    icp_max_m: tuple = (0.06, 0.025)    #: ICP correspondence distance per stage
    icp_source_every: int = 4           #: ICP moves every n-th point of the keyframe's cloud (onto the old one's
    #:     whole cloud): about half the time for the same fit; the information matrix uses every point
    min_icp_fitness: float = 0.35       #: least share of points with an ICP correspondence
    max_icp_rmse_m: float = 0.015       #: largest ICP inlier RMSE
    max_icp_shift_m: float = 0.06       #: ICP may move the feature pose this much at most ...
    max_icp_shift_deg: float = 4.0      #: ... and turn it this much
    min_overlap: float = 0.3            #: least share of each depth image that the other also sees
    min_agree: float = 0.65             #: ... least share of that overlap within agree_m of the other's depth
    agree_m: float = 0.03               #: depth difference counted as agreement
    max_through: float = 0.08           #: most share of the overlap lying in front of the other's surface
    through_m: float = 0.06             #: ... by more than this
    drift_base_m: float = 0.10          #: implied drift allowed at most: this ...
    drift_share: float = 0.05           #: ... plus this share of the path over which the two keyframes may have
    #:     drifted apart (the caller's `walked_m`: `loopclosure.keyframes.unpinned_walk_m`)
    drift_base_deg: float = 3.0         #: implied rotation drift allowed: this ...
    drift_deg_per_m: float = 2.5        #: ... plus this many degrees per metre walked
    depth_max_m: float = 4.0            #: depth beyond is not used for verification
    max_clouds: int = 64                #: ICP clouds kept for reuse (most recently used; about 1 MB each)
    features: RelocaliserConfig = field(default_factory=lambda: RelocaliserConfig(n_features=1500))


@dataclass(frozen=True)
class KeyframeFeatures:
    """ORB descriptors with their keypoints in the keyframe's camera frame, and the thumbnail (immutable)."""

    points_cam_m: np.ndarray    #: (N,3) float32
    descriptors: np.ndarray     #: (N,32) uint8
    thumb: np.ndarray


@dataclass(frozen=True)
class MapKeyframe:
    """A stored keyframe: reduced RGB-D for verification and map rebuilds (immutable)."""

    kid: int                    #: keyframe id, increasing
    index: int                  #: the frame's index in its source
    timestamp_s: float
    color: np.ndarray           #: (h,w,3) uint8 at the store's scale
    depth_mm: np.ndarray        #: (h,w) uint16 millimetres, 0 = none
    intrinsics: Intrinsics      #: of the stored images

    def frame(self) -> Frame:
        """The stored images as a Frame (depth in metres)."""
        return Frame(self.color, self.depth_mm.astype(np.float32) / 1000.0, self.intrinsics, self.timestamp_s, self.index)

    @property
    def nbytes(self) -> int:
        return int(self.color.nbytes + self.depth_mm.nbytes)


@dataclass(frozen=True)
class LoopEdge:
    """A verified loop: T_old_cur maps the new keyframe's camera frame into the old one's (immutable)."""

    old: int                    #: keyframe id of the old keyframe
    cur: int                    #: keyframe id of the new keyframe
    T_old_cur: np.ndarray
    inliers: int
    fitness: float
    rmse_m: float
    information: np.ndarray     #: (6,6) from the ICP correspondences
    drift_m: float              #: how far the odometry's relative pose was from the loop's
    drift_deg: float
    old_frame: int = -1         #: source frame index of the old keyframe
    cur_frame: int = -1         #: ... and of the new one


@dataclass(frozen=True)
class Verdict:
    edge: LoopEdge | None
    reason: str = ""            #: why it was rejected


def _ransac_rigid(src: np.ndarray, dst: np.ndarray, thresh_m: float, iterations: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Rigid T with T(src) ~= dst from 3-point samples; (T 4x4, inlier mask) refit on the best inliers."""
    n = len(src)
    idx = rng.integers(0, n, (iterations, 3))
    S, D = src[idx], dst[idx]                                   # (k,3,3)
    ms, md = S.mean(1, keepdims=True), D.mean(1, keepdims=True)
    U, _, Vt = np.linalg.svd(np.einsum("kni,knj->kij", S - ms, D - md))
    sign = np.sign(np.linalg.det(U @ Vt))                      # det(V U^T): a reflection flips the last axis
    Dg = np.zeros((len(idx), 3, 3))
    Dg[:, 0, 0] = Dg[:, 1, 1] = 1.0
    Dg[:, 2, 2] = np.where(sign == 0, 1.0, sign)
    R = np.transpose(Vt, (0, 2, 1)) @ Dg @ np.transpose(U, (0, 2, 1))
    t = md[:, 0] - np.einsum("kij,kj->ki", R, ms[:, 0])
    err = np.linalg.norm(np.einsum("kij,nj->kni", R, src) + t[:, None] - dst[None], axis=2)
    best = int(np.argmax((err < thresh_m).sum(1)))
    inl = err[best] < thresh_m
    T = np.eye(4)
    if inl.sum() >= 3:
        T[:3, :3], T[:3, 3] = align_rigid(src[inl], dst[inl])
        inl = np.linalg.norm(src @ T[:3, :3].T + T[:3, 3] - dst, axis=1) < thresh_m
    return T, inl


def voxel_means(points_m: np.ndarray, voxel_m: float) -> np.ndarray:
    """(M,3) float64: the mean of the points in each occupied voxel of a grid whose first voxel centre is the
    points' lowest corner (what Open3D's `voxel_down_sample` returns, in another order)."""
    p = np.asarray(points_m, np.float64)
    keys = np.floor((p - (p.min(0) - voxel_m / 2)) / voxel_m).astype(np.int64)
    dims = keys.max(0) + 1
    _, inv, counts = np.unique((keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2],
                               return_inverse=True, return_counts=True)
    return np.stack([np.bincount(inv, weights=p[:, k]) for k in range(3)], axis=1) / counts[:, None]


def _cloud(points_cam_m: np.ndarray, voxel_m: float) -> o3d.geometry.PointCloud:
    """The ICP cloud of a keyframe: its points thinned to voxel_m, with normals. Built without Open3D's legacy
    `voxel_down_sample` and `estimate_normals`, which hold the GIL (the fusion thread stalled for the 60 ms a
    keyframe's cloud takes); the tensor normals give the same normals and release it."""
    p = voxel_means(points_cam_m, voxel_m) if len(points_cam_m) else np.zeros((0, 3))
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    if len(p):
        t = o3d.t.geometry.PointCloud(o3d.core.Tensor(p))
        t.estimate_normals(max_nn=30, radius=3 * voxel_m)
        pc.normals = o3d.utility.Vector3dVector(t.point.normals.numpy())
    return pc


def depth_points(kf: MapKeyframe, depth_max_m: float) -> np.ndarray:
    """(N,3) camera-frame points of the keyframe's stored depth within depth_max_m."""
    z = kf.depth_mm.astype(np.float32) / 1000.0
    v, u = np.nonzero((z > 0) & (z <= depth_max_m))
    return kf.intrinsics.backproject(u, v, z[v, u]).astype(np.float32)


def depth_difference(points_src_m: np.ndarray, T_dst_src: np.ndarray, dst: MapKeyframe) -> np.ndarray:
    """(N,) for each src point (src camera frame) moved into dst's camera frame by T_dst_src: its depth minus
    dst's stored depth at the pixel it lands on (negative: in front of dst's surface, where dst saw through);
    NaN where it lands on no valid depth of dst."""
    p = points_src_m @ T_dst_src[:3, :3].T + T_dst_src[:3, 3]
    i = dst.intrinsics
    z = p[:, 2]
    out = np.full(len(p), np.nan, np.float32)
    front = np.nonzero(z > 0.05)[0]
    u = np.round(p[front, 0] / z[front] * i.fx + i.cx).astype(int)
    v = np.round(p[front, 1] / z[front] * i.fy + i.cy).astype(int)
    inside = (u >= 0) & (v >= 0) & (u < i.width) & (v < i.height)
    obs = np.zeros(len(u), np.float32)
    obs[inside] = dst.depth_mm[v[inside], u[inside]] / 1000.0
    seen = obs > 0
    out[front[seen]] = z[front[seen]] - obs[seen]
    return out


def _consistency(points_src_m: np.ndarray, T_dst_src: np.ndarray, dst: MapKeyframe) -> tuple[float, np.ndarray]:
    """(overlap, d): the share of src points that land on dst's valid depth, and for those their depth
    minus dst's (negative: in front of dst's surface, where dst saw through)."""
    d = depth_difference(points_src_m, T_dst_src, dst)
    d = d[np.isfinite(d)]
    return float(len(d)) / max(1, len(points_src_m)), d


class LoopDetector:
    """Describes keyframes and proposes and verifies loops. Thread: the loop-closure worker only."""

    def __init__(self, config: LoopDetectConfig = LoopDetectConfig(), seed: int = 0):
        self.config = config
        self.features: dict[int, KeyframeFeatures] = {}   #: by keyframe id
        self._reloc = Relocaliser(config.features)
        self._clouds: OrderedDict[int, o3d.geometry.PointCloud] = OrderedDict()
        self._rng = np.random.default_rng(seed)
        self._ranked: dict[tuple, list] = {}   # (cur, old) -> the ORB matches `candidates` ranked them by

    def describe(self, kid: int, frame: Frame) -> None:
        """Compute and keep the features of keyframe `kid` from its full-resolution frame."""
        f = self._reloc.features(frame)
        pts, ok = self._reloc.keypoint_points(frame, np.eye(4), f.keypoints_px)
        self.features[kid] = KeyframeFeatures(pts[ok], f.descriptors[ok], f.thumb)

    def forget(self, kid: int) -> None:
        self.features.pop(kid, None)
        self._clouds.pop(kid, None)

    def candidates(self, cur: int, kids: np.ndarray, poses: np.ndarray, path_m: np.ndarray) -> list[int]:
        """Old keyframe ids worth verifying against keyframe `cur` (most similar first). kids, poses and
        path_m (distance walked up to each keyframe) describe every stored keyframe, cur the last."""
        cfg = self.config
        walked = path_m[-1] - path_m
        old = (np.arange(len(kids)) < len(kids) - cfg.min_age_keyframes) & (walked >= cfg.min_walk_m)
        reach = cfg.search_m + cfg.drift_base_m + cfg.drift_share * walked
        near = old & (np.linalg.norm(poses[:, :3, 3] - poses[-1, :3, 3], axis=1) <= reach)
        fc = self.features[cur]
        ids = [int(k) for k in kids[near] if int(k) in self.features]
        sims = [float(self.features[k].thumb @ fc.thumb) for k in ids]
        short = [ids[i] for i in np.argsort(sims)[::-1][:cfg.shortlist]]
        self._ranked = {(cur, k): self._reloc.match(fc.descriptors, self.features[k].descriptors) for k in short}
        votes = [len(self._ranked[cur, k]) for k in short]
        return [short[i] for i in np.argsort(votes, kind="stable")[::-1][:cfg.candidates] if votes[i] >= cfg.min_matches]

    def verify(self, old: MapKeyframe, cur: MapKeyframe, T_odom_old_cur: np.ndarray, walked_m: float) -> Verdict:
        """Check a loop between keyframes `old` and `cur`; T_odom_old_cur is their relative pose by odometry."""
        cfg = self.config
        fo, fc = self.features[old.kid], self.features[cur.kid]
        ranked = self._ranked.pop((cur.kid, old.kid), None)
        matches = ranked if ranked is not None else self._reloc.match(fc.descriptors, fo.descriptors)
        if len(matches) < cfg.min_matches:
            return Verdict(None, f"{len(matches)} matches")
        src = fc.points_cam_m[[m.queryIdx for m in matches]].astype(np.float64)
        dst = fo.points_cam_m[[m.trainIdx for m in matches]].astype(np.float64)
        T, inl = _ransac_rigid(src, dst, cfg.ransac_m, cfg.ransac_iterations, self._rng)
        n_inl = int(inl.sum())
        if n_inl < cfg.min_inliers or n_inl < cfg.min_inlier_share * len(matches):
            return Verdict(None, f"{n_inl} RANSAC inliers of {len(matches)}")
        reg, info = self._icp(old, cur, T)
        if reg.fitness < cfg.min_icp_fitness or reg.inlier_rmse > cfg.max_icp_rmse_m:
            return Verdict(None, f"ICP fitness {reg.fitness:.2f}, residual {reg.inlier_rmse * 1000:.1f} mm")
        T_icp = np.asarray(reg.transformation)
        shift_m, shift_deg = relative_motion(T, T_icp)
        if shift_m > cfg.max_icp_shift_m or shift_deg > cfg.max_icp_shift_deg:
            return Verdict(None, f"ICP moved the feature pose {shift_m * 100:.1f} cm / {shift_deg:.1f} deg")
        why = self._inconsistent(old, cur, T_icp)
        if why:
            return Verdict(None, why)
        drift_m, drift_deg = relative_motion(T_odom_old_cur, T_icp)
        if (drift_m > cfg.drift_base_m + cfg.drift_share * walked_m
                or drift_deg > cfg.drift_base_deg + cfg.drift_deg_per_m * walked_m):
            return Verdict(None, f"implausible drift {drift_m:.2f} m / {drift_deg:.1f} deg over {walked_m:.1f} m walked")
        return Verdict(LoopEdge(old.kid, cur.kid, T_icp, n_inl, float(reg.fitness), float(reg.inlier_rmse), info,
                                drift_m, drift_deg, old.index, cur.index))

    def cloud_of(self, kf: MapKeyframe) -> o3d.geometry.PointCloud:
        if kf.kid not in self._clouds:
            self._clouds[kf.kid] = _cloud(depth_points(kf, self.config.depth_max_m), self.config.icp_voxel_m)
            while len(self._clouds) > self.config.max_clouds:
                self._clouds.popitem(last=False)
        self._clouds.move_to_end(kf.kid)
        return self._clouds[kf.kid]

    def _icp(self, old: MapKeyframe, cur: MapKeyframe, T_init: np.ndarray):
        """Point-to-plane ICP of cur's depth onto old's from T_init, coarse to fine; and the information matrix."""
        reg = o3d.pipelines.registration
        src, dst = self.cloud_of(cur), self.cloud_of(old)
        moved = src.uniform_down_sample(max(1, self.config.icp_source_every))
        T, res = T_init, None
        for dist in self.config.icp_max_m:
            res = reg.registration_icp(moved, dst, dist, T, reg.TransformationEstimationPointToPlane(),
                                       reg.ICPConvergenceCriteria(max_iteration=30))
            T = res.transformation
        info = reg.get_information_matrix_from_point_clouds(src, dst, self.config.icp_max_m[-1], T)
        return res, np.asarray(info)

    def _inconsistent(self, old: MapKeyframe, cur: MapKeyframe, T_old_cur: np.ndarray) -> str:
        """Why the two depth images disagree seen from each other ("" when they agree)."""
        cfg = self.config
        pairs = ((depth_points(cur, cfg.depth_max_m), T_old_cur, old),
                 (depth_points(old, cfg.depth_max_m), np.linalg.inv(T_old_cur), cur))
        for pts, T, dst in pairs:
            overlap, d = _consistency(pts[::4], T, dst)
            if overlap < cfg.min_overlap:
                return f"overlap {overlap:.2f}"
            agree = float(np.mean(np.abs(d) < cfg.agree_m))
            through = float(np.mean(d < -cfg.through_m))
            if agree < cfg.min_agree or through > cfg.max_through:
                return f"depth disagrees: {agree:.2f} agree, {through:.2f} in front of the other's surface"
        return ""
