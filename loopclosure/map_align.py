"""Owns dense map alignment: a keyframe registered to the corrected map itself, not to one old keyframe.

Once a correction has landed, the old keyframes hold corrected poses, and a newer keyframe's pose is its
odometry chained from them: off the map by the drift since its last loop. A keyframe that sees old ground,
even partly, is registered by point-to-plane ICP of its depth cloud against the union of the depth clouds
of the old keyframes (far enough back along the path) that see the same surface from its predicted pose.
There is no place recognition: ICP starts from the prediction, so a look-alike elsewhere is never tried.
The alignment is accepted only when
- enough of the keyframe's points land on the map keyframes' depth, most of those agree with it, and the
  ICP inlier residual is small (fitness over the overlapping part, not over the whole view: the rest may be
  new ground);
- its points do not lie in front of surfaces the map keyframes saw (free space): a look-alike object in
  front of another background fails here;
- the matched surfaces pin every direction (their normals span space: one wall lets ICP slide along it);
- the correction it implies is within what odometry drifts over the path walked since the keyframe's last
  loop edge.
The result is a loop-like edge to the map keyframe that confirms most of its points at the aligned pose (not
the one that shared most surface at the predicted pose: where the map is still off by a few centimetres between
old keyframes, which depth alone cannot show on a floor and a wall, an edge to a keyframe the aligned view
barely agrees with carries that error into the next optimisation).
Thread: the loop-closure worker only (it shares the detector's cloud cache).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from fusion.tracking import relative_motion
from loopclosure.detect import LoopEdge, MapKeyframe, Verdict, depth_difference, depth_points
from loopclosure.keyframes import path_to_held_m

_REG = o3d.pipelines.registration


@dataclass(frozen=True)
class MapAlignConfig:
    enabled: bool = True               #: align keyframes without a verified loop to the corrected map
    reach_m: float = 3.0               #: map keyframes' cameras lie this close to the predicted camera ...
    min_view_share: float = 0.05       #: ... and this share of the keyframe's points lands on their depth within
    #:     icp_max_m[0] of it (from the predicted pose)
    max_keyframes: int = 6             #: the map: this many old keyframes at most (most shared surface first)
    sample_step: int = 7               #: every n-th depth point is checked against the map keyframes' depth
    icp_max_m: tuple = (0.05, 0.025)   #: ICP correspondence distance per stage
    icp_source_every: int = 4          #: ICP moves every n-th point of the keyframe's cloud (onto the whole map's)
    min_overlap: float = 0.12          #: least share of the keyframe's points on the map keyframes' depth (final pose)
    min_agree: float = 0.75            #: least share of those within agree_m of the depth seen there
    agree_m: float = 0.02
    max_through: float = 0.03          #: most share of them in front of a map keyframe's surface by more than through_m
    through_m: float = 0.05
    max_rmse_m: float = 0.015          #: largest ICP inlier RMSE
    min_normal_spread: float = 0.01    #: least eigenvalue of the matched normals' scatter (one plane: 0; even: 1/3)
    base_m: float = 0.03               #: correction allowed at most: this ...
    share: float = 0.05                #: ... plus this share of the path walked since the keyframe's last loop edge
    base_deg: float = 1.0              #: rotation correction allowed: this ...
    deg_per_m: float = 2.5             #: ... plus this many degrees per metre walked
    retry_keyframes: int = 48          #: keyframes not aligned yet are tried again after each correction (newest at most)


class AlignQueue:
    """Keyframes without a loop waiting to be aligned to the map: once a correction has landed, each gets one try
    per correction (one that failed in a world about to be corrected may succeed in the corrected one); the
    newest `size` at most. Thread: the loop-closure worker only."""

    def __init__(self, size: int):
        self._size, self._tried = size, {}      # kid -> corrections landed when it was last tried (-1: never)

    def add(self, kid: int) -> None:
        self._tried[kid] = -1
        for old in sorted(self._tried)[:max(0, len(self._tried) - self._size)]:
            del self._tried[old]

    def due(self, corrections: int) -> list[int]:
        """Keyframe ids to try now (oldest first), `corrections` having landed."""
        return sorted(k for k, tried in self._tried.items() if tried < corrections) if corrections else []

    def tried(self, kid: int, corrections: int) -> None:
        if kid in self._tried:
            self._tried[kid] = corrections

    def drop(self, kid: int) -> None:
        self._tried.pop(kid, None)


@dataclass(frozen=True)
class MapCheck:
    """How a keyframe's points meet the map keyframes' depth at one pose (shares of its sampled points)."""

    overlap: float     #: land on some map keyframe's valid depth
    agree: float       #: of those: within agree_m of it in some map keyframe
    through: float     #: of those: in front of some map keyframe's surface by more than through_m
    support: tuple = ()   #: per map keyframe: share of the sampled points within agree_m of its depth


class MapAligner:
    """Registers a keyframe to the map of old keyframes. Thread: the loop-closure worker only."""

    def __init__(self, config: MapAlignConfig, cloud_of, depth_max_m: float):
        self.config, self._cloud_of, self._depth_max_m = config, cloud_of, depth_max_m

    def align_keyframe(self, kid: int, kfs: list, poses: np.ndarray, path_m: np.ndarray, edge_ends: set,
                       min_walk_m: float) -> Verdict | None:
        """Align keyframe `kid` of `kfs` (at `poses`, `path_m` walked up to each) to the map of those at least
        `min_walk_m` of path before it; `edge_ends`: keyframe ids whose pose a loop edge holds (the drift allowed
        counts the path walked since the last of them before it). None: it never can be (gone, or too early)."""
        j = next((i + 1 for i, k in enumerate(kfs) if k.kid == kid), 0)
        if j == 0 or path_m[j - 1] < min_walk_m:
            return None
        old = np.nonzero(path_m[j - 1] - path_m[:j] >= min_walk_m)[0]
        held = np.array([i < j - 1 and k.kid in edge_ends for i, k in enumerate(kfs)], bool)
        walked_m = path_to_held_m(path_m, held, j - 1)
        return self.align(kfs[j - 1], poses[j - 1], [kfs[i] for i in old], poses[old], walked_m)

    def map_keyframes(self, cur: MapKeyframe, T_pred: np.ndarray, olds: list, old_poses: np.ndarray) -> list[int]:
        """Indices into `olds` of the map keyframes for `cur` at its predicted pose (most shared surface first)."""
        cfg = self.config
        near = np.linalg.norm(old_poses[:, :3, 3] - T_pred[:3, 3], axis=1) <= cfg.reach_m
        pts = self._samples(cur)
        shares = {}
        for i in np.nonzero(near)[0]:
            d = depth_difference(pts, np.linalg.inv(old_poses[i]) @ T_pred, olds[i])
            shares[int(i)] = float(np.mean(np.abs(d) < cfg.icp_max_m[0])) if len(d) else 0.0
        ranked = sorted((i for i, s in shares.items() if s >= cfg.min_view_share), key=lambda i: -shares[i])
        return ranked[:cfg.max_keyframes]

    def align(self, cur: MapKeyframe, T_pred: np.ndarray, olds: list, old_poses: np.ndarray, walked_m: float) -> Verdict:
        """Register `cur` (predicted at T_pred) to the map of `olds` at `old_poses`; walked_m: path since its last
        loop edge. The edge joins cur to the map keyframe that confirms most of its points at the aligned pose."""
        cfg = self.config
        chosen = self.map_keyframes(cur, T_pred, olds, old_poses)
        if not chosen:
            return Verdict(None, "no map keyframe sees its surface")
        T_a = old_poses[chosen[0]]
        init = np.linalg.inv(T_a) @ T_pred
        union = self._union([olds[i] for i in chosen], np.linalg.inv(T_a) @ old_poses[chosen], cur, init)
        if not union.has_points():
            return Verdict(None, "map: no map surface in its view")
        src, T, res = self._cloud_of(cur).uniform_down_sample(cfg.icp_source_every), init, None
        for dist in cfg.icp_max_m:
            res = _REG.registration_icp(src, union, dist, T, _REG.TransformationEstimationPointToPlane(),
                                        _REG.ICPConvergenceCriteria(max_iteration=30))
            T = np.asarray(res.transformation)
        why = self._rejected(res, union, init, T, walked_m)
        check = self.check(cur, T_a @ T, [olds[i] for i in chosen], old_poses[chosen])
        why = why or self._disagrees(check)
        if why:
            return Verdict(None, f"map: {why}")
        drift_m, drift_deg = relative_motion(init, T)
        b = chosen[int(np.argmax(check.support))]   # the anchor: the map keyframe confirming most of its points
        T_ba = np.linalg.inv(old_poses[b]) @ T_a
        info = information_in(np.asarray(_REG.get_information_matrix_from_point_clouds(src, union, cfg.icp_max_m[-1], T)),
                              T_ba)
        return Verdict(LoopEdge(olds[b].kid, cur.kid, T_ba @ T, len(res.correspondence_set), check.overlap,
                                float(res.inlier_rmse), info, drift_m, drift_deg, olds[b].index, cur.index))

    def check(self, cur: MapKeyframe, T_world_cur: np.ndarray, maps: list, map_poses: np.ndarray) -> MapCheck:
        """How cur's sampled points at T_world_cur meet the depth of the map keyframes at their poses."""
        cfg = self.config
        pts = self._samples(cur)
        d = np.stack([depth_difference(pts, np.linalg.inv(T) @ T_world_cur, kf) for kf, T in zip(maps, map_poses)])
        seen = np.isfinite(d)
        covered = seen.any(0)
        n = max(1, int(covered.sum()))
        with np.errstate(invalid="ignore"):
            agree_each = np.abs(d) < cfg.agree_m
            through = (d < -cfg.through_m).any(0)
        agree = agree_each.any(0)
        support = tuple(float(s) for s in agree_each.mean(1)) if len(pts) else (0.0,) * len(maps)
        return MapCheck(float(covered.mean()) if len(pts) else 0.0, float(agree.sum()) / n, float(through.sum()) / n,
                        support)

    def _samples(self, kf: MapKeyframe) -> np.ndarray:
        return depth_points(kf, self._depth_max_m)[::self.config.sample_step]

    def _union(self, kfs: list, T_a_k: np.ndarray, cur: MapKeyframe, T_a_cur: np.ndarray) -> o3d.geometry.PointCloud:
        """The map keyframes' depth clouds (with normals) in the first one's camera frame, as one cloud, cropped to
        what `cur` may see from T_a_cur (its image and depth range, widened by the first ICP distance)."""
        union = o3d.geometry.PointCloud()
        for kf, T in zip(kfs, T_a_k):
            union += o3d.geometry.PointCloud(self._cloud_of(kf)).transform(T)
        T_cur_a = np.linalg.inv(T_a_cur)
        p = np.asarray(union.points) @ T_cur_a[:3, :3].T + T_cur_a[:3, 3]
        i, margin = cur.intrinsics, self.config.icp_max_m[0]
        z = np.maximum(p[:, 2], 1e-6)
        u, v = p[:, 0] / z * i.fx + i.cx, p[:, 1] / z * i.fy + i.cy
        pad = margin / z * i.fx
        keep = ((p[:, 2] > 0.05) & (p[:, 2] < self._depth_max_m + margin) & (u > -pad) & (v > -pad)
                & (u < i.width + pad) & (v < i.height + pad))
        return union.select_by_index(np.nonzero(keep)[0])

    def _rejected(self, res, union, init: np.ndarray, T: np.ndarray, walked_m: float) -> str:
        """Why the ICP result is not a measurement of the keyframe's pose ("" when it is)."""
        cfg = self.config
        if len(res.correspondence_set) == 0 or res.inlier_rmse > cfg.max_rmse_m:
            return f"ICP residual {res.inlier_rmse * 1000:.1f} mm over {len(res.correspondence_set)} points"
        normals = np.asarray(union.normals)[np.asarray(res.correspondence_set)[:, 1]]
        spread = float(np.linalg.eigvalsh(normals.T @ normals / len(normals))[0])
        if spread < cfg.min_normal_spread:
            return f"the shared surface does not pin the pose (normal spread {spread:.3f})"
        m, deg = relative_motion(init, T)
        if m > cfg.base_m + cfg.share * walked_m or deg > cfg.base_deg + cfg.deg_per_m * walked_m:
            return f"implausible correction {m * 100:.1f} cm / {deg:.1f} deg over {walked_m:.1f} m walked"
        return ""

    def _disagrees(self, check: MapCheck) -> str:
        cfg = self.config
        if check.overlap < cfg.min_overlap:
            return f"overlap {check.overlap:.2f}"
        if check.agree < cfg.min_agree or check.through > cfg.max_through:
            return f"depth disagrees: {check.agree:.2f} agree, {check.through:.2f} in front of the map's surface"
        return ""


def information_in(info_a: np.ndarray, T_ba: np.ndarray) -> np.ndarray:
    """A relative pose's (6,6) information from target points in frame a (Open3D's order: rotation, then
    translation) restated for the same points in frame b (T_ba: a's frame into b's), as Open3D would compute it
    from the target cloud moved into b: Ad(T_ab)^T info Ad(T_ab). Saves moving a copy of the cloud."""
    T_ab = np.linalg.inv(T_ba)
    R, p = T_ab[:3, :3], T_ab[:3, 3]
    p_hat = np.array([[0.0, -p[2], p[1]], [p[2], 0.0, -p[0]], [-p[1], p[0], 0.0]])
    ad = np.zeros((6, 6))
    ad[:3, :3] = ad[3:, 3:] = R
    ad[3:, :3] = p_hat @ R
    return ad.T @ np.asarray(info_a, np.float64) @ ad
