"""The corrections benchmark's diagnosis (bench.corrections_bench): each cell's truth from its vertices, and
how near the room's other cells of a corrected class lie to the corrected ones in the head's features."""
from __future__ import annotations

import numpy as np
import pytest

from bench.corrections_bench import Scene, cell_truth, spread
from nets.adapt import AdaptConfig
from nets.cells import pack_cells
from nets.infer import DEFAULT_WEIGHTS, ChunkModel
from nets.labels import LabelStore
from tests.test_adapt import _labelled_store, _scene

CABINET, OTHER = 3, 39


@pytest.fixture(scope="module")
def model():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("no shipped weights")
    return ChunkModel.load()


def _bench_scene(model, box_b_truth: int) -> tuple[Scene, dict]:
    """test_adapt's floor with two identical boxes, one vertex at each cell's centre; box A is truly a
    cabinet, box B truly `box_b_truth`."""
    region, parts = _scene()
    gt = np.full(len(region.coords), 2, np.uint16)
    gt[parts["a"]], gt[parts["b"]] = CABINET, box_b_truth
    verts = ((region.coords + 0.5) * model.grid.voxel_size_m).astype(np.float32)
    return Scene("boxes", region, {}, verts, np.zeros((0, 3), np.int64), gt), parts


def test_cell_truth_is_the_majority_of_a_cells_vertices(model):
    region, _ = _scene()  # only carried along
    store = LabelStore(model.grid)
    cell = np.array([[3, 4, 0]], np.int32)
    centre = (cell + 0.5) * model.grid.voxel_size_m
    verts = np.concatenate([centre + d for d in (0.0, 0.01, -0.01, 0.015)]).astype(np.float32)
    scene = Scene("one cell", region, {}, verts, np.zeros((0, 3), np.int64), np.array([5, 7, 7, 0], np.uint16))
    truth = cell_truth(store, scene, np.concatenate([cell, cell + 1]))
    assert truth.tolist() == [7, 0]


def test_spread_finds_the_corrected_objects_twin_nearer_than_an_unlike_object(model):
    """Box B is box A's exact copy: when it truly has box A's corrected class, its cells' nearest neighbours
    in the head's features include corrected cells; the floor (truly floor) is never counted."""
    scene, parts = _bench_scene(model, CABINET)
    store = _labelled_store(model, scene.region)
    cells_a = scene.region.coords[parts["a"]]
    store.correct(cells_a, CABINET)
    out = spread(scene, store, np.sort(pack_cells(cells_a)), model, AdaptConfig())
    assert list(out) == [CABINET]
    assert out[CABINET]["untouched_cells"] == len(parts["b"])
    assert out[CABINET]["nearest_is_corrected"] > 0.9 > 0.5 > out[CABINET]["chance"]
    assert 0.0 <= out[CABINET]["pseudo_other"] <= 1.0
    scene_other, _ = _bench_scene(model, OTHER)
    assert spread(scene_other, store, np.sort(pack_cells(cells_a)), model, AdaptConfig()) == {}


def test_set_overrides_one_config_field_with_its_type():
    from bench.corrections_bench import _parser

    args = _parser().parse_args(["--set", "head_pseudo_weight=10", "--set", "head_propagate=false"])
    assert dict(args.set) == {"head_pseudo_weight": 10.0, "head_propagate": False}
    with pytest.raises(SystemExit):
        _parser().parse_args(["--set", "no_such_field=1"])
    args = _parser().parse_args(["--store-set", "region_min_share=0", "--vote-set", "correction_weight=1"])
    assert dict(args.store_set) == {"region_min_share": 0.0} and dict(args.vote_set) == {"correction_weight": 1.0}
    with pytest.raises(SystemExit):
        _parser().parse_args(["--vote-set", "head_pseudo_weight=10"])   # an AdaptConfig field, not the vote's


def test_a_scene_scores_what_an_export_writes_and_an_old_cache_is_rebuilt(tmp_path):
    """With the mesh's normals a scene's labels are the store's labels refined at surface segments (what the app
    shows and an export writes: a correction carries its segment), without them the cells' labels; a cache
    written before the normals were kept reads as missing, so the scene is rebuilt from its session."""
    from fusion.coarse import CoarseGridConfig, CoarseRegion
    from bench.corrections_bench import _load_cache, _save_cache
    from tests.test_labels import CHAIR, FLOOR, GRID, pred, slab
    from tests.test_segment_vote import floor_and_wall

    mesh, on_floor = floor_and_wall()
    store = LabelStore(GRID)
    cells = slab(0, 8, 0, 8, 0)
    store.fuse(pred(cells, FLOOR, p=0.5))
    store.correct(cells[cells[:, 0] < 3], CHAIR)   # the corrected rows outweigh the unsure rest of the floor
    gt = np.where(on_floor, CHAIR, 0).astype(np.uint16)
    region = CoarseRegion((), cells, np.zeros((len(cells), 4), np.float32), np.ones(len(cells), bool),
                          CoarseGridConfig())
    scene = Scene("plates", region, store.to_arrays(), mesh.positions_m, mesh.faces.astype(np.int64), gt,
                  mesh.normals, mesh.colors)
    labels = scene.labels(store)
    assert np.array_equal(labels, store.mesh_labels(mesh)) and np.all(labels[on_floor] == CHAIR)
    plain = Scene("plates", region, {}, mesh.positions_m, mesh.faces.astype(np.int64), gt)
    assert np.array_equal(plain.labels(store), store.labels_at(mesh.positions_m)[0])
    assert np.any(plain.labels(store)[on_floor] == FLOOR)
    _save_cache(tmp_path / "scene.npz", scene)
    back = _load_cache(tmp_path / "scene.npz", "plates")
    assert np.array_equal(back.labels(LabelStore.from_arrays(back.store_arrays)), labels)
    np.savez(tmp_path / "old.npz", coords=cells, features=region.features, vertices_m=mesh.positions_m,
             faces=mesh.faces, gt=gt)
    assert _load_cache(tmp_path / "old.npz", "plates") is None and _load_cache(tmp_path / "none.npz", "x") is None
