"""Owns the keyframe pose graph: odometry and loop edges, optimised by Open3D, and the checks on the result.

Nodes are keyframe poses (T_world_cam); an edge (source, target) holds T_target_source = inv(T_target) @
T_source as measured (odometry: by tracking; loop: by `loopclosure.detect` verification). Open3D's
`global_optimization` (Levenberg-Marquardt, line process on the loop edges, which are "uncertain")
solves it, with the first node fixed. A result is used only when it is plausible: every pose finite,
no keyframe moved more than `max_shift_m` / `max_shift_deg`, every odometry edge and every kept loop
edge satisfied within its residual bound; otherwise it is discarded with the reason (the caller warns).
`optimise_dropping` tries again without one of the newly added loop edges at a time (the worst fitted first):
one wrong edge must not cost the right ones it was optimised with.
Pure functions of their inputs; any thread may call them (the loop-closure worker does).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import open3d as o3d

from fusion.tracking import relative_motion

log = logging.getLogger(__name__)
_REG = o3d.pipelines.registration


@dataclass(frozen=True)
class PoseGraphConfig:
    max_correspondence_m: float = 0.25    #: Open3D's correspondence distance: scales the line process
    #:     (smaller prunes loops with more drift)
    edge_prune_threshold: float = 0.25    #: loop edges whose line-process weight falls below are pruned
    preference_loop_closure: float = 2.0  #: weight of loop edges against odometry
    max_iterations: int = 100             #: Levenberg-Marquardt iterations at most (per pass)
    passes: int = 2                       #: passes, each from the last one's poses (the line process trusts a loop
    #:     more once its residual has shrunk: a loop with much drift is only half closed by one pass)
    max_shift_m: float = 1.0              #: a keyframe moved farther than this is implausible
    max_shift_deg: float = 20.0           #: ... or turned more than this
    max_odometry_residual_m: float = 0.05  #: every odometry edge must hold this well afterwards ...
    max_odometry_residual_deg: float = 3.0
    max_loop_residual_m: float = 0.05      #: ... and every loop edge that was kept
    max_loop_residual_deg: float = 3.0
    drop_tries: int = 3                    #: a failed optimisation is tried again without one new loop edge at a
    #:     time, the worst fitted first, this many times at most


@dataclass(frozen=True)
class GraphEdge:
    """One measured relative pose between nodes (indices into the pose array)."""

    source: int
    target: int
    T_target_source: np.ndarray
    information: np.ndarray        #: (6,6)
    loop: bool                     #: a loop edge (may be pruned) rather than odometry
    origin: object = None          #: what the edge was made from (the caller's loop edge), for the caller


@dataclass(frozen=True)
class GraphResult:
    poses: np.ndarray | None       #: (N,4,4) optimised T_world_cam, None when discarded
    reason: str = ""               #: why it was discarded
    loops_kept: int = 0            #: loop edges the line process kept
    loops_pruned: int = 0
    max_shift_m: float = 0.0       #: largest keyframe move
    max_shift_deg: float = 0.0
    worst_first: tuple = ()        #: indices into the edges of the loop edges, the worst fitted by the optimised
    #:     poses first (residual over its bound)


def _residual(poses: np.ndarray, e: GraphEdge) -> tuple[float, float]:
    """How far the poses are from edge e's measurement (m, deg)."""
    return relative_motion(np.linalg.inv(poses[e.target]) @ poses[e.source], e.T_target_source)


def _build(poses: np.ndarray, edges: list[GraphEdge]) -> _REG.PoseGraph:
    g = _REG.PoseGraph()
    for T in poses:
        g.nodes.append(_REG.PoseGraphNode(np.asarray(T, np.float64)))
    for e in edges:
        g.edges.append(_REG.PoseGraphEdge(e.source, e.target, np.asarray(e.T_target_source, np.float64),
                                          np.asarray(e.information, np.float64), uncertain=e.loop))
    return g


def optimise(poses: np.ndarray, edges: list[GraphEdge], config: PoseGraphConfig = PoseGraphConfig()) -> GraphResult:
    """Optimise the graph from `poses`; the result's poses are None (with a reason) when implausible."""
    option = _REG.GlobalOptimizationOption(max_correspondence_distance=config.max_correspondence_m,
                                           edge_prune_threshold=config.edge_prune_threshold,
                                           preference_loop_closure=config.preference_loop_closure,
                                           reference_node=0)
    criteria = _REG.GlobalOptimizationConvergenceCriteria()
    criteria.max_iteration = config.max_iterations
    out, kept = np.asarray(poses, float), {(e.source, e.target) for e in edges if e.loop}
    for _ in range(max(1, config.passes)):
        g = _build(out, [e for e in edges if not e.loop or (e.source, e.target) in kept])
        _REG.global_optimization(g, _REG.GlobalOptimizationLevenbergMarquardt(), criteria, option)
        out = np.array([np.asarray(n.pose) for n in g.nodes])
        kept = {(e.source_node_id, e.target_node_id) for e in g.edges if e.uncertain}
    loops = [e for e in edges if e.loop]
    kept_loops = [e for e in loops if (e.source, e.target) in kept]
    shifts = [relative_motion(a, b) for a, b in zip(poses, out)] if np.all(np.isfinite(out)) else [(np.inf, np.inf)]
    shift_m, shift_deg = max(s[0] for s in shifts), max(s[1] for s in shifts)
    base = dict(loops_kept=len(kept_loops), loops_pruned=len(loops) - len(kept_loops),
                max_shift_m=float(shift_m), max_shift_deg=float(shift_deg), worst_first=_worst_first(out, edges, config))
    reason = _implausible(out, edges, kept_loops, shift_m, shift_deg, config)
    return GraphResult(None if reason else out, reason, **base)


def optimise_dropping(poses: np.ndarray, edges: list[GraphEdge], droppable: set[int],
                      config: PoseGraphConfig = PoseGraphConfig()) -> tuple[GraphResult, int | None]:
    """`optimise`; when its result is discarded, again without one of the `droppable` loop edges (indices into
    `edges`) at a time, the worst fitted first, `config.drop_tries` times at most. Returns the first result kept
    (or the first one, discarded) and the index of the edge left out (None: all were used)."""
    first = optimise(poses, edges, config)
    if first.poses is not None:
        return first, None
    for i in [i for i in first.worst_first if i in droppable][:config.drop_tries]:
        res = optimise(poses, edges[:i] + edges[i + 1:], config)
        if res.poses is not None:
            return res, i
    return first, None


def _worst_first(out: np.ndarray, edges: list[GraphEdge], cfg: PoseGraphConfig) -> tuple:
    if not np.all(np.isfinite(out)):
        return tuple(i for i, e in enumerate(edges) if e.loop)
    bad = {i: max(m / cfg.max_loop_residual_m, deg / cfg.max_loop_residual_deg)
           for i, e in enumerate(edges) if e.loop for m, deg in [_residual(out, e)]}
    return tuple(sorted(bad, key=lambda i: -bad[i]))


def _implausible(out, edges, kept_loops, shift_m, shift_deg, cfg: PoseGraphConfig) -> str:
    if not np.all(np.isfinite(out)):
        return "the optimisation diverged (non-finite poses)"
    if shift_m > cfg.max_shift_m or shift_deg > cfg.max_shift_deg:
        return f"it moved a keyframe {shift_m:.2f} m / {shift_deg:.1f} deg"
    odo = [_residual(out, e) for e in edges if not e.loop]
    if odo and (max(r[0] for r in odo) > cfg.max_odometry_residual_m
                or max(r[1] for r in odo) > cfg.max_odometry_residual_deg):
        worst = max(odo)
        return f"odometry edges left unsatisfied by {worst[0] * 100:.1f} cm / {worst[1]:.1f} deg (not converged)"
    for e in kept_loops:
        m, deg = _residual(out, e)
        if m > cfg.max_loop_residual_m or deg > cfg.max_loop_residual_deg:
            return f"a loop edge left unsatisfied by {m * 100:.1f} cm / {deg:.1f} deg (not converged)"
    return ""
