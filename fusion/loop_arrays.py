"""Owns the loop closer's state as flat arrays (for sessions): its keyframes (reduced RGB-D, poses, the
odometry between them, the path walked) and the loop edges of its graph, and reading them back.

Images of any size travel as one flat buffer each (colour, depth) with a (N,2) table of shapes, so a scan
continued with another camera still saves. Pure functions: any thread (the caller copies under its lock).
"""
from __future__ import annotations

from dataclasses import astuple

import numpy as np

from fusion.frame import Intrinsics
from fusion.loops import LoopEdge, MapKeyframe

_EDGE_STATS = ("inliers", "fitness", "rmse_m", "drift_m", "drift_deg", "old_frame", "cur_frame")


def to_arrays(kfs: list, poses: list, odom: list, path_m: list, edges: list) -> dict[str, np.ndarray]:
    """Keyframes (MapKeyframe, with their poses, odometry from the previous one, path walked) and loop edges."""
    n = len(kfs)
    return {
        "kid": np.array([k.kid for k in kfs], np.int64), "index": np.array([k.index for k in kfs], np.int64),
        "timestamp_s": np.array([k.timestamp_s for k in kfs], np.float64),
        "intrinsics": np.array([astuple(k.intrinsics) for k in kfs], np.float64).reshape(n, 6),
        "shapes": np.array([k.depth_mm.shape for k in kfs], np.int64).reshape(n, 2),
        "color": np.concatenate([k.color.ravel() for k in kfs]) if n else np.zeros(0, np.uint8),
        "depth_mm": np.concatenate([k.depth_mm.ravel() for k in kfs]) if n else np.zeros(0, np.uint16),
        "poses": np.array(poses, np.float64).reshape(n, 4, 4), "odom": np.array(odom, np.float64).reshape(n, 4, 4),
        "path_m": np.array(path_m, np.float64).reshape(n),
        "edge_kids": np.array([(e.old, e.cur) for e in edges], np.int64).reshape(-1, 2),
        "edge_T": np.array([e.T_old_cur for e in edges], np.float64).reshape(-1, 4, 4),
        "edge_information": np.array([e.information for e in edges], np.float64).reshape(-1, 6, 6),
        "edge_stats": np.array([[getattr(e, f) for f in _EDGE_STATS] for e in edges], np.float64).reshape(-1, 7),
    }


def keyframes_from_arrays(a: dict) -> list[MapKeyframe]:
    """The keyframes `to_arrays` wrote; ValueError when the arrays do not fit together."""
    shapes = np.asarray(a["shapes"], np.int64).reshape(-1, 2)
    sizes = shapes.prod(1)
    ends = np.cumsum(sizes)
    if len(a["color"]) != 3 * int(sizes.sum()) or len(a["depth_mm"]) != int(sizes.sum()):
        raise ValueError("loop keyframe images do not match their shapes")
    out = []
    for i, ((h, w), end, size) in enumerate(zip(shapes.tolist(), ends, sizes)):
        color = np.asarray(a["color"][3 * (end - size):3 * end], np.uint8).reshape(h, w, 3)
        depth = np.asarray(a["depth_mm"][end - size:end], np.uint16).reshape(h, w)
        fx, fy, cx, cy, width, height = a["intrinsics"][i]
        out.append(MapKeyframe(int(a["kid"][i]), int(a["index"][i]), float(a["timestamp_s"][i]), color, depth,
                               Intrinsics(fx, fy, cx, cy, int(width), int(height))))
    return out


def edges_from_arrays(a: dict) -> list[LoopEdge]:
    edges = []
    for (old, cur), T, info, stats in zip(a["edge_kids"], a["edge_T"], a["edge_information"], a["edge_stats"]):
        s = dict(zip(_EDGE_STATS, stats.tolist()))
        edges.append(LoopEdge(int(old), int(cur), np.array(T), int(s["inliers"]), s["fitness"], s["rmse_m"],
                              np.array(info), s["drift_m"], s["drift_deg"], int(s["old_frame"]), int(s["cur_frame"])))
    return edges
