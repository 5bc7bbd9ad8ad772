"""Coarse snapshots: the numba summary of the fine voxels equals a plain numpy one, cell by cell."""
from __future__ import annotations

import numpy as np
import pytest

from fusion.coarse import CoarseGridConfig, all_chunk_keys, coarse_region
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.sources.synthetic import SyntheticSource
from fusion.volume import VolumeConfig


@pytest.fixture(scope="module")
def volume():
    src = SyntheticSource(3, n_frames=200, max_frames=12)
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02), poses="gt", incremental_mesh=False))
    for i in range(0, 12, 3):
        pipe.process(src.frame(i))
    yield pipe.volume
    pipe.close()


def _reference(volume, grid: CoarseGridConfig) -> dict:
    """cell -> features, summed voxel by voxel in numpy from every observed fine voxel."""
    cfg = volume.config
    keys = np.asarray(volume.active_keys(), np.int64)
    bufs = volume.lookup(keys)
    tsdf, weight, color = volume.voxel_arrays()
    res, fine, v = cfg.block_resolution, cfg.voxel_size_m, grid.voxel_size_m
    z, y, x = np.meshgrid(*[np.arange(res)] * 3, indexing="ij")
    local = np.stack([x, y, z], -1).reshape(-1, 3)
    cells, sdf, rgb = [], [], []
    for key, b in zip(keys, bufs):
        obs = weight[b].reshape(-1) > 0
        cells.append(np.floor((key * res + local[obs]) * (fine / v) + 1e-6).astype(np.int64))
        sdf.append(tsdf[b].reshape(-1)[obs] * cfg.trunc_m)
        rgb.append(color[b].reshape(-1, 3)[obs])
    cells, sdf, rgb = np.concatenate(cells), np.concatenate(sdf), np.concatenate(rgb)
    uniq, inv = np.unique(cells, axis=0, return_inverse=True)
    inv = inv.ravel()
    n = np.bincount(inv).astype(np.float64)
    absmin = np.full(len(uniq), np.inf)
    np.minimum.at(absmin, inv, np.abs(sdf))
    near = (np.abs(sdf) <= fine).astype(np.float64)
    n_near = np.bincount(inv, near, len(uniq))
    rgb_near = np.stack([np.bincount(inv, rgb[:, c] * near, len(uniq)) for c in range(3)], 1)
    rgb_all = np.stack([np.bincount(inv, rgb[:, c], len(uniq)) for c in range(3)], 1)
    mean_rgb = np.where(n_near[:, None] > 0, rgb_near / np.maximum(n_near, 1)[:, None], rgb_all / n[:, None])
    clip = grid.sdf_clip_voxels
    feats = np.column_stack([np.clip(np.bincount(inv, sdf) / n / v, -clip, clip), np.minimum(absmin / v, clip),
                             np.minimum(n / (v / fine) ** 3, 1.0), n_near / n, mean_rgb / 255.0 - 0.5])
    site = absmin < grid.site_band_voxels * v
    return {tuple(c): f for c, f in zip(uniq[site].tolist(), feats[site])}


def test_coarse_features_equal_a_plain_voxel_by_voxel_summary(volume):
    grid = CoarseGridConfig()
    region = coarse_region(volume, sorted(all_chunk_keys(volume, grid)), grid)
    expected = _reference(volume, grid)
    got = {tuple(c): f for c, f in zip(region.coords.tolist(), region.features)}
    assert len(got) > 1000 and set(got) == set(expected)
    for cell, feats in expected.items():
        np.testing.assert_allclose(got[cell], feats, atol=2e-4, err_msg=str(cell))
