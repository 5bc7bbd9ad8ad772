"""Owns the loop closer's settings (`LoopClosureConfig`), its counters (`LoopStats`) and the pose graph's edges
(`graph_edges`; the information of odometry edges). Plain data and pure functions: any thread may use them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from loopclosure.detect import LoopDetectConfig
from loopclosure.map_align import MapAlignConfig
from loopclosure.pose_graph import GraphEdge, PoseGraphConfig


@dataclass(frozen=True)
class LoopClosureConfig:
    enabled: bool = False                #: look for loops and correct the map (off: nothing runs)
    keyframe_step_m: float = 0.15        #: an integrated frame this far from the last keyframe becomes one
    keyframe_step_deg: float = 10.0      #: ... or turned this much
    max_keyframes: int = 600             #: keyframes kept at most (memory: about 0.38 MB each at 640x480)
    min_correction_m: float = 0.015      #: a loop whose drift is smaller only joins the graph (no rebuild)
    min_correction_deg: float = 0.75     #: ... in rotation
    worker_threads: int = 1              #: kernel threads of the worker (the live loop keeps the others)
    worker_duty: float = 0.25            #: share of a core the worker computes at most while busy (it sleeps the rest;
    #:     its own thread's CPU time is counted, kernels it runs on other threads are not: worker_threads=1)
    odometry_info_per_m: float = 30.0    #: odometry edges' translation information (1/m^2) times the metres walked
    odometry_rot_info_per_m: float = 120.0  #: ... and rotation information (1/rad^2) times the metres walked:
    #:     odometry drifts with the distance walked, evenly, so a loop's error is spread along the path (the two
    #:     clouds' ICP information says how well they overlap instead: on room 1 it left 8 cm where this leaves 1.7)
    min_odometry_step_m: float = 0.02    #: a shorter keyframe step (a turn on the spot) counts as this long
    max_queued_frames: int = 30          #: keyframes queued with their full frame at most (beyond, the worker
    #:     describes the reduced images: memory stays bounded while it rebuilds)
    max_backlog: int = 20                #: keyframes queued beyond this are described now and searched for loops once
    #:     the worker has caught up (newest first)
    handover_keyframes: int = 4          #: a rebuilt map is handed over with at most this many keyframes taken
    #:     meanwhile left for the fusion thread to add (more when the worker cannot catch up with the scan)
    max_deferred: int = 8                #: an accepted loop's correction waits for at most this many queued keyframes
    #:     to be searched first (their loops join the same optimisation and rebuild: fewer, better corrections)
    worker_nice: int = 10                #: the worker thread runs this much nicer than fusion (where the OS allows)
    detect: LoopDetectConfig = field(default_factory=LoopDetectConfig)
    map_align: MapAlignConfig = field(default_factory=MapAlignConfig)  #: keyframes without a loop, once a correction
    #:     has landed: aligned to the corrected map of old keyframes (`loopclosure.map_align`)
    graph: PoseGraphConfig = field(default_factory=PoseGraphConfig)


def odometry_information(T_prev_cur: np.ndarray, config: LoopClosureConfig) -> np.ndarray:
    """(6,6) information of an odometry edge (Open3D's order: rotation, then translation), inversely
    proportional to the distance walked along it."""
    step_m = max(float(np.linalg.norm(np.asarray(T_prev_cur)[:3, 3])), config.min_odometry_step_m)
    return np.diag([config.odometry_rot_info_per_m] * 3 + [config.odometry_info_per_m] * 3) / step_m


def graph_edges(kfs: list, odom: list, loops: list, config: LoopClosureConfig) -> list[GraphEdge]:
    """The pose graph of keyframes `kfs` (with `odom`, each one's odometry from the previous one): odometry edges
    between neighbours and the `loops` (loop and map edges, `LoopEdge`) whose two keyframes are both held."""
    pos = {k.kid: i for i, k in enumerate(kfs)}
    edges = [GraphEdge(i - 1, i, np.linalg.inv(odom[i]), odometry_information(odom[i], config), loop=False)
             for i in range(1, len(kfs))]   # keyframe i-1's camera into keyframe i's
    return edges + [GraphEdge(pos[e.cur], pos[e.old], e.T_old_cur, e.information, loop=True, origin=e)
                    for e in loops if e.old in pos and e.cur in pos]


@dataclass
class LoopStats:
    keyframes: int = 0
    candidates: int = 0       #: loop candidates verified
    accepted: int = 0
    rejected: int = 0
    corrections: int = 0      #: corrected maps applied
    discarded: int = 0        #: optimisations discarded (not converged or implausible)
    dropped: int = 0          #: new loop or map edges left out because the others converged without them
    pruned: int = 0           #: optimisations whose line process dropped the new loop (map kept)
    map_aligned: int = 0      #: keyframes aligned to the corrected map (edges like loops)
    map_rejected: int = 0     #: ... tried and not aligned
    searched_late: int = 0    #: keyframes searched for loops only once the worker had caught up
    last_reason: str = ""     #: why the latest candidate was rejected

    def to_dict(self) -> dict:
        return dict(vars(self))
