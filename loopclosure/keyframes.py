"""Owns the loop closer's keyframe store: the keyframes (reduced RGB-D: `reduced_keyframe`) with their current
poses, the odometry between them, the path walked and the depth each saw, grown by one keyframe at a time,
thinned beyond a cap, saved to and restored from flat arrays (`loopclosure.arrays`).
Not thread-safe by itself: the loop closer guards it with its lock (the fusion thread writes, the worker
reads copies)."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fusion.frame import Frame
from fusion.tracking import downsample_depth
from loopclosure import arrays as loop_arrays
from loopclosure.detect import MapKeyframe


def reduced_keyframe(kid: int, frame: Frame) -> MapKeyframe:
    """Keyframe `kid` of a frame as the loop closer stores it: colour and depth at half size."""
    depth = downsample_depth(np.ascontiguousarray(frame.depth_m, np.float32))
    h, w = depth.shape
    color = cv2.resize(np.ascontiguousarray(frame.color), (w, h), interpolation=cv2.INTER_AREA)
    return MapKeyframe(kid, frame.index, frame.timestamp_s, color, np.round(depth * 1000).astype(np.uint16),
                       frame.intrinsics.scaled(0.5))


def view_depth_m(kf: MapKeyframe, default_m: float = 2.0) -> float:
    """Median depth of a keyframe's valid pixels (metres): how far in front of it the map it saw lies."""
    d = kf.depth_mm[kf.depth_mm > 0]
    return float(np.median(d)) / 1000.0 if len(d) else default_m


def path_to_held_m(path_m: np.ndarray, held: np.ndarray, k: int) -> float:
    """The path walked between keyframe k (an index) and the nearest keyframe whose pose a loop edge holds
    (`held`, a mask over the keyframes; the first keyframe is always held): odometry drifts over that path."""
    path_m = np.asarray(path_m, float)
    return float(np.min(np.abs(path_m[np.union1d([0], np.flatnonzero(held))] - path_m[k])))


def unpinned_walk_m(path_m: np.ndarray, held: np.ndarray, i: int, j: int) -> float:
    """The path over which keyframes i and j (indices) may have drifted apart: the path walked between them or,
    when shorter, each one's path to the nearest held keyframe (`path_to_held_m`: once a correction has landed,
    `held` marks the ends of corrected loops). A loop with more drift than that path allows is not drift: it is a
    wrong edge the optimisation would spread along the path, within every residual bound."""
    between = abs(float(np.asarray(path_m, float)[j] - path_m[i]))
    return min(between, path_to_held_m(path_m, held, i) + path_to_held_m(path_m, held, j))


@dataclass
class KeyframeStore:
    """Keyframes and their current poses, in the order they were taken."""

    kfs: list = field(default_factory=list)      # MapKeyframe
    poses: list = field(default_factory=list)    # current T_world_cam
    odom: list = field(default_factory=list)     # T_prev_cur measured when added (identity first)
    path_m: list = field(default_factory=list)   # distance walked up to each keyframe
    view_m: list = field(default_factory=list)   # median depth each keyframe saw (its view centre's distance)

    def add(self, kf: MapKeyframe, T_world_cam: np.ndarray) -> None:
        odom = np.linalg.inv(self.poses[-1]) @ T_world_cam if self.poses else np.eye(4)
        self.path_m.append((self.path_m[-1] if self.path_m else 0.0) + float(np.linalg.norm(odom[:3, 3])))
        self.view_m.append(view_depth_m(kf))
        self.kfs.append(kf)
        self.poses.append(np.array(T_world_cam, float))
        self.odom.append(odom)

    def thin(self, max_keyframes: int, keep_kids: set) -> None:
        """Beyond `max_keyframes` drop every other keyframe of the older half (not those of `keep_kids`:
        loop ends); odometry composes."""
        if len(self.kfs) <= max_keyframes:
            return
        half = len(self.kfs) // 2
        drop = {i for i in range(1, half, 2) if self.kfs[i].kid not in keep_kids}
        for i in sorted(drop, reverse=True):
            self.odom[i + 1] = self.odom[i] @ self.odom[i + 1]
            for lst in (self.kfs, self.poses, self.odom, self.path_m, self.view_m):
                del lst[i]

    def correct(self, new_by_kid: dict, C_last: np.ndarray) -> list[np.ndarray]:
        """Move each keyframe to its pose in `new_by_kid` (by kid), those without one (taken since) by C_last;
        returns each keyframe's correction (T_new @ inv(T_old)), in order."""
        corr = []
        for i, kf in enumerate(self.kfs):
            C = new_by_kid[kf.kid] @ np.linalg.inv(self.poses[i]) if kf.kid in new_by_kid else C_last
            self.poses[i] = C @ self.poses[i]
            corr.append(C)
        return corr

    def view_centres_m(self) -> np.ndarray:
        """(N,3) each keyframe's view centre: its camera moved along the optical axis by the depth it saw."""
        T = np.array(self.poses).reshape(-1, 4, 4)
        return T[:, :3, 3] + np.array(self.view_m).reshape(-1, 1) * T[:, :3, 2]

    def to_arrays(self, edges: list) -> dict[str, np.ndarray]:
        return loop_arrays.to_arrays(self.kfs, self.poses, self.odom, self.path_m, edges)

    @classmethod
    def from_arrays(cls, arrays: dict) -> "KeyframeStore":
        kfs = loop_arrays.keyframes_from_arrays(arrays)
        n = len(kfs)
        return cls(kfs, list(np.asarray(arrays["poses"], float).reshape(n, 4, 4)),
                   list(np.asarray(arrays["odom"], float).reshape(n, 4, 4)),
                   [float(d) for d in np.asarray(arrays["path_m"]).reshape(n)], [view_depth_m(kf) for kf in kfs])
