"""Loop closure: a loop found and the map corrected under injected drift; a look-alike rejected with the
map unchanged; an implausible or unconverged optimisation discarded with one warning."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from bench.drift import drifted_poses
from fusion.frame import Frame
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.sources.synthetic import SyntheticSource
from fusion.tracking import relative_motion
from fusion.trajectory import ate_rmse_m
from fusion.volume import VolumeConfig
from loopclosure.config import LoopClosureConfig
from loopclosure.detect import LoopDetectConfig, LoopDetector
from loopclosure.pose_graph import GraphEdge, PoseGraphConfig, optimise, optimise_dropping

STRIDE = 2          # every 2nd frame of room 0's path: it comes back to its start after about 110 frames
FRAMES = 180
DRIFT_DEG_PER_M = 3.0
BLANK_FROM = 70     # frames from here on lose their colour in the map-alignment test


def _config(min_walk_m: float = 2.5, **graph) -> PipelineConfig:
    detect = LoopDetectConfig(min_age_keyframes=6, min_walk_m=min_walk_m)
    loop = LoopClosureConfig(enabled=True, worker_duty=1.0, detect=detect,
                             graph=PoseGraphConfig(**graph))
    return PipelineConfig(poses="gt", volume=VolumeConfig(voxel_size_m=0.02, initial_blocks=1000), loop=loop)


def _run(pipeline: FusionPipeline, frames) -> list:
    results = [pipeline.process(f) for f in frames]
    assert pipeline.finish_loops(120.0), "the loop closer did not finish its keyframes"
    return results


@pytest.fixture(scope="module")
def drifting_scan():
    """Room 0's looping path with odometry that turns 3 deg per metre walked (as frames for --poses gt)."""
    src = SyntheticSource(0, n_frames=FRAMES)
    idx = np.arange(0, FRAMES, STRIDE)
    true = src.poses[idx]
    odo = drifted_poses(true, DRIFT_DEG_PER_M, 0.0)
    frames = [dataclasses.replace(src.frame(int(i)), index=k, timestamp_s=k / 15.0, T_world_cam_gt=odo[k])
              for k, i in enumerate(idx)]
    return frames, true, odo


def test_loop_found_and_map_corrected(drifting_scan):
    frames, true, odo = drifting_scan
    p = FusionPipeline(_config())
    try:
        results = _run(p, frames)
        stats = p.loops.stats
        live = [r.map_correction for r in results if r.map_correction is not None]
        assert stats.accepted >= 1 and stats.corrections >= 1 and p.loops.events, stats
        assert all(e in p.loops.events for e in live)   # the frame results tell the corrections applied live
        first = p.loops.events[0]
        assert first.max_shift_m > 0.01
        moved = first.move_points(first.keyframe_positions_m + 0.01)   # map points by each keyframe move with it
        expect = np.einsum("nij,nj->ni", first.corrections[:, :3, :3], first.keyframe_positions_m + 0.01)
        assert np.allclose(moved, expect + first.corrections[:, :3, 3])
        last = len(frames) - 1
        before = relative_motion(true[last], odo[last])
        after = relative_motion(true[last], p.loops.restate(last, results[last].T_world_cam))
        assert before[1] > 8.0                             # the injected drift: degrees by the end
        assert after[1] < before[1] / 3, (before, after)
        restated = np.array([p.loops.restate(r.index, r.T_world_cam) for r in results])
        assert ate_rmse_m(restated, true) < ate_rmse_m(odo, true) / 2
        # the live loop goes on in the corrected world: a frame after the correction lands near the truth
        assert len(p.volume.active_keys()) > 0 and p.mesher.full_mesh().faces.shape[0] > 0
    finally:
        p.close()


def test_keyframes_without_loops_aligned_to_the_corrected_map(drifting_scan):
    """After the loop is closed the colour goes blank (no ORB features: no loop can be proposed), while the camera
    keeps seeing old ground: once a correction has landed those keyframes are aligned to the map instead, each
    edge within 2 cm / 1 deg of the truth, and the end of the scan stays corrected."""
    frames, true, odo = drifting_scan
    blank = [f if f.index < BLANK_FROM else dataclasses.replace(f, color=np.full_like(f.color, 128)) for f in frames]
    p = FusionPipeline(_config())
    try:
        results = _run(p, blank)
        stats = p.loops.stats
        assert stats.corrections >= 1 and stats.map_aligned >= 1, stats
        assert all(e.cur_frame >= BLANK_FROM for e in p.loops.map_edges)
        for e in p.loops.map_edges:
            m, deg = relative_motion(np.linalg.inv(true[e.old_frame]) @ true[e.cur_frame], e.T_old_cur)
            assert m < 0.02 and deg < 1.0, (e.cur_frame, e.old_frame, m, deg)
        last = len(frames) - 1
        after = relative_motion(true[last], p.loops.restate(last, results[last].T_world_cam))
        assert after[1] < relative_motion(true[last], odo[last])[1] / 3, after
    finally:
        p.close()


def test_keyframes_skipped_while_behind_are_searched_later(drifting_scan):
    """A worker that is behind only describes keyframes (here: whenever another one is queued) and looks for
    their loops once it has caught up: the loop is still found and the map corrected."""
    frames, true, odo = drifting_scan
    cfg = _config()
    cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, max_backlog=0))
    p = FusionPipeline(cfg)
    try:
        results = _run(p, frames)
        stats = p.loops.stats
        assert stats.searched_late > 0 and stats.accepted >= 1 and stats.corrections >= 1, stats
        restated = np.array([p.loops.restate(r.index, r.T_world_cam) for r in results])
        assert ate_rmse_m(restated, true) < ate_rmse_m(odo, true) / 2
    finally:
        p.close()


def _lookalike(frame: Frame, other: Frame, index: int, timestamp_s: float, pose: np.ndarray) -> Frame:
    """The same foreground furniture (nearer 40% of the depth) in front of another room's background."""
    d = frame.depth_m
    fg = (d > 0) & (d < np.percentile(d[d > 0], 40))
    color = np.where(fg[..., None], frame.color, other.color)
    depth = np.where(fg, d, other.depth_m).astype(np.float32)
    return Frame(color, depth, frame.intrinsics, timestamp_s, index, pose)


def test_lookalike_rejected_map_unchanged(drifting_scan, caplog):
    frames, true, odo = drifting_scan
    part = frames[:40]                                    # about 2 m of path, no loop yet
    p = FusionPipeline(_config(min_walk_m=1.0))
    try:
        _run(p, part)
        before = dataclasses.replace(p.loops.stats)   # genuine short loops along the way may have closed
        events, grid = list(p.loops.events), p.volume.grid
        # the look-alike is seen from (nearly) where frame 0 was: place recognition proposes frame 0
        pose = part[0].T_world_cam_gt @ np.array([[1, 0, 0, 0.05], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        fake = _lookalike(part[0], SyntheticSource(3, n_frames=61).frame(60), 40, 40 / 15.0, pose)
        _run(p, [fake])
        stats = p.loops.stats
        assert stats.candidates > before.candidates and stats.accepted == before.accepted, (before, stats)
        why = [reason for cur, old, reason in p.loops.verdicts if cur == 40 and old == 0]
        assert why and ("depth disagrees" in why[0] or "ICP" in why[0]), list(p.loops.verdicts)[-5:]
        assert p.loops.events == events and p.volume.grid is grid     # no correction: the map is the one fused
    finally:
        p.close()


def test_detector_rejects_lookalike_accepts_true_revisit():
    src, other = SyntheticSource(0, n_frames=9), SyntheticSource(3, n_frames=61)
    det = LoopDetector(LoopDetectConfig())
    from loopclosure.keyframes import reduced_keyframe
    a, b = src.frame(0), src.frame(8)
    fake = _lookalike(a, other.frame(60), 99, 9.0, None)
    kfs = [reduced_keyframe(kid, f) for kid, f in enumerate((a, b, fake))]
    for kf, f in zip(kfs, (a, b, fake)):
        det.describe(kf.kid, f)
    truth = np.linalg.inv(src.poses[0]) @ src.poses[8]
    good = det.verify(kfs[0], kfs[1], truth, 1.0)
    assert good.edge is not None, good.reason
    assert relative_motion(good.edge.T_old_cur, truth)[0] < 0.02
    bad = det.verify(kfs[0], kfs[2], np.eye(4), 5.0)
    assert bad.edge is None and "RANSAC" not in bad.reason and "matches" not in bad.reason, bad.reason


def test_drift_allowed_counts_the_path_since_the_nearest_corrected_loop():
    """A loop is checked against the drift of the path over which its two keyframes may have drifted apart: the
    path between them, or, once corrected loops hold keyframes near both, only the path to those."""
    from loopclosure.keyframes import unpinned_walk_m

    path = np.arange(10, dtype=float)               # a metre between keyframes
    none = np.zeros(10, bool)
    assert unpinned_walk_m(path, none, 2, 9) == 7.0                  # nothing corrected: the path between them
    held = none.copy()
    held[[3, 8]] = True                                              # a corrected loop holds keyframes 3 and 8
    assert unpinned_walk_m(path, held, 2, 9) == 2.0                  # 1 m to keyframe 3 and 1 m to keyframe 8
    assert unpinned_walk_m(path, held, 8, 9) == 1.0                  # never more than the path between them
    held[3] = False
    assert unpinned_walk_m(path, held, 1, 9) == 2.0                  # the first keyframe is always held


def test_the_closer_verifies_a_loop_with_the_unpinned_path():
    """The worker hands verification the path its two keyframes may have drifted over: the whole path between them
    until a corrected loop holds keyframes near both; a loop still waiting for its correction holds nothing."""
    from types import SimpleNamespace

    from fusion.meshing import MeshConfig
    from loopclosure.closer import LoopCloser
    from loopclosure.detect import Verdict

    walked = []
    detector = SimpleNamespace(candidates=lambda kid, kids, poses, path: [2],
                               verify=lambda old, cur, T, walked_m: walked.append(walked_m) or Verdict(None, "spy"))
    closer = LoopCloser(LoopClosureConfig(enabled=True), VolumeConfig(), MeshConfig())
    closer._detector = detector
    kfs = [SimpleNamespace(index=k) for k in range(10)]
    args = (9, kfs, np.arange(10), np.tile(np.eye(4), (10, 1, 1)), np.arange(10, dtype=float))
    closer._verified_loop(*args)
    loop = SimpleNamespace(old=3, cur=8)
    closer.loops, closer._due = [loop], [loop]
    closer._verified_loop(*args)
    closer._due = []
    closer._verified_loop(*args)
    assert walked == [7.0, 7.0, 2.0]


def test_detector_refuses_drift_implausible_for_the_path():
    """The same true loop, with the odometry 20 cm off: plausible after 5 m walked, not after 0.5 m."""
    src = SyntheticSource(0, n_frames=9)
    det = LoopDetector(LoopDetectConfig())
    from loopclosure.keyframes import reduced_keyframe
    a, b = src.frame(0), src.frame(8)
    kfs = [reduced_keyframe(kid, f) for kid, f in enumerate((a, b))]
    for kf, f in zip(kfs, (a, b)):
        det.describe(kf.kid, f)
    odometry = np.linalg.inv(src.poses[0]) @ src.poses[8]
    odometry[0, 3] += 0.2
    assert det.verify(kfs[0], kfs[1], odometry, 5.0).edge is not None
    far = det.verify(kfs[0], kfs[1], odometry, 0.5)
    assert far.edge is None and "implausible drift" in far.reason, far.reason


def _ring(n: int = 24, radius_m: float = 1.5, drift_deg: float = 0.8):
    """A camera walking a circle; odometry turns drift_deg per step; the loop edge closes it truthfully."""
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    true = np.tile(np.eye(4), (n, 1, 1))
    true[:, 0, 3], true[:, 1, 3] = radius_m * np.cos(ang), radius_m * np.sin(ang)
    c, s = np.cos(ang), np.sin(ang)
    true[:, :2, :2] = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    odo = drifted_poses(true, drift_deg / (2 * np.pi * radius_m / n), 0.0)
    info = np.eye(6) * 1000.0
    edges = [GraphEdge(i - 1, i, np.linalg.inv(odo[i]) @ odo[i - 1], info, False) for i in range(1, n)]
    edges.append(GraphEdge(n - 1, 0, np.linalg.inv(true[0]) @ true[n - 1], info, True))
    return true, odo, edges


def test_pose_graph_closes_ring_and_refuses_implausible():
    true, odo, edges = _ring()
    ok = optimise(odo, edges)
    assert ok.poses is not None and ok.loops_kept == 1, ok.reason
    err_before = np.linalg.norm(odo[:, :3, 3] - true[:, :3, 3], axis=1).max()
    err_after = np.linalg.norm(ok.poses[:, :3, 3] - true[:, :3, 3], axis=1).max()
    assert err_after < err_before / 3
    far = optimise(odo, edges, PoseGraphConfig(max_shift_m=0.01))
    assert far.poses is None and "moved a keyframe" in far.reason
    stuck = optimise(odo, edges, PoseGraphConfig(max_iterations=1, max_loop_residual_m=0.001, max_loop_residual_deg=0.05))
    assert stuck.poses is None and "not converged" in stuck.reason


def test_a_wrong_new_edge_is_left_out_and_the_right_ones_kept():
    """A wrong loop edge optimised with a right one leaves the odometry unsatisfied: that result is discarded, and
    the graph without the wrong edge (the worst fitted first) converges onto the truth. An edge that is not
    droppable (an older one) is never left out."""
    true, odo, edges = _ring()
    n, cfg = len(true), PoseGraphConfig(max_odometry_residual_m=0.015)
    wrong = np.linalg.inv(true[0]) @ true[n // 2]
    wrong[0, 3] += 0.3
    both = edges + [GraphEdge(n // 2, 0, wrong, np.eye(6) * 1000.0, True)]
    assert optimise(odo, both, cfg).poses is None
    res, left_out = optimise_dropping(odo, both, {len(both) - 2, len(both) - 1}, cfg)
    assert left_out == len(both) - 1 and res.poses is not None and res.loops_kept == 1, res.reason
    assert np.linalg.norm(res.poses[:, :3, 3] - true[:, :3, 3], axis=1).max() < 0.03
    kept, left_out = optimise_dropping(odo, both, {len(both) - 2}, cfg)   # only the right one may go
    assert left_out is None and kept.poses is None and "not converged" in kept.reason


def test_graph_loop_edges_name_the_loops_they_came_from():
    """The closer drops the loop behind a graph edge the optimisation converged without: each loop edge of the
    graph carries it; a loop whose keyframe is gone is not in the graph."""
    from types import SimpleNamespace

    from loopclosure.config import graph_edges

    kfs = [SimpleNamespace(kid=k) for k in (3, 5, 8)]
    odom = [np.eye(4)] * 3
    loops = [SimpleNamespace(cur=8, old=3, T_old_cur=np.eye(4), information=np.eye(6)),
             SimpleNamespace(cur=8, old=1, T_old_cur=np.eye(4), information=np.eye(6)),
             SimpleNamespace(cur=5, old=3, T_old_cur=np.eye(4), information=np.eye(6))]
    edges = graph_edges(kfs, odom, loops, LoopClosureConfig())
    assert [e.origin for e in edges if e.loop] == [loops[0], loops[2]]
    assert [(e.source, e.target) for e in edges if e.loop] == [(2, 0), (1, 0)]
    assert all(e.origin is None for e in edges if not e.loop)


def test_odometry_information_follows_the_distance_walked():
    """An odometry edge's information falls with the distance walked along it (drift grows with it), the
    same for every pair of keyframes, rotation first (Open3D's order); a turn on the spot counts as a
    short step, not as an infinitely certain one."""
    from loopclosure.config import odometry_information

    cfg = LoopClosureConfig()
    step = np.eye(4)
    step[:3, 3] = [0.3, 0.0, 0.1]
    short, long_ = step.copy(), step.copy()
    long_[:3, 3] *= 2
    a, b = odometry_information(short, cfg), odometry_information(long_, cfg)
    assert np.allclose(a, 2 * b) and np.allclose(a, np.diag(np.diag(a)))
    assert np.allclose(np.diag(a)[:3] / np.diag(a)[3:], cfg.odometry_rot_info_per_m / cfg.odometry_info_per_m)
    turn = np.eye(4)
    turn[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    assert np.all(np.isfinite(odometry_information(turn, cfg)))
    assert np.diag(odometry_information(turn, cfg))[3] == cfg.odometry_info_per_m / cfg.min_odometry_step_m


def test_implausible_optimisation_discarded_with_one_warning(drifting_scan, caplog):
    frames, _, _ = drifting_scan
    p = FusionPipeline(_config(max_shift_m=0.001, max_shift_deg=0.01))   # any real correction is "implausible"
    try:
        with caplog.at_level(logging.WARNING, logger="loopclosure.closer"):
            grid = p.volume.grid
            results = _run(p, frames)
        stats = p.loops.stats
        # loops accepted while others were queued share one optimisation: each discarded one drops its loops
        assert stats.accepted >= 1 and 1 <= stats.discarded <= stats.accepted and stats.corrections == 0, stats
        assert not p.loops.loops
        warnings = [r for r in caplog.records if "discarded" in r.getMessage()]
        assert len(warnings) == stats.discarded
        assert p.volume.grid is grid and not p.loops.events
        assert all(r.map_correction is None for r in results)
        assert np.allclose(results[-1].T_world_cam, frames[-1].T_world_cam_gt)   # poses were not moved
    finally:
        p.close()


def test_reconstruct_reports_loop_closure(tmp_path):
    from fusion.reconstruct import ReconstructRequest, reconstruct

    cfg = _config()
    stats = reconstruct(ReconstructRequest("synthetic:0", tmp_path, cfg, max_frames=24, progress=False))
    loops = stats["loop_closure"]
    assert loops["keyframes"] >= 2 and loops["keyframe_store_mb"] > 0 and loops["discarded"] == 0
    lines = [ln for ln in (tmp_path / "trajectory.txt").read_text().splitlines() if not ln.startswith("#")]
    assert stats["completed"] and len(lines) == 24


def test_keyframe_store_is_bounded_on_a_long_scan():
    """A long walk (700 keyframes' worth) keeps at most max_keyframes, thinning the older half."""
    from fusion.frame import Intrinsics
    from fusion.meshing import MeshConfig
    from loopclosure.closer import LoopCloser

    intr = Intrinsics(60.0, 60.0, 31.5, 23.5, 64, 48)
    rng = np.random.default_rng(0)
    closer = LoopCloser(LoopClosureConfig(enabled=True, max_keyframes=100), VolumeConfig(), MeshConfig())
    try:
        for i in range(300):
            T = np.eye(4)
            T[0, 3] = 0.2 * i                                   # every frame is a keyframe
            frame = Frame(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), np.full((48, 64), 2.0, np.float32),
                          intr, i / 30.0, i)
            closer.on_integrated(frame, T, settled=False)
        assert closer.stats.keyframes <= 100
        per_keyframe = 32 * 24 * 3 + 32 * 24 * 2
        assert closer.memory_bytes() <= 100 * per_keyframe
        assert closer.wait_idle(60.0)
    finally:
        closer.close()


def test_a_correction_swapped_in_at_the_end_of_a_scan_is_meshed(drifting_scan):
    """A correction that lands while finish_loops waits (no frame follows to mesh what the swap added): the
    keyframe taken after the map was rebuilt is integrated in the swap and meshed before finish_loops returns."""
    frames, _, odo = drifting_scan
    p = FusionPipeline(_config(min_walk_m=1e3))           # no loop: the correction is offered
    try:
        _run(p, frames[:12])
        assert p.loops.offer(p.loops.keyframe_poses())     # rebuilt now, swapped in by the fusion thread
        late = frames[40]
        p.loops.on_integrated(late, odo[40], settled=False)  # a keyframe the rebuilt map does not hold
        assert p.finish_loops(60.0) and p.loops.stats.corrections == 1
        assert p.mesher.pending_blocks == 0
        before = len(p.mesher.full_mesh().positions_m)
        assert before > 0 and len(p.final_mesh().positions_m) == before   # nothing was left to mesh
    finally:
        p.close()
