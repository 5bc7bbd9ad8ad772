"""Gravity: the estimator on known tilts and without a floor, settling in the pipeline (rebuild, label
gate), and `reconstruct` of a room without poses started tilted: floor at z = 0, normals up."""
from __future__ import annotations

import dataclasses
import json
import logging
import types

import numpy as np
import pytest
import trimesh

from fusion.frame import Frame, Intrinsics
from fusion.gravity import PRIOR_UP_CAM, GravityEstimator, angle_deg, depth_points
from fusion.gravity_settle import GravitySettler, SettleConfig
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.reconstruct import ReconstructRequest, reconstruct
from storage.session import load_session, save_session
from fusion.sources.imu import AccelFilter, rotation_from_sdk
from fusion.sources.rs_common import accel_rotation
from fusion.sources.synthetic import SyntheticConfig, SyntheticSource
from synth.render import RenderConfig
from synth.trajectory import tilted_start
from fusion.trajectory import read_tum
from fusion.volume import VolumeConfig
from tests.fixtures_rgbd import write_sevenscenes

SEED, PITCH_DEG, ROLL_DEG, N_FRAMES = 2, -20.0, 8.0, 40
Z = np.array([0.0, 0, 1])


def _rot(axis, deg) -> np.ndarray:
    a = np.radians(deg)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]]) / np.linalg.norm(axis)
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


@pytest.fixture(scope="module")
def tilted():
    """(frames without poses, true poses) of a synthetic room (z up, floor z = 0) whose first camera is
    pitched and rolled, at 320x240."""
    cfg = SyntheticConfig(render=RenderConfig(intrinsics=RenderConfig().intrinsics.scaled(0.5)))
    src = SyntheticSource(SEED, n_frames=N_FRAMES, config=cfg)
    poses = tilted_start(src.poses, PITCH_DEG, ROLL_DEG)
    frames = []
    for i, T in enumerate(poses):
        r = src.renderer().render(T, SEED, i)
        frames.append(Frame(r.color, r.depth_m, src.intrinsics, i / 30.0, i))
    src.close()
    return frames, poses


def _up_error_deg(T_est: np.ndarray, T_true: np.ndarray) -> float:
    """Angle between the estimated and the true up, both seen from the camera."""
    return angle_deg(T_est[:3, :3].T @ Z, T_true[:3, :3].T @ Z)


def test_estimator_recovers_a_known_tilt_and_yaw_on_exact_planes():
    g = np.mgrid[-2:2:0.05, -2:2:0.05].reshape(2, -1).T
    floor = np.c_[g, np.zeros(len(g))]
    wall_x = np.c_[np.full(len(g), 2.0), g[:, 0], g[:, 1] + 2]     # x = 2, facing -x
    wall_y = np.c_[g[:, 0], np.full(len(g), 2.0), g[:, 1] + 2]     # y = 2, facing -y
    P = np.concatenate([floor, wall_x, wall_y])
    N = np.concatenate([np.tile(Z, (len(g), 1)), np.tile([-1.0, 0, 0], (len(g), 1)), np.tile([0, -1.0, 0], (len(g), 1))])
    R = _rot([0.3, 1, 0.2], 18) @ _rot(Z, 30)                        # tilt 18 deg, yaw 30 deg
    t = np.array([0.4, -0.2, 1.1])
    prior = _rot([1, 0, 0], 14) @ R @ Z                             # the prior is 14 deg off
    est = GravityEstimator().estimate(P @ R.T + t, N @ R.T, prior, R @ [0, 0, 1.5] + t)
    assert est.method == "floor" and est.confidence > 0.9
    assert angle_deg(est.up_world, R @ Z) < 0.05
    A = est.T_aligned_world
    aligned = (P @ R.T + t) @ A[:3, :3].T + A[:3, 3]
    assert np.abs(aligned[: len(g), 2]).max() < 1e-3               # floor at z = 0
    n = (N @ R.T) @ A[:3, :3].T
    assert np.abs(n[len(g):]).max(1).min() > 0.9999                 # walls face the x and y axes


def test_estimator_recovers_the_tilt_of_a_rendered_frame(tilted):
    frames, poses = tilted
    P, N = depth_points(frames[0].depth_m, frames[0].intrinsics, np.eye(4))
    true_up = poses[0][:3, :3].T @ Z
    assert angle_deg(true_up, PRIOR_UP_CAM) > 15                    # the upright assumption is well off
    est = GravityEstimator().estimate(P, N, PRIOR_UP_CAM, np.zeros(3))
    assert est.method == "floor" and est.confidence > 0.5
    assert angle_deg(est.up_world, true_up) < 2.0
    assert abs(est.T_aligned_world[2, 3] - poses[0][2, 3]) < 0.1    # camera height (a table top: 0.8 m off)


def _desk_frames(n: int, height_m: float = 0.45, pitch_deg: float = 40.0) -> list[Frame]:
    """A close-up of a desk top: the camera `height_m` above it, pitched down, no floor or wall in view."""
    intr = Intrinsics(80.0, 80.0, 39.5, 29.5, 80, 60)
    R = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]) @ _rot([1, 0, 0], -pitch_deg)  # upright camera, then pitched
    frames = []
    for i in range(n):
        u, v = np.meshgrid(np.arange(80), np.arange(60))
        rays = np.stack([(u - 39.5) / 80, (v - 29.5) / 80, np.ones_like(u, float)], -1) @ R.T
        t = -height_m / np.minimum(rays[..., 2], -1e-6)
        depth = np.where((rays[..., 2] < -0.05) & (t < 2.0), t, 0).astype(np.float32)  # ray z = 1 in the camera
        p = rays * t[..., None]
        color = (127 + 100 * np.sin(25 * p)).clip(0, 255).astype(np.uint8)
        frames.append(Frame(color, depth, intr, i / 30.0, i))
    return frames


def test_close_up_without_floor_falls_back_with_low_confidence_and_one_warning(caplog):
    frames = _desk_frames(12)
    cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu"), gravity=SettleConfig(every_frames=4))
    pipe = FusionPipeline(cfg)
    with caplog.at_level(logging.WARNING, logger="fusion.gravity"):
        try:
            results = [pipe.process(f) for f in frames]
            pipe.settle_gravity()
        finally:
            pipe.close()
    rep = pipe.gravity.report()
    assert rep.method == "assumed" and rep.confidence <= 0.2 and rep.tilt_deg < 1e-6
    assert results[0].integrated and not pipe.gravity.holds_labels
    assert len([r for r in caplog.records if r.name == "fusion.gravity"]) == 1
    R0 = results[0].T_world_cam[:3, :3]
    assert angle_deg(R0 @ PRIOR_UP_CAM, Z) < 1e-6                   # the prior: camera -y is up


class _GivenSurface:
    """Stands in for the volume and the mesher of the settler: the fused surface is given as points."""

    def __init__(self, points: np.ndarray, normals: np.ndarray):
        self.chunks = {(0, 0, 0): {0: types.SimpleNamespace(positions_m=points, normals=normals)}}
        self.frames_integrated = 0

    def clear(self):
        pass

    def integrate(self, frame, T):
        return np.zeros((0, 3), np.int64)

    def reset(self):
        pass


def _table_and_walls_below() -> tuple[np.ndarray, np.ndarray]:
    """A table top at z = 0 (1.5 x 1 m) and two walls reaching 0.9 m below it, 2 cm apart."""
    g = np.mgrid[-0.75:0.75:0.02, 0.5:1.5:0.02].reshape(2, -1).T
    w = np.mgrid[-2:2:0.02, -0.9:1.6:0.02].reshape(2, -1).T
    P = np.concatenate([np.c_[g, np.zeros(len(g))], np.c_[np.full(len(w), 2.0), w], np.c_[w[:, 0], np.full(len(w), 2.5), w[:, 1]]])
    N = np.concatenate([np.tile(Z, (len(g), 1)), np.tile([-1.0, 0, 0], (len(w), 1)), np.tile([0, -1.0, 0], (len(w), 1))])
    return P, N


def test_a_table_taken_for_the_floor_is_dropped_once_surface_is_seen_below_it():
    """The first frame sees only a table top 0.9 m down, so it is taken for the floor; once walls are seen
    reaching far below it, the world's floor moves down to the assumed height (walls give up)."""
    frame = _desk_frames(1, height_m=0.9, pitch_deg=30)[0]
    surface = _GivenSurface(*_table_and_walls_below())
    settler = GravitySettler(SettleConfig(every_frames=1), surface, surface, remesh=False)
    T0 = settler.start(frame, None, "track")
    assert settler.report().method == "floor" and abs(T0[2, 3] - 0.9) < 0.05
    assert not settler.estimator.floor_refuted(*_table_and_walls_below(), Z, -0.9)  # the walls' foot is a floor
    settler.after_integrate(frame, T0)
    rep = settler.report()
    assert rep.method == "walls" and rep.rebuilds == 1
    assert settler.changes[-1][1][2, 3] > 0.5                       # the floor moved down by over half a metre


def test_a_wrong_start_is_rebuilt_and_labels_wait_until_gravity_settles(tilted, tmp_path):
    frames, poses = tilted
    cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=0.03, device="cpu"),
                         gravity=SettleConfig(max_frames=30))
    pipe = FusionPipeline(cfg)
    good = pipe.gravity.estimator
    pipe.gravity.estimator = GravityEstimator(good.config.__class__(min_floor_points=10**9, min_wall_points=10**9))
    try:
        results, held = [pipe.process(frames[0])], []
        pipe.gravity.estimator = good              # the first frame was aligned by the prior alone (20+ deg off)
        assert _up_error_deg(results[0].T_world_cam, poses[0]) > 15
        for f in frames[1:]:
            held.append(pipe.gravity.holds_labels and pipe.dirty.pending("semantics") == 0)
            results.append(pipe.process(f))
        rep = pipe.gravity.report()
        assert rep.rebuilds >= 1 and rep.method == "floor" and rep.settled_frame is not None
        assert all(held[: rep.settled_frame - 1]) and pipe.dirty.pending("semantics") > 0
        assert all(r.integrated for r in results) and results[-1].state == "ok"
        assert pipe.volume.frames_integrated == len(frames)
        final = {r.index: pipe.gravity.restate(r.index, r.T_world_cam) for r in results}
        for r, T in zip(results, poses):                             # every pose, restated, in the final world
            assert _up_error_deg(final[r.index], T) < 2.0
        assert pipe.tracker.relocaliser.keyframes
        for k in pipe.tracker.relocaliser.keyframes:
            assert np.allclose(k.T_world_cam, final[k.index], atol=1e-6)  # keyframes moved with the world
        mesh = pipe.final_mesh()
        up = mesh.normals[:, 2] > 0.95
        assert np.mean(np.abs(mesh.positions_m[up, 2]) < 0.04) > 0.3
        save_session(tmp_path / "s.session", pipe, [0.0], [results[-1].T_world_cam])
    finally:
        pipe.close()
    loaded = load_session(tmp_path / "s.session")
    loaded.pipeline.close()
    assert loaded.pipeline.gravity.report().to_dict() == rep.to_dict() and not loaded.pipeline.gravity.holds_labels


def test_a_source_with_ground_truth_keeps_its_frame(tilted):
    frames, poses = tilted
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.03, device="cpu")))
    try:
        r = pipe.process(frames[0], T_start=poses[0])
    finally:
        pipe.close()
    assert np.array_equal(r.T_world_cam, poses[0]) and pipe.gravity.report().method == "gt"
    assert not pipe.gravity.holds_labels and pipe.dirty.pending("semantics") > 0


def test_reconstruct_without_poses_from_a_tilted_start_puts_the_floor_at_zero(tilted, tmp_path):
    frames, poses = tilted
    ds = write_sevenscenes(tmp_path / "ds", frames[:30], poses=False)
    out = tmp_path / "out"
    cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=0.03, device="cpu"))
    reconstruct(ReconstructRequest(str(ds), out, cfg, progress=False))
    g = json.loads((out / "stats.json").read_text())["gravity"]
    true_tilt = angle_deg(poses[0][:3, :3].T @ Z, PRIOR_UP_CAM)
    assert g["method"] == "floor" and g["confidence"] >= 0.5 and abs(g["tilt_deg"] - true_tilt) < 2.0
    assert g["settled_frame"] is not None
    mesh = trimesh.load(out / "mesh.ply", process=False)
    z, nz = mesh.vertices[:, 2], mesh.vertex_normals[:, 2]
    assert abs(np.median(z[(nz > 0.95) & (z < 0.3)])) < 0.02      # up-facing surfaces low down: the floor, at 0
    assert np.mean(np.abs(z[nz > 0.95]) < 0.04) > 0.3
    assert np.mean(z < -0.06) < 0.01                                # nothing below the floor
    _, traj = read_tum(out / "trajectory.txt")
    assert len(traj) == 30 and _up_error_deg(traj[0], poses[0]) < 2.0


# ---------------------------------------------------------------- IMU (accelerometer)
def test_accel_filter_averages_valid_samples_and_ignores_bad_ones_with_one_warning(caplog):
    class Profile:  # an SDK stream profile: extrinsics to another one (rotation column-major)
        def __init__(self, to):
            self.to = to

        def get_extrinsics_to(self, other):
            if other.__class__ is not Profile or id(other) not in self.to:
                raise RuntimeError("Requested extrinsics are not available!")
            return types.SimpleNamespace(rotation=self.to[id(other)])

    color, depth = Profile({}), Profile({})
    depth.to[id(color)] = [1, 0, 0, 0, 1, 0, 0, 0, 1]
    accel = Profile({id(depth): [0, 1, 0, -1, 0, 0, 0, 0, 1]})      # IMU x is the camera's y, IMU y its -x
    acc = AccelFilter(rotation_from_sdk(accel_rotation(accel, depth, color)))
    with caplog.at_level(logging.WARNING, logger="fusion.sources.imu"):
        for i, a in enumerate([(-9.8, 0, 0.2), (np.nan, 1, 0), (0, 0, 0), (-30, 0, 0), (-9.8, -0.2, 0)]):
            acc.add(i * 0.01, a)
        assert np.allclose(acc.at(0.03), [0.1, -9.8, 0.1]) and acc.rejected == 3
        assert acc.at(5.0) is None                                    # a gap: no reading
    assert len([r for r in caplog.records if r.name == "fusion.sources.imu"]) == 1


def test_the_accelerometer_gives_up_and_the_scene_the_floor(tilted):
    frames, poses = tilted
    rng = np.random.default_rng(3)
    bias = _rot([1, 0, 0], 0.3)                                       # a slightly tilted IMU
    frames = [dataclasses.replace(f, accel_cam=bias @ T[:3, :3].T @ [0, 0, 9.81] + rng.normal(0, 0.3, 3))
              for f, T in zip(frames[:20], poses)]
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.03, device="cpu"),
                                         gravity=SettleConfig(max_frames=20)))
    try:
        results = [pipe.process(f) for f in frames]
    finally:
        pipe.close()
    rep = pipe.gravity.report()
    assert rep.method == "imu" and rep.confidence == 1.0 and rep.settled_frame is not None
    T0 = pipe.gravity.restate(0, results[0].T_world_cam)
    assert _up_error_deg(T0, poses[0]) < 0.6 and abs(T0[2, 3] - poses[0][2, 3]) < 0.05


def test_a_recording_with_an_accelerometer_replays_its_readings(tmp_path, caplog):
    import pyrealsense2 as rs

    from fusion.sources.recording import RecordingSource
    from tests.scenes import SMALL, orbit
    from tests.test_realsense import SoftCam, raw_depth

    cam, scene = SoftCam(SMALL), orbit(6, SMALL, step_deg=3.0)
    sensor = cam.dev.add_sensor("Motion Module")
    ms = rs.motion_stream()
    ms.type, ms.index, ms.uid, ms.fmt, ms.fps, ms.intrinsics = (rs.stream.accel, 0, 2, rs.format.motion_xyz32f, 100,
                                                                rs.motion_device_intrinsic())
    profile = sensor.add_motion_stream(ms)
    ex = rs.extrinsics()  # the SDK's recorder drops a software motion stream's extrinsics: identity is assumed
    ex.rotation, ex.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
    profile.register_extrinsics_to(cam.profiles["depth"], ex)
    rec = rs.recorder(str(tmp_path / "imu.db3"), cam.dev)
    cam.start()
    sensor.open(profile)
    sensor.start(lambda f: None)
    for i, f in enumerate(scene):
        m, v = rs.software_motion_frame(), rs.vector()
        v.x, v.y, v.z = (0.0, 0.0, 0.0) if i == 3 else (-9.8, 0.3, 0.1)   # frame 3's sample is a zero vector
        m.data, m.timestamp, m.domain, m.frame_number = v, (i + 0.5) * 1000.0 / 30, rs.timestamp_domain.hardware_clock, i
        m.profile = profile.as_motion_stream_profile()
        sensor.on_motion_frame(m)
        cam.push(i, raw_depth(f), f.color)
    sensor.stop()
    sensor.close()
    cam.stop()
    del rec
    src = RecordingSource(tmp_path / "imu.db3")
    with caplog.at_level(logging.WARNING, logger="fusion.sources.imu"):
        try:
            got = list(src)
        finally:
            src.close()
    assert src.info.has_accel and len(got) >= 4
    read = [f.accel_cam for f in got if f.accel_cam is not None]
    assert len(read) >= 3 and all(np.allclose(a, [-9.8, 0.3, 0.1], atol=1e-4) for a in read)
    assert len([r for r in caplog.records if r.name == "fusion.sources.imu"]) == 1
