"""Dense map alignment: a keyframe whose odometry drifted is registered to the map of old keyframes (accepted on
a real partial overlap, close to the truth, joined to the map keyframe that confirms most of it); a look-alike, a correction larger than the path's drift allows
and a surface that cannot pin the pose are rejected."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.drift import pose_offset
from fusion.frame import Frame
from fusion.sources.synthetic import SyntheticSource
from fusion.tracking import relative_motion
from loopclosure.detect import LoopDetectConfig, LoopDetector
from loopclosure.keyframes import reduced_keyframe
from loopclosure.map_align import MapAligner, MapAlignConfig, information_in
from tests.test_loop_closure import _lookalike

MAP_FRAMES = (0, 6, 12, 18)   # room 0's first frames: the old keyframes at their (corrected: true) poses
CUR_FRAME = 56                # a later view that sees part of their surface and new ground


@pytest.fixture(scope="module")
def scene():
    src = SyntheticSource(0, n_frames=CUR_FRAME + 1)
    det = LoopDetector(LoopDetectConfig())
    olds = [reduced_keyframe(k, src.frame(i)) for k, i in enumerate(MAP_FRAMES)]
    cur = reduced_keyframe(len(olds), src.frame(CUR_FRAME))
    return src, det, olds, np.array([src.poses[i] for i in MAP_FRAMES]), cur


def test_drifted_keyframe_aligned_to_the_map(scene):
    src, det, olds, old_poses, cur = scene
    aligner = MapAligner(MapAlignConfig(), det.cloud_of, 4.0)
    true = src.poses[CUR_FRAME]
    check = aligner.check(cur, true, olds, old_poses)
    assert 0.15 < check.overlap < 0.8, check          # a partial overlap: the rest of its view is new ground
    v = aligner.align(cur, true @ pose_offset(0.035, 1.5), olds, old_poses, walked_m=1.0)
    assert v.edge is not None, v.reason
    old = next(i for i, k in enumerate(olds) if k.kid == v.edge.old)
    m, deg = relative_motion(np.linalg.inv(old_poses[old]) @ true, v.edge.T_old_cur)
    assert m < 0.01 and deg < 0.3, (m, deg)
    assert 0.025 < v.edge.drift_m < 0.045 and v.edge.cur == cur.kid and v.edge.cur_frame == CUR_FRAME


def test_lookalike_rejected(scene):
    """The same foreground furniture in front of another room's background, where the map saw its own room:
    rejected by the depth check even when the path walked would allow any correction."""
    src, det, olds, old_poses, cur = scene
    fake = reduced_keyframe(99, _lookalike(src.frame(CUR_FRAME), SyntheticSource(3, n_frames=61).frame(60), 99, 9.0, None))
    aligner = MapAligner(MapAlignConfig(), det.cloud_of, 4.0)
    v = aligner.align(fake, src.poses[CUR_FRAME] @ pose_offset(0.02, 1.0), olds, old_poses, walked_m=100.0)
    assert v.edge is None and "depth disagrees" in v.reason, v.reason


def test_correction_beyond_the_drift_allowed_rejected(scene):
    """A keyframe 6 cm / 2.5 deg off the map just after a loop held it (nothing walked since): ICP finds the true
    pose, but odometry cannot have drifted that far, so the alignment is not trusted."""
    src, det, olds, old_poses, cur = scene
    aligner = MapAligner(MapAlignConfig(), det.cloud_of, 4.0)
    v = aligner.align(cur, src.poses[CUR_FRAME] @ pose_offset(0.06, 2.5), olds, old_poses, walked_m=0.0)
    assert v.edge is None and "implausible correction" in v.reason, v.reason
    walked = aligner.align(cur, src.poses[CUR_FRAME] @ pose_offset(0.06, 2.5), olds, old_poses, walked_m=1.5)
    assert walked.edge is not None, walked.reason      # the same offset after 1.5 m walked is plausible


def test_flat_surface_does_not_pin_the_pose(scene):
    """A wall seen square-on, in the map and by the keyframe: ICP could slide along it, so it is rejected."""
    _, det, olds, _, cur = scene
    wall = dataclasses.replace(cur.frame(), depth_m=np.full_like(cur.frame().depth_m, 2.0))
    kf_map, kf_cur = reduced_keyframe(200, _full(wall)), reduced_keyframe(201, _full(wall))
    aligner = MapAligner(MapAlignConfig(), det.cloud_of, 4.0)
    v = aligner.align(kf_cur, pose_offset(0.01, 0.3), [kf_map], np.eye(4)[None], walked_m=1.0)
    assert v.edge is None and "does not pin" in v.reason, v.reason


def _full(frame: Frame) -> Frame:
    """A reduced keyframe's frame at twice its size (what `reduced_keyframe` expects)."""
    h, w = frame.depth_m.shape
    color = np.repeat(np.repeat(frame.color, 2, 0), 2, 1)
    depth = np.repeat(np.repeat(frame.depth_m, 2, 0), 2, 1)
    return Frame(color, depth, frame.intrinsics.scaled(2.0), frame.timestamp_s, frame.index)


def test_edge_anchored_to_the_map_keyframe_that_confirms_most(scene):
    """The map keyframes are ranked by the surface they share with the keyframe at its predicted pose; the edge
    joins the one that confirms most of its points at the aligned pose instead (here the ranking is reversed, so
    the first-ranked keyframe confirms least). Where the map is still a few centimetres off between old
    keyframes, an edge to one that barely agrees with the aligned view carries that error into the graph."""
    src, det, olds, old_poses, cur = scene
    aligner = MapAligner(MapAlignConfig(), det.cloud_of, 4.0)
    true = src.poses[CUR_FRAME]
    predicted = true @ pose_offset(0.02, 0.5)
    ranked = aligner.map_keyframes(cur, predicted, olds, old_poses)
    support = aligner.check(cur, true, [olds[i] for i in ranked], old_poses[ranked]).support
    worst_first = [ranked[i] for i in np.argsort(support)]
    aligner.map_keyframes = lambda *args: worst_first
    v = aligner.align(cur, predicted, olds, old_poses, walked_m=1.0)
    assert v.edge is not None, v.reason
    anchor = next(i for i, k in enumerate(olds) if k.kid == v.edge.old)
    assert anchor == worst_first[-1] != worst_first[0]
    m, deg = relative_motion(np.linalg.inv(old_poses[anchor]) @ true, v.edge.T_old_cur)
    assert m < 0.01 and deg < 0.3, (m, deg)


def test_information_restated_in_another_frame_is_what_open3d_computes_there():
    """A map edge's information is computed against the union cloud in one keyframe's frame and restated for
    the anchor's: the same as Open3D's from the union moved into the anchor's frame (no copy of the cloud)."""
    import open3d as o3d
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (3000, 3))
    pts[:1000, 2], pts[1000:2000, 0] = 0.0, 1.0                       # a floor and a wall in a scatter
    target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts + rng.normal(0, 0.003, pts.shape)))
    T = np.eye(4)
    T[:3, 3] = (0.004, -0.002, 0.001)
    T_ba = np.eye(4)
    T_ba[:3, :3] = Rotation.from_euler("xyz", (20, -35, 50), degrees=True).as_matrix()
    T_ba[:3, 3] = (0.7, -1.2, 0.4)
    reg = o3d.pipelines.registration
    moved = o3d.geometry.PointCloud(target).transform(T_ba)
    direct = np.asarray(reg.get_information_matrix_from_point_clouds(source, moved, 0.02, T_ba @ T))
    restated = information_in(np.asarray(reg.get_information_matrix_from_point_clouds(source, target, 0.02, T)), T_ba)
    assert np.abs(direct).max() > 100
    assert np.allclose(restated, direct, rtol=1e-9, atol=1e-6)
