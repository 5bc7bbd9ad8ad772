"""Volume integration, touched-block reporting, capacity limits and incremental meshing."""
from __future__ import annotations

import logging

import numpy as np
import open3d as o3d
import pytest

from fusion.meshing import ChunkMesher, MeshConfig, border_vertices, pack_keys, unpack_keys
from fusion.volume import TsdfVolume, VolumeConfig
from tests.scenes import (FLOOR_Y_M, SMALL, SMALL_SPHERE_CENTER, SMALL_SPHERE_RADIUS_M, SPHERE_CENTER,
                          SPHERE_RADIUS_M, VGA, WALL_Z_M, orbit)

CPU = dict(device="cpu")


def _fused(frames, vcfg=VolumeConfig(voxel_size_m=0.02, block_resolution=8, **CPU)):
    vol = TsdfVolume(vcfg)
    touched = [vol.integrate(f, f.T_world_cam_gt) for f in frames]
    return vol, touched


def _face_keys(mesh):
    """Faces as sorted triples of global vertex keys (order-free identity of a face)."""
    return {tuple(sorted(t)) for t in mesh.vertex_keys[mesh.faces].tolist()}


def test_touched_blocks_cover_every_changed_block():
    frames = orbit(3, SMALL)
    vol, _ = _fused(frames[:2])
    keys_before = {tuple(k) for k in vol.active_keys()}
    w_before = {tuple(k): vol.voxel_arrays(vol.lookup(k[None]))[1].copy() for k in vol.active_keys()}
    touched = {tuple(k) for k in vol.integrate(frames[2], frames[2].T_world_cam_gt)}
    for k in vol.active_keys():
        k = tuple(k)
        w_after = vol.voxel_arrays(vol.lookup(np.array([k])))[1]
        changed = k not in keys_before or not np.array_equal(w_before[k], w_after)
        if changed:
            assert k in touched, f"block {k} changed but was not reported"


def test_mesh_lies_on_the_surfaces():
    vol, touched = _fused(orbit(6, VGA, step_deg=6), VolumeConfig(voxel_size_m=0.01, **CPU))
    mesher = ChunkMesher(vol)
    for t in touched:
        mesher.update(t)
    mesh = mesher.full_mesh()
    mesher.close()
    assert len(mesh.faces) > 1000
    p = mesh.positions_m
    d_sphere = np.abs(np.linalg.norm(p - SPHERE_CENTER, axis=1) - SPHERE_RADIUS_M)
    d_small = np.abs(np.linalg.norm(p - SMALL_SPHERE_CENTER, axis=1) - SMALL_SPHERE_RADIUS_M)
    d_wall = np.minimum(np.abs(p[:, 2] - WALL_Z_M), np.abs(p[:, 1] - FLOOR_Y_M))
    err = np.min([d_sphere, d_small, d_wall], axis=0)
    assert np.median(err) < 0.002 and np.percentile(err, 95) < 0.006
    # normals point out of the surface, towards the camera side (positive TSDF)
    on_sphere = (d_sphere < d_wall) & (d_sphere < d_small)
    outward = (p[on_sphere] - SPHERE_CENTER) / SPHERE_RADIUS_M
    dots = np.sum(outward * mesh.normals[on_sphere], 1)
    assert np.median(dots) > 0.95 and np.mean(dots > 0.7) > 0.9  # grazing-angle silhouettes are weaker
    # faces wind the same way as the normals
    tri = p[mesh.faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.mean(np.sum(fn * mesh.normals[mesh.faces[:, 0]], 1) > 0) > 0.95


def test_incremental_mesh_equals_full_remesh_without_duplicates():
    frames = orbit(8, SMALL, step_deg=5)
    vol = TsdfVolume(VolumeConfig(voxel_size_m=0.02, block_resolution=8, **CPU))
    inc = ChunkMesher(vol, MeshConfig(threads=2, max_blocks_per_update=0, min_interval_updates=3))
    for f in frames:
        inc.update(vol.integrate(f, f.T_world_cam_gt))
    full = ChunkMesher(vol, MeshConfig(threads=1))
    full.update(vol.active_keys())
    inc.flush()
    a, b = inc.full_mesh(), full.full_mesh()
    inc.close(), full.close()
    assert _face_keys(a) == _face_keys(b)
    assert len(_face_keys(a)) == len(a.faces), "duplicate faces in the union of block meshes"
    assert len(np.unique(a.vertex_keys)) == len(a.vertex_keys)


def test_chunk_meshes_union_is_the_whole_mesh():
    vol, touched = _fused(orbit(4, SMALL))
    mesher = ChunkMesher(vol, MeshConfig(chunk_blocks=2, threads=1))
    chunks = set()
    for t in touched:
        chunks |= mesher.update(t)
    whole = mesher.full_mesh()
    union = set()
    for c in chunks:
        union |= _face_keys(mesher.chunk_mesh(c))
    assert union == _face_keys(whole)


def test_shared_vertices_are_the_ones_two_chunk_meshes_use():
    vol, touched = _fused(orbit(4, SMALL))
    mesher = ChunkMesher(vol, MeshConfig(chunk_blocks=2, chunk_offset_blocks=1, threads=1))
    for t in touched:
        mesher.update(t)
    mesher.flush()
    meshes = {c: mesher.chunk_mesh(c) for c in mesher.chunks}
    owners = {}
    for c, m in meshes.items():
        for k in m.vertex_keys.tolist():
            owners.setdefault(k, set()).add(c)
    lo, hi = mesher.chunk_bounds_m(list(meshes))
    assert np.allclose(hi - lo, 2 * vol.config.block_size_m)
    assert np.allclose(lo % (2 * vol.config.block_size_m), vol.config.block_size_m)  # offset by one block
    n_shared = n_border_only = 0
    r = vol.config.block_resolution
    for c, m in meshes.items():
        shared = mesher.shared_vertices(c, m.vertex_keys)
        expected = np.array([len(owners[k]) > 1 for k in m.vertex_keys.tolist()])
        assert np.array_equal(shared, expected)
        n_shared += shared.sum()
        n_border_only += (border_vertices(m.vertex_keys, mesher.chunk_first_block(c) * r, 2 * r) & ~shared).sum()
        keys = mesher.chunk_of_blocks(unpack_keys(m.vertex_keys) // r)
        assert np.all(np.abs(keys - np.asarray(c)) <= 1)  # a chunk's vertices lie in it or on its border
    assert 0 < n_shared < sum(len(m.vertex_keys) for m in meshes.values()) / 4
    assert n_border_only > 0  # on a chunk's border, but only that chunk's faces use them: simplified


def test_mesh_matches_open3d_extraction():
    vol, touched = _fused(orbit(4, VGA, step_deg=8), VolumeConfig(voxel_size_m=0.01, **CPU))
    mesher = ChunkMesher(vol, MeshConfig(threads=1))
    mesher.update(vol.active_keys())
    ours = mesher.full_mesh()
    ref = vol.grid.extract_triangle_mesh(weight_threshold=1.0)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(ref)
    dist = scene.compute_distance(o3d.core.Tensor(ours.positions_m)).numpy()
    assert np.median(dist) < 0.001


def test_block_capacity_stops_growth_with_one_warning(caplog):
    frames = orbit(10, SMALL, step_deg=8)
    vol = TsdfVolume(VolumeConfig(voxel_size_m=0.02, block_resolution=8, max_blocks=60, initial_blocks=16, **CPU))
    with caplog.at_level(logging.WARNING):
        for f in frames:
            vol.integrate(f, f.T_world_cam_gt)
    assert vol.n_blocks <= 60 and vol.is_full
    assert sum("volume is full" in r.message for r in caplog.records) == 1


def test_volume_grows_past_initial_capacity():
    vol, _ = _fused(orbit(5, SMALL), VolumeConfig(voxel_size_m=0.02, block_resolution=8, initial_blocks=8, **CPU))
    assert vol.n_blocks > 8 and not vol.is_full


def test_fusing_a_frame_again_into_a_map_just_its_size_does_not_grow_it():
    """Open3D grows a hash map (holding the GIL, copying every block: seconds at 1 cm) when its size plus the count
    of blocks handed in passes its capacity; only blocks not yet allocated are handed in."""
    frame = orbit(1, SMALL)[0]
    n = _fused([frame])[0].n_blocks
    tight = TsdfVolume(VolumeConfig(voxel_size_m=0.02, block_resolution=8, initial_blocks=n, **CPU))
    for _ in range(2):
        tight.integrate(frame, frame.T_world_cam_gt)
    assert tight.n_blocks == n and int(tight.grid.hashmap().capacity()) == n


def test_the_default_start_is_a_rooms_worth_of_blocks_at_any_block_size():
    room = VolumeConfig().start_blocks
    assert room == VolumeConfig(voxel_size_m=0.02, block_resolution=8).start_blocks
    assert VolumeConfig(voxel_size_m=0.02).start_blocks == room // 4
    assert VolumeConfig(max_blocks=1000).start_blocks == 1000
    assert VolumeConfig(initial_blocks=10).start_blocks == 10


def test_pack_keys_is_unique_for_negative_coordinates():
    keys = np.array([[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-5, 7, -9], [5, -7, 9]])
    assert len(np.unique(pack_keys(keys))) == len(keys)


def test_cuda_request_without_gpu_is_a_user_error():
    import open3d.core as o3c

    from fusion.errors import UserError
    from fusion.volume import resolve_device

    if o3c.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError):
        resolve_device("cuda")


def test_mesh_colours_are_the_observed_colours():
    frames = orbit(3, VGA, step_deg=5)
    vol, touched = _fused(frames, VolumeConfig(voxel_size_m=0.01, **CPU))
    _, weight, color = vol.voxel_arrays()
    observed = color[weight > 0]
    assert observed.max() <= 255.0 and observed.max() > 150
    mesher = ChunkMesher(vol, MeshConfig(threads=1))
    mesher.update(vol.active_keys())
    mesh = mesher.full_mesh()
    mesher.close()
    on_big_sphere = np.abs(np.linalg.norm(mesh.positions_m - SPHERE_CENTER, axis=1) - SPHERE_RADIUS_M) < 0.004
    on_big_sphere &= mesh.positions_m[:, 2] < SPHERE_CENTER[2] - 0.1  # facing the cameras, away from edges
    assert np.abs(np.median(mesh.colors[on_big_sphere].astype(int), 0) - (200, 60, 60)).max() <= 3


def test_budgeted_updates_converge_to_the_full_mesh_after_flush():
    frames = orbit(6, SMALL, step_deg=5)
    vol = TsdfVolume(VolumeConfig(voxel_size_m=0.02, block_resolution=8, **CPU))
    budgeted = ChunkMesher(vol, MeshConfig(threads=1, max_blocks_per_update=5, min_interval_updates=2))
    calls = []
    original = budgeted._mesh
    budgeted._mesh = lambda keys: calls.append(len(keys)) or original(keys)
    for f in frames:
        budgeted.update(vol.integrate(f, f.T_world_cam_gt))
    assert max(calls) <= 5 and budgeted.pending_blocks > 0
    budgeted.flush()
    assert budgeted.pending_blocks == 0
    full = ChunkMesher(vol, MeshConfig(threads=1, max_blocks_per_update=0))
    full.update(vol.active_keys())
    assert _face_keys(budgeted.full_mesh()) == _face_keys(full.full_mesh())
    budgeted.close(), full.close()


def test_a_block_being_scanned_is_remeshed_once_per_interval():
    frames = orbit(2, SMALL)
    vol = TsdfVolume(VolumeConfig(voxel_size_m=0.02, block_resolution=8, **CPU))
    mesher = ChunkMesher(vol, MeshConfig(threads=1, min_interval_updates=4))
    meshed = []
    original = mesher._mesh
    mesher._mesh = lambda keys: meshed.append({tuple(k) for k in keys}) or original(keys)
    touched = vol.integrate(frames[0], frames[0].T_world_cam_gt)
    for _ in range(8):
        vol.integrate(frames[1], frames[1].T_world_cam_gt)
        mesher.update(touched)
    key = tuple(touched[0])
    assert sum(key in m for m in meshed) == 2  # updates 1 and 5
    assert mesher.pending_blocks > 0
    mesher.flush()
    assert mesher.pending_blocks == 0
    mesher.close()


def test_block_meshes_hold_only_their_own_memory():
    """A block's mesh owns its arrays: a view into its update's batch would keep the whole batch (and its
    spare capacity) alive for as long as any one block of it is not re-meshed, so memory would grow
    with how often a long scan re-meshes, not with the scene."""
    frames = orbit(4, SMALL, step_deg=5)
    vol = TsdfVolume(VolumeConfig(voxel_size_m=0.02, block_resolution=8, **CPU))
    mesher = ChunkMesher(vol, MeshConfig(threads=2, max_blocks_per_update=7, min_interval_updates=1))
    for f in frames:
        mesher.update(vol.integrate(f, f.T_world_cam_gt))
    mesher.flush()
    meshes = [m for blocks in mesher.chunks.values() for m in blocks.values()]
    assert len(meshes) > 20
    for m in meshes:
        for a in (m.positions_m, m.colors, m.normals, m.faces, m.vertex_keys):
            assert a.base is None or a.base.nbytes == a.nbytes
    mesher.close()


def test_gpu_style_host_voxels_renumber_rows_to_the_same_voxels():
    # the GPU branch (copy only the blocks used, renumber) run on the CPU device: same voxels, -1 kept
    vol, touched = _fused(orbit(2, SMALL))
    bufs = vol.lookup(np.concatenate([touched[0][:7], [[999, 999, 999]], touched[0][:3]]))
    views, same = vol.host_voxels(bufs)
    vol.on_cpu = False
    gathered, rows = vol.host_voxels(bufs)
    assert same is bufs and rows.shape == bufs.shape and rows[7] == -1 and len(gathered[0]) == 7
    for whole, part in zip(views, gathered):
        assert np.array_equal(part[rows[bufs >= 0]], whole[bufs[bufs >= 0]])


def test_gpu_style_meshing_equals_cpu_meshing():
    vol, touched = _fused(orbit(3, SMALL))
    blocks = np.unique(np.concatenate(touched), axis=0)
    late = blocks[np.argsort(vol.lookup(blocks))[-20:]]  # the last buffer rows: renumbering must move them
    cpu = ChunkMesher(vol, MeshConfig(threads=1))
    cpu.update(late)
    vol.on_cpu = False
    gpu = ChunkMesher(vol, MeshConfig(threads=1))
    gpu.update(late)
    assert _face_keys(gpu.full_mesh()) == _face_keys(cpu.full_mesh()) and len(cpu.full_mesh().faces)


def test_a_standing_camera_is_tracked_but_integrated_only_every_few_frames():
    """With still_voxels, frames within a voxel of the last integrated pose are tracked, not integrated
    (result.still), at most still_max_frames - 1 in a row; a frame that moved is integrated again."""
    import dataclasses

    from fusion.pipeline import FusionPipeline, PipelineConfig

    base = orbit(2, SMALL, step_deg=2.0)
    frames = [dataclasses.replace(base[0], index=i, timestamp_s=i / 30) for i in range(8)]
    frames.append(dataclasses.replace(base[1], index=8, timestamp_s=8 / 30))
    cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, **CPU), still_voxels=1.0, still_max_frames=4)
    pipe = FusionPipeline(cfg)
    try:
        results = [pipe.process(f, T_start=frames[0].T_world_cam_gt) for f in frames]
    finally:
        pipe.close()
    assert [r.integrated for r in results] == [True, False, False, False, True, False, False, False, True]
    assert all(r.still and r.reason == "still" and r.T_world_cam is not None for r in results if not r.integrated)
    assert pipe.volume.frames_integrated == 3 and pipe.tracker.failures == 0
    np.testing.assert_allclose(results[3].T_world_cam, frames[0].T_world_cam_gt, atol=1e-3)
