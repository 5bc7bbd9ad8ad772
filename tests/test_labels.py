"""Label and completion stores: fusion without flicker, corrections and undo, lookups, sessions."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

from fusion.coarse import CoarseGridConfig
from fusion.pipeline import FusionPipeline, PipelineConfig
from storage.session import load_session, save_session
from fusion.volume import VolumeConfig
from nets.completion import CompletionStore
from nets.labels import CLASS_IDS, NO_CORRECTION, LabelStore, LabelStoreConfig
from tests.scenes import SMALL, orbit

GRID = CoarseGridConfig()
V = GRID.voxel_size_m
WALL, FLOOR, CHAIR, TABLE = 1, 2, 5, 7


@dataclass(frozen=True)
class Pred:
    """A RegionPrediction built by hand."""

    keys: tuple
    coords: np.ndarray
    probs: np.ndarray
    empty_prob: np.ndarray
    sdf_vox: np.ndarray
    observed: np.ndarray


def one_hot(nyu40, n: int, p: float = 0.9) -> np.ndarray:
    probs = np.full((n, len(CLASS_IDS)), (1 - p) / (len(CLASS_IDS) - 1), np.float32)
    probs[:, int(np.nonzero(CLASS_IDS == nyu40)[0][0])] = p
    return probs


def pred(cells, nyu40, p=0.9, keys=None, observed=True, sdf=None) -> Pred:
    cells = np.asarray(cells, np.int32).reshape(-1, 3)
    keys = keys if keys is not None else tuple(sorted(set(map(tuple, np.floor_divide(cells, 32).tolist()))))
    n = len(cells)
    return Pred(keys, cells, one_hot(nyu40, n, p), np.zeros(n, np.float32),
                np.zeros(n, np.float32) if sdf is None else np.asarray(sdf, np.float32),
                np.full(n, observed, bool))


def slab(x0, x1, y0, y1, z) -> np.ndarray:
    """Cells of an axis-aligned plate (half-open ranges)."""
    xs, ys = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], 1).astype(np.int32)


def centres(cells) -> np.ndarray:
    return (np.asarray(cells, float) + 0.5) * V


def test_a_view_keeps_the_labels_it_was_taken_with_while_the_store_changes():
    """Lookups over one view agree with each other: fusing, correcting or clearing later changes the store,
    not a view taken before."""
    store = LabelStore(GRID)
    cells = slab(30, 36, 0, 4, 0)  # across a chunk border
    store.fuse(pred(cells, FLOOR))
    view = store.view()
    store.correct(cells[:5], CHAIR)
    store.fuse(pred(cells, TABLE, p=0.99))
    assert np.all(view.labels_at(centres(cells))[0] == FLOOR) and view.class_counts() == {FLOOR: len(cells)}
    assert len(view.connected_region(centres(cells[:1]))) == len(cells)
    assert store.labels_of_cells(cells[:5])[0].tolist() == [CHAIR] * 5
    store.clear()
    assert len(store) == 0 and len(view) == len(cells) and len(view.brush(centres(cells[:1])[0], 0.3)) > 0


def test_fuse_and_lookup_across_chunks():
    store = LabelStore(GRID)
    cells = slab(28, 36, 0, 4, 5)  # straddles chunks x = 0 and x = 1
    changed = store.fuse(pred(cells, WALL))
    assert changed == {(0, 0, 0), (1, 0, 0)}
    lab, conf = store.labels_at(centres(cells))
    assert np.all(lab == WALL) and np.all(conf > 0.8)
    # a point in an empty cell next to the slab takes the nearest neighbour's label; far away: 0
    near = centres([[30, 1, 6]]) - [0, 0, 0.4 * V]
    far = centres([[30, 1, 9]])
    lab, conf = store.labels_at(np.concatenate([near, far]))
    assert lab.tolist() == [WALL, 0] and conf[1] == 0
    assert np.array_equal(store.cells_at(centres(cells)), cells)
    assert store.class_counts() == {WALL: len(cells)} and len(store) == len(cells)


def near_tie(cells, first, second, lead):
    p = pred(cells, first, p=0.45)
    p.probs[:, int(np.nonzero(CLASS_IDS == second)[0][0])] = 0.45 - lead
    return p


def test_labels_settle_without_flicker_but_newer_evidence_wins():
    store = LabelStore(GRID)
    cells = slab(0, 4, 0, 4, 0)
    store.fuse(pred(cells, CHAIR, p=0.8))
    raw_flips = flips = 0
    rng = np.random.default_rng(0)
    raw = CHAIR
    for i in range(40):  # re-inferences where chair and table nearly tie, the winner alternating at random
        winner, loser = (TABLE, CHAIR) if rng.random() < 0.5 else (CHAIR, TABLE)
        before = store.labels_of_cells(cells[:1])[0][0]
        store.fuse(near_tie(cells, winner, loser, lead=rng.uniform(0.0, 0.05)))
        flips += int(store.labels_of_cells(cells[:1])[0][0] != before)
        raw_flips, raw = raw_flips + int(winner != raw), winner
    assert raw_flips > 10 and flips == 0
    store.fuse(pred(cells, TABLE, p=0.7))  # one clear prediction of the other class switches at once
    assert np.all(store.labels_of_cells(cells)[0] == TABLE)
    store.fuse(near_tie(cells, CHAIR, TABLE, lead=0.02))
    assert np.all(store.labels_of_cells(cells)[0] == TABLE)


def test_reinference_drops_unpredicted_cells_but_keeps_corrections():
    store = LabelStore(GRID)
    cells = slab(0, 6, 0, 1, 3)
    store.fuse(pred(cells, FLOOR))
    corr = store.correct(cells[:2], TABLE)
    store.fuse(pred(cells[2:4], FLOOR, keys=((0, 0, 0),)))  # the chunk re-inferred: only 2 of its cells remain
    lab, conf = store.labels_of_cells(cells)
    assert lab.tolist() == [TABLE, TABLE, FLOOR, FLOOR, 0, 0]
    assert np.all(conf[:2] == 1.0)
    assert store.revert(corr) == {(0, 0, 0)}
    assert store.labels_of_cells(cells)[0].tolist() == [0, 0, FLOOR, FLOOR, 0, 0]


def test_corrections_win_survive_reinference_undo_redo():
    store = LabelStore(GRID)
    cells = slab(0, 8, 0, 8, 2)
    store.fuse(pred(cells, WALL))
    brushed = store.brush(centres([[2, 2, 2]])[0], 1.5 * V)
    assert len(brushed) == 9 and np.all(np.abs(brushed - [2, 2, 2]).max(1) <= 1)
    v0 = store.version
    corr = store.correct(brushed, CHAIR)
    assert store.version > v0
    for _ in range(5):
        store.fuse(pred(cells, WALL, p=0.99))
    lab, _ = store.labels_of_cells(brushed)
    assert np.all(lab == CHAIR)
    assert store.class_counts() == {WALL: 64 - 9, CHAIR: 9}
    store.revert(corr)
    assert np.all(store.labels_of_cells(brushed)[0] == WALL)
    store.apply(corr)  # redo
    assert np.all(store.labels_of_cells(brushed)[0] == CHAIR)
    # a correction where nothing was predicted creates cells; undoing it removes them
    empty = slab(20, 22, 20, 21, 20)
    c2 = store.correct(empty, TABLE)
    assert np.all(c2.previous == NO_CORRECTION)
    assert np.all(store.labels_of_cells(empty)[0] == TABLE)
    store.revert(c2)
    assert np.all(store.labels_of_cells(empty)[0] == 0) and len(store) == 64 + 0
    with pytest.raises(ValueError):
        store.correct(empty, 13)  # not one of the 20 benchmark classes


def test_connected_region_follows_label_and_contact():
    for conn in (6, 26):
        store = LabelStore(GRID, LabelStoreConfig(connectivity=conn))
        a = slab(0, 5, 0, 5, 0)          # 25 wall cells
        b = slab(5, 8, 0, 5, 0)          # touching, another class
        c = slab(0, 5, 0, 5, 4)          # same class, not touching a
        d = np.array([[5, 5, 1]], np.int32)  # diagonal to a's corner (26-connected only)
        p_wall, p_table = pred(np.concatenate([a, c, d]), WALL), pred(b, TABLE)
        store.fuse(Pred(p_wall.keys, *(np.concatenate([getattr(p_wall, f), getattr(p_table, f)])
                                      for f in ("coords", "probs", "empty_prob", "sdf_vox", "observed"))))
        region = store.connected_region(centres([[1, 1, 0]])[0])
        expect = 25 + (1 if conn == 26 else 0)
        assert len(region) == expect, conn
        assert len(store.connected_region(centres([[1, 1, 0]])[0], max_cells=7)) == 7
        assert len(store.connected_region(centres([[6, 1, 0]])[0])) == 15
        assert len(store.connected_region(centres([[40, 40, 40]])[0])) == 0


def test_a_region_set_to_a_class_keeps_to_cells_the_nets_find_as_likely_to_be_it():
    """A wall of 40 cells, all labelled wall; 10 of them are a door the nets read as wall (door 0.35 there,
    0.005 elsewhere). A region click on the door set to door takes the door's cells only; without the class,
    or with `region_min_share` 0, or clicked on the real wall (whose door probability is no guide), the whole
    wall."""
    door = 8
    cells = slab(0, 8, 0, 5, 0)
    in_door = cells[:, 0] >= 6
    p = pred(cells, WALL)
    col = int(np.nonzero(CLASS_IDS == door)[0][0])
    p.probs[in_door] = 0.05 / (len(CLASS_IDS) - 2)
    p.probs[in_door, 0], p.probs[in_door, col] = 0.6, 0.35
    for share, expect in ((0.5, 10), (0.0, 40)):
        store = LabelStore(GRID, LabelStoreConfig(region_min_share=share))
        store.fuse(p)
        region = store.connected_region(centres([[7, 2, 0]])[0], toward=door)
        assert len(region) == expect, share
        assert len(store.connected_region(centres([[7, 2, 0]])[0])) == 40
        assert len(store.connected_region(centres([[1, 2, 0]])[0], toward=door)) == 40
    # the door first corrected to wall by mistake, then clicked as door: the nets' own probabilities still keep
    # the region to the door (a corrected cell's door probability is 0, which would lift the limit)
    store.correct(cells[in_door], WALL)
    store = LabelStore.from_arrays(store.to_arrays(), GRID, LabelStoreConfig())
    assert len(store.connected_region(centres([[7, 2, 0]])[0], toward=door)) == 10


def test_version_and_changed_since():
    store = LabelStore(GRID, LabelStoreConfig(history=3))
    v0 = store.version
    store.fuse(pred(slab(0, 2, 0, 2, 0), WALL))
    v1, keys = store.changed_since(v0)
    assert v1 > v0 and keys == {(0, 0, 0)}
    assert store.fuse(pred(slab(0, 2, 0, 2, 0), WALL)) == set()  # same labels: no change, no new version
    assert store.changed_since(v1) == (v1, set())
    for x in range(1, 6):
        store.fuse(pred(slab(32 * x, 32 * x + 1, 0, 1, 0), FLOOR))
    assert store.mesh_chunks({(0, 0, 0)}, 0.64) == {(x, y, z) for x in (0, 1, 2) for y in (0, 1, 2) for z in (0, 1, 2)}
    assert store.mesh_chunks({(1, 0, 0)}, 0.8) == {(2, 0, 0), (3, 0, 0)} | {(x, 1, 0) for x in (2, 3)} | {
        (x, y, 1) for x in (2, 3) for y in (0, 1)}
    v2, keys = store.changed_since(v0)  # older than the kept history: every chunk
    assert keys >= {(0, 0, 0), (5, 0, 0)} and v2 == store.version
    store.clear()
    assert len(store) == 0 and store.changed_since(v2)[1] == {(0, 0, 0)} | {(x, 0, 0) for x in range(1, 6)}


def test_concurrent_fuse_and_lookup():
    store = LabelStore(GRID)
    cells = slab(0, 16, 0, 16, 0)
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            lab, _ = store.labels_at(centres(cells))
            if not (np.all(lab == lab[0])):
                errors.append(lab)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            store.fuse(pred(cells, (WALL, FLOOR)[i % 2], p=0.9))
    finally:
        stop.set()
        t.join()
    assert not errors  # a reader sees a whole chunk from one version, never a mix


def sphere_sdf_pred(center, radius_cells, keys):
    g = np.stack(np.meshgrid(*[np.arange(c - radius_cells - 2, c + radius_cells + 3) for c in center],
                             indexing="ij"), -1).reshape(-1, 3)
    d = np.linalg.norm(g + 0.5 - (np.asarray(center) + 0.5), axis=1) - radius_cells
    band = np.abs(d) < 1.5
    return pred(g[band], CHAIR, keys=keys, observed=False, sdf=d[band])


def test_completion_mesh_replaced_when_chunk_reinferred():
    store = CompletionStore(GRID)
    p = sphere_sdf_pred((16, 16, 16), 6, keys=((0, 0, 0),))
    assert store.fuse(p) == {(0, 0, 0)}
    done = store.mesh()
    assert len(done.mesh.faces) > 200 and np.all(done.labels == CHAIR)
    r = np.linalg.norm(done.mesh.positions_m - 16.5 * V, axis=1)
    assert abs(np.median(r) - 6 * V) < 0.5 * V
    observed = Pred(((0, 0, 0),), p.coords, p.probs, p.empty_prob, p.sdf_vox, np.ones(len(p.coords), bool))
    store.fuse(observed)  # now observed: the completion of that chunk is gone
    assert len(store.mesh().mesh.faces) == 0 and store.n_sites() == 0


def test_stores_round_trip_through_a_session(tmp_path):
    labels, completion = LabelStore(GRID), CompletionStore(GRID)
    cells = slab(0, 40, 0, 3, 1)
    labels.fuse(pred(cells, WALL))
    labels.correct(cells[:3], CHAIR)
    completion.fuse(sphere_sdf_pred((40, 16, 16), 5, keys=((1, 0, 0),)))
    p = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu")))
    try:
        f = orbit(1, SMALL)[0]
        r = p.process(f, T_start=f.T_world_cam_gt)
        save_session(tmp_path / "s.session", p, [r.timestamp_s], [r.T_world_cam], extras=labels.to_arrays()
                     | completion.to_arrays())
    finally:
        p.close()
    s = load_session(tmp_path / "s.session")
    s.pipeline.close()
    back = LabelStore.from_arrays(s.extras, GRID)
    assert np.array_equal(back.cells()[0], labels.cells()[0]) and np.array_equal(back.cells()[1], labels.cells()[1])
    assert back.labels_of_cells(cells[:4])[0].tolist() == [CHAIR] * 3 + [WALL]
    back.fuse(pred(cells, WALL, p=0.99))
    assert back.labels_of_cells(cells[:3])[0].tolist() == [CHAIR] * 3  # corrections survived the trip
    comp = CompletionStore.from_arrays(s.extras, GRID)
    assert np.array_equal(comp.mesh().mesh.positions_m, completion.mesh().mesh.positions_m)
    with pytest.raises(ValueError):
        LabelStore.from_arrays(s.extras, CoarseGridConfig(voxel_size_m=0.1))


def test_point_labels_follow_the_surface_between_cells_and_leave_guesses_unlabelled():
    """Labels are interpolated between cell centres: inside one 5 cm cell the label changes where the
    neighbours' evidence outweighs it (edges are not 5 cm blocks); a correction wins in its cells; a
    cell the nets are unsure of leaves its points unlabelled."""
    store = LabelStore(GRID)
    cells = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [5, 5, 0]], np.int32)
    p = pred(cells, CHAIR, p=0.9)
    probs = p.probs.copy()
    probs[3], probs[4] = one_hot(TABLE, 1, 0.6)[0], one_hot(WALL, 1, 0.12)[0]  # a less sure table corner; a guess
    store.fuse(Pred(p.keys, cells, probs, p.empty_prob, p.sdf_vox, p.observed))
    centre = centres([[1, 1, 0]])[0]
    towards_chairs = centre - [0.45 * V, 0.45 * V, 0]
    lab, conf = store.labels_at(np.stack([centre, towards_chairs]))
    assert lab.tolist() == [TABLE, CHAIR]
    assert conf[0] == pytest.approx(0.6 + store.config.switch_margin, abs=1e-5)
    store.apply(store.correct([[1, 1, 0]], TABLE))  # corrected: the whole cell is table, whatever is around
    assert store.labels_at(np.stack([centre, towards_chairs]))[0].tolist() == [TABLE, TABLE]
    lab, conf = store.labels_at(centres([[5, 5, 0]]))
    assert lab[0] == 0 and conf[0] < store.config.min_point_conf


def test_a_session_saved_before_the_ceiling_class_loads():
    store = LabelStore(GRID)
    store.fuse(pred(slab(0, 4, 0, 4, 0), FLOOR))
    arrays = store.to_arrays()
    arrays["labels_probs"] = arrays["labels_probs"].reshape(len(arrays["labels_coords"]), -1)[:, :-1]  # 20 columns
    old = LabelStore.from_arrays(arrays)
    lab, _ = old.labels_at(centres(slab(0, 4, 0, 4, 0)))
    assert np.all(lab == FLOOR)
