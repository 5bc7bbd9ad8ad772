"""Exports read back by independent libraries (plyfile, trimesh, open3d), and the `export` command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import trimesh
from plyfile import PlyData
from scipy.spatial import cKDTree

from fusion.classes import palette_lut
from storage.export import ExportConfig, LabeledMesh, export_mesh, face_areas_m2, face_labels
from fusion.pipeline import FusionPipeline, PipelineConfig
from storage.session import save_session
from fusion.trajectory import read_tum
from fusion.volume import VolumeConfig
from tests.scenes import FLOOR_Y_M, SMALL, SPHERE_CENTER, SPHERE_RADIUS_M, WALL_Z_M, orbit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scan():
    """Fused analytic scene with labels from geometry: big sphere = chair, wall, floor, rest unlabeled."""
    frames = orbit(8, SMALL, step_deg=3.0)
    p = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu")))
    res = [p.process(f, T_start=f.T_world_cam_gt) for f in frames]
    mesh = p.final_mesh()
    xyz = mesh.positions_m
    labels = np.zeros(len(xyz), np.uint16)
    labels[np.abs(xyz[:, 2] - WALL_Z_M) < 0.04] = 1
    labels[np.abs(xyz[:, 1] - FLOOR_Y_M) < 0.04] = 2
    labels[np.linalg.norm(xyz - SPHERE_CENTER, axis=1) < SPHERE_RADIUS_M + 0.04] = 5
    stamps, poses = [r.timestamp_s for r in res], np.array([r.T_world_cam for r in res])
    yield p, LabeledMesh.from_mesh(mesh, labels), stamps, poses
    p.close()


def test_synthetic_labels_are_meaningful(scan):
    _, m, _, _ = scan
    counts = {c: int(np.count_nonzero(m.labels == c)) for c in (0, 1, 2, 5)}
    assert all(n > 100 for n in counts.values()), counts


def test_ply_pair_points_legend_trajectory(scan, tmp_path):
    _, m, stamps, poses = scan
    written = export_mesh(tmp_path / "scan.ply", m, stamps, poses)
    assert {p.name for p in written} == {"scan.ply", "scan_labels.ply", "scan_points.ply", "labels.json",
                                        "scan_trajectory.txt"}
    v = PlyData.read(str(tmp_path / "scan.ply"))["vertex"]
    assert [p.name for p in v.properties] == ["x", "y", "z", "red", "green", "blue", "alpha", "label"]
    assert np.array_equal(v["label"], m.labels)
    assert np.array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), m.colors)
    lv = PlyData.read(str(tmp_path / "scan_labels.ply"))["vertex"]
    rgb = np.stack([lv["red"], lv["green"], lv["blue"]], 1)
    assert np.array_equal(rgb, palette_lut()[m.labels]) and tuple(rgb[m.labels == 5][0]) == (188, 189, 34)
    om = o3d.io.read_triangle_mesh(str(tmp_path / "scan_labels.ply"))
    assert len(om.vertices) == len(m.positions_m) and len(om.triangles) == len(m.faces)
    pc = o3d.io.read_point_cloud(str(tmp_path / "scan_points.ply"))
    assert len(pc.points) == len(m.positions_m) and pc.has_colors()
    assert PlyData.read(str(tmp_path / "scan_points.ply"))["face"].count == 0
    stamps_r, poses_r = read_tum(tmp_path / "scan_trajectory.txt")
    assert np.allclose(stamps_r, stamps) and np.allclose(poses_r, poses, atol=1e-6)


def test_legend_counts_and_areas(scan, tmp_path):
    _, m, _, _ = scan
    export_mesh(tmp_path / "scan.ply", m)
    doc = json.loads((tmp_path / "labels.json").read_text())
    by_id = {c["id"]: c for c in doc["classes"]}
    assert set(by_id) == {0, 1, 2, 5}
    assert by_id[5]["name"] == "chair" and by_id[5]["color"] == [188, 189, 34]
    for c, e in by_id.items():
        assert e["vertices"] == int(np.count_nonzero(m.labels == c))
    total = face_areas_m2(m.positions_m, m.faces).sum()
    assert sum(e["area_m2"] for e in by_id.values()) == pytest.approx(total, rel=1e-4)
    # the part of the sphere seen from the front: less than its whole surface, more than a tenth of it
    assert 0.1 * 4 * np.pi * SPHERE_RADIUS_M ** 2 < by_id[5]["area_m2"] < 4 * np.pi * SPHERE_RADIUS_M ** 2


def test_glb_read_back_with_trimesh(scan, tmp_path):
    _, m, _, _ = scan
    export_mesh(tmp_path / "scan.glb", m)
    data = (tmp_path / "scan.glb").read_bytes()
    assert data[:4] == b"glTF" and int.from_bytes(data[8:12], "little") == len(data)
    scene = trimesh.load(tmp_path / "scan.glb", process=False)
    (g,) = scene.geometry.values()
    assert len(g.vertices) == len(m.positions_m) and len(g.faces) == len(m.faces)
    assert np.allclose(g.vertices, m.positions_m, atol=1e-6)
    assert np.array_equal(g.visual.vertex_colors[:, :3], m.colors)
    assert np.array_equal(np.asarray(g.vertex_attributes["_LABEL"]).ravel().astype(int), m.labels)


def test_glb_one_mesh_per_class(scan, tmp_path):
    _, m, _, _ = scan
    export_mesh(tmp_path / "scan.glb", m, config=ExportConfig(glb_split_classes=True))
    scene = trimesh.load(tmp_path / "scan.glb", process=False)
    fl = face_labels(m.faces, m.labels)
    assert len(scene.geometry) == len(np.unique(fl))
    chair = next(g for name, g in scene.geometry.items() if name.startswith("chair"))
    assert len(chair.faces) == int(np.count_nonzero(fl == 5))
    assert sum(len(g.faces) for g in scene.geometry.values()) == len(m.faces)


def test_obj_material_groups(scan, tmp_path):
    _, m, _, _ = scan
    export_mesh(tmp_path / "scan.obj", m)
    text = (tmp_path / "scan.obj").read_text().splitlines()
    groups = [ln.split()[1] for ln in text if ln.startswith("usemtl")]
    assert groups == ["label_0_unlabeled", "label_1_wall", "label_2_floor", "label_5_chair"]
    assert "Kd 0.7373 0.7412 0.1333" in (tmp_path / "scan.mtl").read_text()  # chair (188, 189, 34)
    om = o3d.io.read_triangle_mesh(str(tmp_path / "scan.obj"))
    assert len(om.triangles) == len(m.faces) and om.has_vertex_colors()
    scene = trimesh.load(tmp_path / "scan.obj", process=False, group_material=True)
    fl = face_labels(m.faces, m.labels)
    assert {n: len(g.faces) for n, g in scene.geometry.items()} == {
        n: int(np.count_nonzero(fl == c)) for n, c in
        (("label_0_unlabeled", 0), ("label_1_wall", 1), ("label_2_floor", 2), ("label_5_chair", 5))}
    chair = scene.geometry["label_5_chair"]
    dist, idx = cKDTree(m.positions_m).query(chair.vertices)
    assert dist.max() < 1e-5 and (m.labels[idx] == 5).mean() > 0.6
    dist, idx = cKDTree(m.positions_m).query(np.asarray(om.vertices))
    assert dist.max() < 1e-5
    assert np.abs(m.colors[idx] / 255.0 - np.asarray(om.vertex_colors)).max() < 1e-3


# --- the command -----------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def assert_clean_error(proc, *words):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def session_file(scan, tmp_path_factory):
    p, _, stamps, poses = scan
    path = tmp_path_factory.mktemp("sess") / "scan.session"
    save_session(path, p, stamps, poses)
    return path


def test_cli_export_ply_and_glb(scan, session_file, tmp_path):
    _, m, _, _ = scan
    proc = run_cli("export", session_file, "--out", tmp_path / "room.ply")
    assert proc.returncode == 0, proc.stderr
    assert "labels are all 0" in proc.stderr
    v = PlyData.read(str(tmp_path / "room.ply"))["vertex"]
    assert len(v.data) == len(m.positions_m) and not v["label"].any()
    assert (tmp_path / "labels.json").exists() and (tmp_path / "room_trajectory.txt").exists()
    proc = run_cli("export", session_file, "--out", tmp_path / "room.glb")
    assert proc.returncode == 0, proc.stderr
    assert len(trimesh.load(tmp_path / "room.glb", force="mesh", process=False).vertices) == len(m.positions_m)


def test_cli_export_bad_input(session_file, tmp_path):
    keep = tmp_path / "room.ply"
    keep.write_bytes(b"previous")
    assert_clean_error(run_cli("export", tmp_path / "nope.session", "--out", keep), "no such session")
    bad = tmp_path / "bad.session"
    bad.write_bytes(session_file.read_bytes()[:1000])
    assert_clean_error(run_cli("export", bad, "--out", keep), "corrupted")
    assert_clean_error(run_cli("export", session_file, "--out", tmp_path / "room.stl"), "unknown format")
    assert_clean_error(run_cli("export", session_file, "--out", tmp_path / "no" / "room.ply"), "does not exist")
    assert keep.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.session", "room.ply"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_cli_export_read_only_folder(session_file, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_clean_error(run_cli("export", session_file, "--out", ro / "room.ply"), "not writable")
    finally:
        ro.chmod(0o755)


def test_unwritable_folder_is_refused_before_writing(scan, tmp_path, monkeypatch):
    """Root ignores folder permissions, so the permission answer is simulated."""
    _, m, _, _ = scan
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    from fusion.errors import UserError

    with pytest.raises(UserError, match="not writable"):
        export_mesh(tmp_path / "scan.ply", m)
    assert list(tmp_path.iterdir()) == []


def test_obj_text_kernels_write_what_savetxt_writes():
    import io

    from storage.objtext import face_lines, vertex_lines

    rng = np.random.default_rng(3)
    xyz = rng.normal(0, 4, (5000, 3))
    rgb = rng.integers(0, 256, (5000, 3)) / 255.0
    faces = rng.integers(0, 5000, (7000, 3))
    ref = io.BytesIO()
    np.savetxt(ref, np.concatenate([xyz, rgb], 1), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    np.savetxt(ref, faces + 1, fmt="f %d %d %d")
    ours = vertex_lines(xyz, rgb) + face_lines(faces)
    assert ours == ref.getvalue()  # no exact decimal ties among random doubles
    edge = vertex_lines(np.array([[-1e-9, 2.0000005, -3.9999999]]), np.array([[0.0, 1.0, 0.5]]))
    assert edge == b"v 0.000000 2.000001 -4.000000 0.0000 1.0000 0.5000\n"
    with pytest.raises(ValueError):
        vertex_lines(np.array([[np.nan, 0, 0]]), np.zeros((1, 3)))
