"""Test-time averaging over quarter turns about gravity (nets/turns.py, ChunkModel.with_turns)."""
import numpy as np
import pytest

from fusion.coarse import CoarseGridConfig, CoarseRegion, chunk_keys_of_cells
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.volume import VolumeConfig
from nets.infer import ChunkModel
from nets.reconstruct_labels import label_hook_factory
from nets.turns import FINAL_TURNS
from nets.turns import matching_rows, turn_cells, unturn_cells


def test_a_turn_maps_each_cell_onto_the_turned_cell_and_back():
    rng = np.random.default_rng(0)
    cells = rng.integers(-50, 50, (200, 3)).astype(np.int32)
    for k in range(4):
        turned = turn_cells(cells, k)
        assert np.array_equal(unturn_cells(turned, k), cells)
        angle = k * np.pi / 2
        c, s = np.cos(angle), np.sin(angle)
        centres = cells + 0.5
        rotated = np.stack([c * centres[:, 0] - s * centres[:, 1], s * centres[:, 0] + c * centres[:, 1],
                            centres[:, 2]], 1)
        assert np.allclose(turned + 0.5, rotated)
    assert np.array_equal(turn_cells(cells, 4), cells)


def test_matching_rows_pairs_equal_cells():
    ref = np.array([[0, 0, 0], [1, 2, 3], [-4, 5, 6]], np.int32)
    cells = np.array([[9, 9, 9], [-4, 5, 6], [0, 0, 0]], np.int32)
    a, b = matching_rows(ref, cells)
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 2), (2, 1)]


def _room_region(grid: CoarseGridConfig) -> CoarseRegion:
    """A floor and two walls of sites with a colour gradient (not symmetric under a quarter turn)."""
    floor = [(x, y, 0) for x in range(12) for y in range(9)]
    wall_x = [(x, 0, z) for x in range(12) for z in range(1, 8)]
    wall_y = [(0, y, z) for y in range(1, 9) for z in range(1, 8)]
    coords = np.array(floor + wall_x + wall_y, np.int32)
    rng = np.random.default_rng(1)
    feats = np.column_stack([rng.uniform(-0.3, 0.3, len(coords)), rng.uniform(0, 0.5, len(coords)),
                             np.ones(len(coords)), np.ones(len(coords)),
                             coords[:, :3] / 12.0 - 0.5]).astype(np.float32)
    keys = tuple(sorted({tuple(k) for k in chunk_keys_of_cells(coords, grid).tolist()}))
    return CoarseRegion(keys, coords, feats, np.ones(len(coords), bool), grid)


def _turned(region: CoarseRegion, k: int) -> CoarseRegion:
    coords = turn_cells(region.coords, k)
    keys = tuple(sorted({tuple(c) for c in chunk_keys_of_cells(coords, region.grid).tolist()}))
    return CoarseRegion(keys, coords, region.features, region.core, region.grid)


def test_averaged_prediction_does_not_depend_on_how_the_scene_is_turned():
    model = ChunkModel.untrained(seed=3)
    region = _room_region(model.grid)
    plain = model.predict(region)
    averaged = model.with_turns(4)
    assert model.turns == 1 and averaged.turns == 4 and averaged.net is model.net
    a = averaged.predict(region)
    b = averaged.predict(_turned(region, 1))
    rows_a, rows_b = matching_rows(a.coords, unturn_cells(b.coords, 1))
    observed = a.observed[rows_a]
    assert observed.sum() == len(region)
    assert np.allclose(a.probs[rows_a][observed], b.probs[rows_b][observed], atol=1e-5)
    # a single pass is not invariant, so the averaging is what made it so
    c = model.predict(_turned(region, 1))
    rows_p, rows_c = matching_rows(plain.coords, unturn_cells(c.coords, 1))
    assert not np.allclose(plain.probs[rows_p], c.probs[rows_c], atol=1e-3)
    with pytest.raises(ValueError):
        model.with_turns(5)


def test_final_labels_average_four_turns_and_live_labels_one():
    pipeline = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu"), poses="gt"))
    model = ChunkModel.untrained(seed=0)
    try:
        final = label_hook_factory("final", model)(pipeline)
        live = label_hook_factory("incremental", model)(pipeline)
        try:
            assert final.stats()["turns"] == FINAL_TURNS == 4 and live.stats()["turns"] == 1
        finally:
            final.close()
            live.close()
    finally:
        pipeline.close()
