"""Owns the loop closer's state as flat arrays (for sessions): its keyframes (reduced RGB-D, poses, the
odometry between them, the path walked) and the loop edges of its graph, and reading them back.

Each keyframe's images are arrays of their own (`color/KID`, `depth_mm/KID`): the keyframes' own immutable
arrays, not copies, so capturing a session costs the fusion thread nothing for them, and keyframes of
any size (a scan continued with another camera) save alike. Pure functions: any thread.
"""
from __future__ import annotations

from dataclasses import astuple

import numpy as np

from fusion.frame import Intrinsics
from loopclosure.detect import LoopEdge, MapKeyframe

_EDGE_STATS = ("inliers", "fitness", "rmse_m", "drift_m", "drift_deg", "old_frame", "cur_frame")


def to_arrays(kfs: list, poses: list, odom: list, path_m: list, edges: list) -> dict[str, np.ndarray]:
    """Keyframes (MapKeyframe, with their poses, odometry from the previous one, path walked) and loop edges."""
    n = len(kfs)
    images = {f"{name}/{k.kid}": getattr(k, name) for k in kfs for name in ("color", "depth_mm")}
    return images | {
        "kid": np.array([k.kid for k in kfs], np.int64), "index": np.array([k.index for k in kfs], np.int64),
        "timestamp_s": np.array([k.timestamp_s for k in kfs], np.float64),
        "intrinsics": np.array([astuple(k.intrinsics) for k in kfs], np.float64).reshape(n, 6),
        "poses": np.array(poses, np.float64).reshape(n, 4, 4), "odom": np.array(odom, np.float64).reshape(n, 4, 4),
        "path_m": np.array(path_m, np.float64).reshape(n),
        "edge_kids": np.array([(e.old, e.cur) for e in edges], np.int64).reshape(-1, 2),
        "edge_T": np.array([e.T_old_cur for e in edges], np.float64).reshape(-1, 4, 4),
        "edge_information": np.array([e.information for e in edges], np.float64).reshape(-1, 6, 6),
        "edge_stats": np.array([[getattr(e, f) for f in _EDGE_STATS] for e in edges], np.float64).reshape(-1, 7),
    }


def keyframes_from_arrays(a: dict) -> list[MapKeyframe]:
    """The keyframes `to_arrays` wrote; KeyError or ValueError when the arrays do not fit together."""
    out = []
    for i, kid in enumerate(np.asarray(a["kid"], np.int64).tolist()):
        color, depth = np.asarray(a[f"color/{kid}"], np.uint8), np.asarray(a[f"depth_mm/{kid}"], np.uint16)
        if color.shape != depth.shape + (3,):
            raise ValueError(f"loop keyframe {kid}: colour {color.shape} and depth {depth.shape} differ")
        fx, fy, cx, cy, width, height = a["intrinsics"][i]
        out.append(MapKeyframe(kid, int(a["index"][i]), float(a["timestamp_s"][i]), color, depth,
                               Intrinsics(fx, fy, cx, cy, int(width), int(height))))
    return out


def edges_from_arrays(a: dict) -> list[LoopEdge]:
    edges = []
    for (old, cur), T, info, stats in zip(a["edge_kids"], a["edge_T"], a["edge_information"], a["edge_stats"]):
        s = dict(zip(_EDGE_STATS, stats.tolist()))
        edges.append(LoopEdge(int(old), int(cur), np.array(T), int(s["inliers"]), s["fitness"], s["rmse_m"],
                              np.array(info), s["drift_m"], s["drift_deg"], int(s["old_frame"]), int(s["cur_frame"])))
    return edges
