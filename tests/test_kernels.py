"""Our numba kernels checked against Open3D's: the model raycaster (with its empty-space skipping and
half-resolution guide) against VoxelBlockGrid.ray_cast on the same volume."""
from __future__ import annotations

import numpy as np
import open3d.core as o3c
import pytest

from fusion.raycast import depth_ranges
from fusion.volume import RAY_TILE_PX, TsdfVolume, VolumeConfig, integration_matrix
from tests.scenes import SMALL, orbit

VOXEL_M = 0.01


@pytest.fixture(scope="module")
def fused():
    frames = orbit(10, SMALL.scaled(2.0), step_deg=3.0)
    vol = TsdfVolume(VolumeConfig(voxel_size_m=VOXEL_M, device="cpu"))
    for f in frames:
        vol.integrate(f, f.T_world_cam_gt)
    return vol, frames


def open3d_depth(vol: TsdfVolume, T_world_cam, intr) -> np.ndarray:
    grid = vol.grid
    keys = grid.hashmap().key_tensor()[grid.hashmap().active_buf_indices().to(o3c.int64)]
    out = grid.ray_cast(keys, o3c.Tensor(integration_matrix(intr)), o3c.Tensor(np.linalg.inv(T_world_cam)),
                        intr.width, intr.height, ["depth"], 1.0, vol.config.depth_min_m, vol.config.depth_max_m,
                        1.0, vol.config.trunc_voxels, 8)
    return out["depth"].numpy()[..., 0]


def test_raycast_agrees_with_open3d_ray_cast(fused):
    vol, frames = fused
    T, intr = frames[5].T_world_cam_gt, frames[5].intrinsics
    ours, theirs = vol.render_depth(T, intr), open3d_depth(vol, T, intr)
    both = (ours > 0) & (theirs > 0)
    assert both.sum() > 0.5 * np.count_nonzero(theirs)
    assert np.count_nonzero(ours > 0) == pytest.approx(np.count_nonzero(theirs > 0), rel=0.03)
    diff = np.abs(ours[both] - theirs[both])
    assert np.median(diff) < 1.0 * VOXEL_M     # Open3D reads the nearest voxel: about half a voxel off
    assert np.mean(diff < 3 * VOXEL_M) > 0.9   # grazing rays (sphere silhouettes) differ more


def test_guided_raycast_equals_the_full_march(fused):
    vol, frames = fused
    T, intr = frames[3].T_world_cam_gt, frames[3].intrinsics
    none = np.zeros((0, 0), np.float32)
    full = vol._raycast(T, intr, 1.0, none)
    guided = vol._raycast(T, intr, 1.0, vol._raycast(T, intr.scaled(0.5), 1.0, none))
    assert np.count_nonzero(full) > 0.2 * full.size
    diff = np.abs(full - guided)   # the crossing is interpolated between other samples: sub-millimetre
    assert np.count_nonzero(diff > 1e-3) < 0.02 * full.size
    assert np.count_nonzero(diff > VOXEL_M) < 0.003 * full.size   # a silhouette seen by one ray, not its neighbour


def test_depth_ranges_contain_every_surface_seen(fused):
    vol, frames = fused
    T, intr = frames[7].T_world_cam_gt, frames[7].intrinsics
    cfg = vol.config
    depth = vol._raycast(T, intr, 1.0, np.zeros((0, 0), np.float32))
    lo, hi = depth_ranges(vol.index.keys, cfg.block_size_m, 2 * VOXEL_M, np.linalg.inv(T), intr.fx, intr.fy,
                          intr.cx, intr.cy, intr.width, intr.height, RAY_TILE_PX, cfg.depth_min_m, cfg.depth_max_m)
    v, u = np.nonzero(depth)
    t_lo, t_hi = lo[v // RAY_TILE_PX, u // RAY_TILE_PX], hi[v // RAY_TILE_PX, u // RAY_TILE_PX]
    assert np.all((depth[v, u] >= t_lo) & (depth[v, u] <= t_hi))
    assert np.mean(np.maximum(hi - lo, 0)) < 0.5 * (cfg.depth_max_m - cfg.depth_min_m)  # rays march less


def test_integration_kernel_matches_open3d_integrate():
    """Our CPU integration against Open3D's on the same frames, from a small hash map that has to grow
    (the buffers move): same blocks, same weights, same TSDF and colour (float rounding aside)."""
    frames = orbit(6, SMALL.scaled(2.0), step_deg=4.0)
    vols = [TsdfVolume(VolumeConfig(voxel_size_m=VOXEL_M, device="cpu", own_kernel=own, initial_blocks=64))
            for own in (False, True)]
    for f in frames:
        touched = [v.integrate(f, f.T_world_cam_gt) for v in vols]
        np.testing.assert_array_equal(*(np.unique(t, axis=0) for t in touched))
    theirs, ours = vols
    keys = theirs.active_keys()
    assert len(keys) == ours.n_blocks and theirs.grid.hashmap().capacity() > 64
    (ta, wa, ca), (tb, wb, cb) = (v.voxel_arrays(v.lookup(keys)) for v in vols)
    assert np.count_nonzero(wa) > 50_000
    assert np.mean(wa == wb) > 0.9995          # a voxel projecting onto a pixel border may pick its neighbour
    same = (wa == wb) & (wa > 0)
    diff = np.abs(tb[same] - ta[same])
    assert np.mean(diff < 1e-4) > 0.995 and diff.max() < 0.5  # a border voxel read the neighbouring pixel once
    assert np.percentile(np.abs(cb[same] - ca[same]), 99) < 0.5
