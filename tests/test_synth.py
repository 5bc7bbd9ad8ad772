"""Tests of the synthetic labeled world: rooms, camera path, renderer, writer and both synthetic sources."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fusion.classes import SCANNET20
from fusion.errors import SourceError
from fusion.sources.synth_folder import SynthFolderSource
from fusion.sources.synthetic import SyntheticConfig, SyntheticSource
from synth.render import DEFAULT_INTRINSICS, RenderConfig, Renderer
from synth.plans import HOMELY
from synth.rooms import ROOM_TYPES
from synth.shell import CEILING
from synth.trajectory import motion_per_frame, plan_trajectory
from synth.world import build_world
from synth.writer import write_sequence

SMALL = RenderConfig(intrinsics=DEFAULT_INTRINSICS.scaled(0.25))  # 160 x 120
SMALL_CFG = SyntheticConfig(render=SMALL)
ALL_IDS = set(SCANNET20) | {0, CEILING}


@pytest.fixture(scope="module")
def worlds():
    return {seed: build_world(seed) for seed in range(len(ROOM_TYPES))}


def test_world_is_deterministic(worlds):
    again = build_world(2)
    for name in ("vertices", "triangles", "vertex_labels", "vertex_colors", "tri_materials"):
        assert np.array_equal(getattr(worlds[2], name), getattr(again, name)), name


def test_every_scannet20_class_appears_across_room_types(worlds):
    assert {w.room_type for w in worlds.values()} == set(ROOM_TYPES)
    seen = set().union(*(w.labels_present() for w in worlds.values()))
    assert set(SCANNET20) <= seen, sorted(set(SCANNET20) - seen)
    every_room = {SCANNET20_ID[n] for n in ("wall", "floor", "door", "window", "picture")} | {CEILING}
    for w in worlds.values():
        assert w.labels_present() <= ALL_IDS
        expected = every_room | ({SCANNET20_ID["curtain"]} if w.room_type in HOMELY else set())
        assert expected <= w.labels_present(), w.room_type


SCANNET20_ID = {name: nyu for nyu, (name, _) in SCANNET20.items()}
WALL_MOUNTED = ("window", "picture", "whiteboard", "tv")


def test_furniture_inside_room_on_floor_and_apart(worlds):
    for w in worlds.values():
        obs = w.obstacles
        for i, a in enumerate(obs):
            assert np.all(a.lo >= -1e-6) and np.all(a.hi <= w.size_m + 1e-6), (w.room_type, a.name)
            if a.name not in WALL_MOUNTED:
                assert abs(a.lo[2]) < 1e-6, (w.room_type, a.name)
            for b in obs[i + 1:]:
                assert not (np.all(a.lo < b.hi) and np.all(a.hi > b.lo)), (w.room_type, a.name, b.name)


def test_trajectory_is_smooth_bounded_and_prefix_stable(worlds):
    for w in worlds.values():
        poses = plan_trajectory(w, 300)
        step, rot = motion_per_frame(poses)
        speed = step * 30.0
        assert speed.min() >= 0.3 and speed.max() <= 1.5, (w.room_type, speed.min(), speed.max())
        assert rot.max() <= 4.0, (w.room_type, rot.max())
        z = poses[:, 2, 3]
        assert z.min() >= 1.2 and z.max() <= 1.8
        assert np.all(poses[:, :2, 3] > 0.3) and np.all(poses[:, :2, 3] < w.size_m[:2] - 0.3)
        assert np.allclose(np.linalg.det(poses[:, :3, :3]), 1.0, atol=1e-6)
    assert np.array_equal(plan_trajectory(worlds[0], 40), plan_trajectory(worlds[0], 300)[:40])


def test_same_seed_gives_same_frames():
    a = [f for f in SyntheticSource(4, 3, config=SMALL_CFG)]
    b = [f for f in SyntheticSource(4, 3, config=SMALL_CFG)]
    assert len(a) == 3
    for fa, fb in zip(a, b):
        assert np.array_equal(fa.color, fb.color) and np.array_equal(fa.depth_m, fb.depth_m)
        assert np.array_equal(fa.T_world_cam_gt, fb.T_world_cam_gt)
    assert not np.array_equal(a[0].depth_m, a[1].depth_m)
    c = next(iter(SyntheticSource(9, 1, config=SMALL_CFG)))
    assert not np.array_equal(c.color, a[0].color)


def test_source_contract():
    src = SyntheticSource(1, 50, max_frames=2, config=SMALL_CFG)
    assert len(src) == 2 and src.kind == "synthetic" and src.has_gt_poses
    assert src.world.room_type == "living room"
    assert np.allclose(src.first_gt_pose(), next(iter(src)).T_world_cam_gt)
    assert src.describe()["frames"] == 2
    f = next(iter(src))
    assert f.color.dtype == np.uint8 and f.depth_m.dtype == np.float32 and f.color.shape == (120, 160, 3)


def test_rasterized_depth_matches_open3d_raycast(worlds):
    w = worlds[3]
    pose = plan_trajectory(w, 1)[0]
    exact = RenderConfig(intrinsics=SMALL.intrinsics, noise=False)
    ras = Renderer(w, exact).render(pose)
    ray = Renderer(w, RenderConfig(intrinsics=SMALL.intrinsics, noise=False, backend="raycast")).render(pose)
    both = (ras.depth_m > 0) & (ray.depth_m > 0)
    assert both.mean() > 0.99
    agree = np.abs(ras.depth_m - ray.depth_m)[both] < 1e-3
    assert agree.mean() > 0.99
    assert (ras.labels == ray.labels).mean() > 0.98


def test_depth_noise_statistics(worlds):
    w = worlds[1]
    pose = plan_trajectory(w, 1)[0]
    clean = Renderer(w, RenderConfig(noise=False)).render(pose)
    noisy = Renderer(w, RenderConfig()).render(pose, seed=1, index=0)
    valid = noisy.depth_m > 0
    assert 0.8 < valid.mean() < 0.995  # some dropout, grazing and edge losses, not too many
    both = valid & (clean.depth_m > 0)
    err = (noisy.depth_m - clean.depth_m)[both]
    z = clean.depth_m[both]
    sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2
    inliers = np.abs(err) < 5 * sigma + 0.02 * z  # leaves room for disparity steps
    assert inliers.mean() > 0.97
    assert abs(np.median(err)) < 0.003
    assert 0.3 * np.median(sigma) < np.median(np.abs(err[inliers])) < 3 * np.median(sigma) + 0.005
    assert np.all(noisy.depth_m <= 5.0 + 0.1)
    colour_diff = np.abs(noisy.color.astype(int) - clean.color.astype(int))
    assert colour_diff.mean() < 4 and noisy.color.std() > 20  # small colour noise, textured image


def test_write_sequence_round_trip(tmp_path):
    calls = []
    out = write_sequence(0, tmp_path / "seq", 4, progress=lambda i, n: calls.append((i, n)), config=SMALL_CFG)
    assert calls[-1] == (3, 4)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["format"] == "rgbd-synth" and meta["frames"] == 4 and meta["depth_scale"] == 1000
    assert meta["room_type"] == "bedroom" and meta["intrinsics"]["width"] == 160
    assert SynthFolderSource.detect(out) and not SynthFolderSource.detect(tmp_path)
    folder = SynthFolderSource(out)
    live = SyntheticSource(0, 4, config=SMALL_CFG)
    assert len(folder) == 4 and folder.has_gt_poses
    for a, b in zip(folder, live):
        assert np.array_equal(a.color, b.color)
        assert np.abs(a.depth_m - b.depth_m).max() <= 0.0005 + 1e-6
        assert np.array_equal(a.depth_m > 0, b.depth_m > 0)
        assert np.allclose(a.T_world_cam_gt, b.T_world_cam_gt, atol=1e-5)
        assert a.timestamp_s == pytest.approx(b.timestamp_s, abs=1e-6)
    assert len(SynthFolderSource(out, max_frames=2)) == 2


def test_gt_mesh_reads_back_with_plyfile_and_trimesh(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    trimesh = pytest.importorskip("trimesh")
    out = write_sequence(4, tmp_path / "seq", 1, config=SMALL_CFG)
    world = build_world(4)
    ply = plyfile.PlyData.read(str(out / "gt_mesh.ply"))
    v = ply["vertex"].data
    assert set(v.dtype.names) >= {"x", "y", "z", "red", "green", "blue", "alpha", "label"}
    assert len(v) == len(world.vertices) and len(ply["face"].data) == len(world.triangles)
    labels = np.asarray(v["label"])
    assert set(np.unique(labels).tolist()) <= ALL_IDS
    faces = np.stack(ply["face"].data["vertex_indices"])
    assert np.all(labels[faces] == labels[faces[:, :1]])  # per-vertex labels are exact
    mesh = trimesh.load(str(out / "gt_mesh.ply"), process=False)
    assert len(mesh.vertices) == len(world.vertices) and len(mesh.faces) == len(world.triangles)
    lo, hi = mesh.bounds  # the room box, and the space seen through an open doorway (at most 2.2 m out)
    assert np.all(lo <= 1e-4) and np.all(hi >= world.size_m - 1e-4)
    assert np.all(lo >= [-2.2, -2.2, -1e-4]) and np.all(hi <= world.size_m + [2.2, 2.2, 1e-4])


def test_corrupt_or_missing_files_raise_source_error(tmp_path):
    out = write_sequence(2, tmp_path / "seq", 3, config=SMALL_CFG)
    depth1 = out / "depth" / "000001.png"
    depth1.write_bytes(depth1.read_bytes()[:200])
    frames = iter(SynthFolderSource(out))
    next(frames)
    with pytest.raises(SourceError, match="000001.png"):
        next(frames)
    (out / "color" / "000002.png").unlink()
    with pytest.raises(SourceError, match="000002.png"):
        SynthFolderSource(out).frame(2)
    (out / "synth.json").write_text("{not json")
    with pytest.raises(SourceError, match="synth.json"):
        SynthFolderSource(out)
    (out / "synth.json").write_text(json.dumps({"format": "rgbd-synth", "frames": 3}))
    with pytest.raises(SourceError, match="synth.json"):
        SynthFolderSource(out)
