"""GUI pieces that need no window: the orbit camera, display snapshots and their outbox, the simplified
display surface and the viewport's detail choice (frustum culling, triangle budget)."""
from __future__ import annotations

import numpy as np
import pytest

from app.camera import OrbitCamera, look_at, up_from_pose
from app.gl_scene import adapt_budgets, choose_detail, frustum_lines
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
                     labels, np.full(len(pos), 0.5),
                     lod_cells=tuple(np.floor(pos / c).astype(int) for c in (0.04, 0.08)))
    assert tuple(mesh.vertices["lab"][0, :3]) == SCANNET20[5][1]
    assert tuple(mesh.vertices["lab"][-1, :3]) == (0, 0, 0)
    assert mesh.vertices["lab"][0, 3] == 128 and tuple(mesh.vertices["rgb"][0]) == (90, 90, 90, 255)
    assert len(mesh.indices) == 3 * len(faces)
    assert all(i.dtype == np.uint32 for i in (mesh.indices, *mesh.lod_indices))  # what the viewport draws
    coarse, far = (i.reshape(-1, 3) for i in mesh.lod_indices)
    assert 0 < len(coarse) < len(faces) / 8 and 0 < len(far) < len(coarse) / 3
    assert coarse.max() < len(pos) and far.max() < len(pos)  # they index the same vertex buffer
    np.testing.assert_allclose(mesh.lo_m, [0, 0, 0]) and np.testing.assert_allclose(mesh.hi_m, [0.19, 0.19, 0])
    assert len(cluster_faces(np.floor(pos / 0.04).astype(int), faces[:0])) == 0


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
    tris = np.array([[100, 30, 10]] * 4)  # full, simplified, simplest
    visible, level = choose_detail(lo, hi, tris, mvp, cam.eye(), [150, 10**6])
    assert visible.tolist() == [True, True, True, False]
    assert level[visible].tolist() == [0, 1, 1]
    visible, level = choose_detail(lo, hi, tris, mvp, cam.eye(), [0, 40])
    assert level[visible].tolist() == [1, 2, 2]  # nothing in full; the nearest simplified within 40 triangles
    visible, level = choose_detail(lo, hi, tris, mvp, cam.eye(), [10**6, 0])
    assert level[visible].tolist() == [0, 0, 0]
    assert len(frustum_lines(np.eye(4), (100.0, 100.0, 50.0, 40.0, 100, 80), 0.3)) == 16


def test_slow_paints_give_up_full_detail_first_then_simplified_detail():
    drawn = lambda chunks, tris: {"visible": sum(chunks), "level_chunks": chunks, "level_triangles": tris}  # noqa: E731
    rng = (0, 10**7)
    assert adapt_budgets([1000, 10**7], drawn([2, 3, 0], [800, 900, 0]), 0.5, rng) == [400, 10**7]
    assert adapt_budgets([0, 10**7], drawn([0, 5, 0], [0, 2000, 0]), 0.5, rng) == [0, 1000]  # full detail gone
    assert adapt_budgets([0, 1000], drawn([0, 0, 5], [0, 0, 300]), 0.5, rng) == [0, 1000]  # nothing left to give
    assert adapt_budgets([0, 1000], drawn([0, 2, 3], [0, 900, 300]), 1.5, rng) == [0, 1500]  # room: simplified first
    assert adapt_budgets([0, 1500], drawn([0, 5, 0], [0, 1400, 0]), 1.5, rng) == [1500, 1500]  # then full detail
    assert adapt_budgets([0, 1500], drawn([0, 5, 0], [0, 1400, 0]), 1.0, rng) == [0, 1500]  # on target: kept


def test_simplified_surfaces_keep_their_seams():
    from fusion.meshing import border_axes, border_vertices, pack_keys

    pos, faces = _grid_mesh(41, 0.01)  # 0.4 m square in four "chunks" of 20 x 20 voxels, split at x, y = 0.2 m
    cells = np.floor(pos / 0.01 + 1e-6).astype(np.int32) - [1, 1, 0]  # vertices at 0.2 m: cells 19, shared
    keys, x, y = pack_keys(cells), pos[:, 0], pos[:, 1]
    border = border_vertices(keys, np.zeros(3), 20)
    assert border[np.isclose(x, 0.2)].all() and border[np.isclose(y, 0.2)].all()
    assert not border[np.isclose(x, 0.1) & np.isclose(y, 0.1)].any()
    centre = pos[faces].mean(1)
    quadrant = (centre[:, 0] >= 0.2) + 2 * (centre[:, 1] >= 0.2)
    users = np.zeros(len(pos), int)
    for q in range(4):
        users[np.unique(faces[quadrant == q])] += 1
    simplified, rng = set(), np.random.default_rng(0)
    for q in range(4):
        f = faces[quadrant == q]
        used = rng.permutation(np.unique(f))  # each chunk has its own vertex array, in its own order
        local = np.full(len(pos), -1)
        local[used] = np.arange(len(used))
        seam = border_axes(keys[used], np.array([q & 1, q >> 1, 0]) * 20, 20) * (users[used] > 1)
        c = cluster_faces(cells[used] // 4, local[f], seam, keys[used])
        assert len(c) < len(f) / 8
        simplified |= {tuple(sorted(keys[used][t])) for t in c}
    # simplified on their own, the four chunks give the triangles of the whole square simplified at once
    # (shared vertices clustered with those on the same chunk faces: across x, across y, both): no crack
    layer = (cells + 1) % 20 == 0
    seam_all = (layer[:, 0] + 2 * layer[:, 1]) * (users > 1)
    whole = {tuple(sorted(keys[t])) for t in cluster_faces(cells // 4, faces, seam_all, keys)}
    assert simplified == whole
    on_seam = np.unique([v for t in simplified for v in t if seam_all[np.searchsorted(keys, v)]])
    assert len(on_seam) < 81 / 3  # and the seams are simplified too


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
