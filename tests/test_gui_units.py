"""GUI pieces that need no window: the orbit camera, display snapshots and their outbox, the simplified
display surface and the viewport's detail choice (frustum culling, triangle budget)."""
from __future__ import annotations

import numpy as np
import pytest

from app.camera import OrbitCamera, look_at, up_from_pose
from app.gl_scene import choose_detail, frustum_lines
from app.snapshots import DisplayOutbox, DisplaySnapshot, Event, FusionStatus, cluster_faces, pack_mesh
from fusion.classes import SCANNET20


def _grid_mesh(n: int = 20, step_m: float = 0.01):
    """A flat n x n vertex grid in the z = 0 plane (2 (n-1)^2 triangles)."""
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    pos = np.stack([ii.ravel() * step_m, jj.ravel() * step_m, np.zeros(n * n)], 1).astype(np.float32)
    idx = (ii[:-1, :-1] * n + jj[:-1, :-1]).ravel()
    faces = np.concatenate([np.stack([idx, idx + n, idx + 1], 1), np.stack([idx + 1, idx + n, idx + n + 1], 1)])
    return pos, faces.astype(np.int32)


def test_camera_fit_unproject_and_follow():
    cam = OrbitCamera()
    cam.fit(np.array([-1.0, -1.0, 0.0]), np.array([1.0, 1.0, 2.0]))
    np.testing.assert_allclose(cam.target, [0, 0, 1])
    w, h = 640, 480
    # the target projects to the centre and unprojects back at its own depth
    clip = cam.projection(w / h) @ cam.view() @ np.append(cam.target, 1.0)
    ndc = clip[:3] / clip[3]
    np.testing.assert_allclose(ndc[:2], 0, atol=1e-6)
    back = cam.unproject(w / 2 - 0.5, h / 2 - 0.5, (ndc[2] + 1) / 2, w, h)
    np.testing.assert_allclose(back, cam.target, atol=1e-4)
    before = cam.eye().copy()
    cam.orbit(50, 0)
    assert np.linalg.norm(cam.eye() - before) > 0.1
    assert np.linalg.norm(cam.eye() - cam.target) == pytest.approx(cam.distance_m)
    T = look_at(np.array([0.0, 0.0, 1.0]), np.array([2.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0]))
    T_world_cam = np.linalg.inv(T.astype(np.float64))
    T_world_cam[:3, 1:3] *= -1  # GL camera (y up, -z forward) -> OpenCV camera (y down, z forward)
    np.testing.assert_allclose(up_from_pose(T_world_cam), [0, 0, 1], atol=1e-6)
    cam.follow(T_world_cam)
    assert cam.eye()[0] < 0 and cam.eye()[2] > 1.0 and cam.target[0] > 0  # behind, above, looking ahead


def test_pack_mesh_label_colours_and_simplified_surface():
    pos, faces = _grid_mesh()
    labels = np.where(pos[:, 0] < 0.1, 5, 0).astype(np.uint16)
    mesh = pack_mesh(pos, np.full((len(pos), 3), 90, np.uint8), np.tile([0, 0, 1.0], (len(pos), 1)), faces,
                     labels, np.full(len(pos), 0.5), lod_cell_m=0.04)
    assert tuple(mesh.vertices["lab"][0, :3]) == SCANNET20[5][1]
    assert tuple(mesh.vertices["lab"][-1, :3]) == (0, 0, 0)
    assert mesh.vertices["lab"][0, 3] == 128 and tuple(mesh.vertices["rgb"][0]) == (90, 90, 90, 255)
    assert len(mesh.indices) == 3 * len(faces)
    assert mesh.indices.dtype == mesh.coarse_indices.dtype == np.uint32  # what the viewport draws
    coarse = mesh.coarse_indices.reshape(-1, 3)
    assert 0 < len(coarse) < len(faces) / 8
    assert coarse.max() < len(pos)  # indexes the same vertex buffer
    np.testing.assert_allclose(mesh.lo_m, [0, 0, 0]) and np.testing.assert_allclose(mesh.hi_m, [0.19, 0.19, 0])
    assert len(cluster_faces(pos, faces[:0], 0.04)) == 0


def test_outbox_keeps_newest_and_merges_chunk_changes():
    box = DisplayOutbox()
    pos, faces = _grid_mesh(4)
    m = pack_mesh(pos, np.zeros((len(pos), 3), np.uint8), np.zeros((len(pos), 3)), faces)
    assert box.put(DisplaySnapshot(1, FusionStatus(frames=1), chunks={(0, 0, 0): m}, events=(Event("info", "a"),)))
    assert not box.put(DisplaySnapshot(2, FusionStatus(frames=2), chunks={(1, 0, 0): m}, events=(Event("info", "b"),)))
    snap = box.take()
    assert snap.seq == 2 and snap.status.frames == 2
    assert set(snap.chunks) == {(0, 0, 0), (1, 0, 0)} and [e.text for e in snap.events] == ["a", "b"]
    assert box.take() is None and box.empty
    box.put(DisplaySnapshot(3, FusionStatus(), chunks={(0, 0, 0): m}))
    box.put(DisplaySnapshot(4, FusionStatus(), chunks={(2, 0, 0): m}, reset=True))
    snap = box.take()
    assert snap.reset and set(snap.chunks) == {(2, 0, 0)}  # changes before a reset are void


def test_detail_choice_culls_and_spends_the_budget_on_near_chunks():
    cam = OrbitCamera()
    cam.look_from(np.array([0.0, -5.0, 0.5]), np.array([0.0, 0.0, 0.5]))
    mvp = cam.projection(4 / 3) @ cam.view()
    lo = np.array([[0, 0, 0], [0, 3, 0], [0, 10, 0], [0, -20, 0]], float)  # the last is behind the eye
    hi = lo + 1.0
    tris = np.array([100, 100, 100, 100])
    visible, full = choose_detail(lo, hi, tris, mvp, cam.eye(), budget_tris=150)
    assert visible.tolist() == [True, True, True, False]
    assert full.tolist() == [True, False, False, False]
    visible, full = choose_detail(lo, hi, tris, mvp, cam.eye(), budget_tris=10**6)
    assert full.tolist() == [True, True, True, False]
    assert len(frustum_lines(np.eye(4), (100.0, 100.0, 50.0, 40.0, 100, 80), 0.3)) == 16


def test_simplified_surfaces_keep_their_seams():
    from fusion.meshing import border_vertices, pack_keys

    pos, faces = _grid_mesh(41, 0.01)  # 0.4 m square, split at x = 0.2 m into two "chunks" of 20 voxels
    cells = np.floor(pos / 0.01 + 1e-6).astype(np.int32)
    cells[:, 0] -= 1  # the vertex at x = 0.2 m lies in the cell with min corner 19: shared by both chunks
    keep = border_vertices(pack_keys(cells), np.zeros(3), 20)
    x, y = pos[:, 0], pos[:, 1]
    assert keep[np.isclose(x, 0.2)].all() and keep[np.isclose(y, 0.19)].all()  # cells 19 in x and in y
    assert not keep[np.isclose(x, 0.1) & ~np.isclose(y, 0.19)].any()
    centre = pos[faces].mean(1)[:, 0]
    seam_edges = []
    for f in (faces[centre < 0.2], faces[centre >= 0.2]):
        c = cluster_faces(pos, f, 0.04, np.abs(pos[:, 0] - 0.2) < 1e-6)
        assert len(c) < len(f) / 3
        e = np.sort(np.concatenate([c[:, [0, 1]], c[:, [1, 2]], c[:, [2, 0]]]), axis=1)
        seam_edges.append({tuple(x) for x in e if np.all(np.abs(pos[x, 0] - 0.2) < 1e-6)})
    assert seam_edges[0] == seam_edges[1] and len(seam_edges[0]) == 40  # both sides keep the whole seam


def test_fit_frames_a_room_box_tightly_from_any_direction():
    lo, hi = np.array([-2.5, -2.0, 0.0]), np.array([2.5, 2.0, 2.5])
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    for yaw, pitch, aspect in ((-60.0, 35.0, 1.5), (0.0, 80.0, 1.0), (130.0, 10.0, 16 / 9)):
        cam = OrbitCamera()
        cam.yaw_deg, cam.pitch_deg = yaw, pitch
        cam.fit(lo, hi, aspect=aspect)
        clip = (cam.projection(aspect) @ cam.view() @ np.c_[corners, np.ones(8)].T).T
        ndc = clip[:, :2] / clip[:, 3:4]
        assert np.all(clip[:, 3] > 0) and np.all(np.abs(ndc) <= 1.0)  # every corner in view
        extent = np.max(np.abs(ndc), axis=0)
        assert max(extent) == pytest.approx(1 / cam.config.fit_margin, rel=1e-6)  # and it fills the view
