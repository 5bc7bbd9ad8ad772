"""Label refinement at surface segments (nets.segment_vote, LabelStore.mesh_labels) on small hand-built
meshes: a floor meeting a wall."""
from __future__ import annotations

import numpy as np

from fusion.meshing import MeshArrays
from nets.labels import LabelStore
from nets.segment_vote import SegmentVoteConfig, surface_segments, vote
from tests.test_labels import CHAIR, FLOOR, GRID, TABLE, V, pred, slab

STEP_M = 0.01


def plate(origin, u, v, n: int, normal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An n x n grid of vertices origin + i u + j v (metres) with one normal, and its triangles."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    pos = np.asarray(origin, float) + i.reshape(-1, 1) * np.asarray(u, float) + j.reshape(-1, 1) * np.asarray(v, float)
    idx = (i * n + j)[:-1, :-1].ravel()
    faces = np.concatenate([np.stack([idx, idx + n, idx + 1], 1), np.stack([idx + 1, idx + n, idx + n + 1], 1)])
    return pos, np.tile(np.asarray(normal, np.float32), (len(pos), 1)), faces


def floor_and_wall(n: int = 30) -> tuple[MeshArrays, np.ndarray]:
    """A floor plate (z = 0.02 m) and a wall plate (x = 0.02 m) joined along their shared edge by a strip of
    triangles; (mesh, True for the floor's vertices)."""
    fp, fn, ff = plate((0.02, 0.0, 0.02), (STEP_M, 0, 0), (0, STEP_M, 0), n, (0, 0, 1))
    wp, wn, wf = plate((0.02, 0.0, 0.02 + STEP_M), (0, 0, STEP_M), (0, STEP_M, 0), n, (1, 0, 0))
    first_row_floor, first_row_wall = np.arange(n), len(fp) + np.arange(n)
    a, b = first_row_floor[:-1], first_row_wall[:-1]
    seam = np.concatenate([np.stack([a, a + 1, b], 1), np.stack([a + 1, b + 1, b], 1)])
    pos = np.concatenate([fp, wp]).astype(np.float32)
    mesh = MeshArrays(pos, np.full((len(pos), 3), 128, np.uint8), np.concatenate([fn, wn]),
                      np.concatenate([ff, wf + len(fp), seam]).astype(np.int32), np.zeros(len(pos), np.int64))
    return mesh, np.arange(len(pos)) < len(fp)


def test_segments_split_where_the_surface_bends():
    mesh, on_floor = floor_and_wall()
    seg = surface_segments(mesh.normals, mesh.colors, mesh.faces, SegmentVoteConfig(min_segment_points=50))
    assert len(np.unique(seg[on_floor])) == 1 and len(np.unique(seg[~on_floor])) == 1
    assert seg[on_floor][0] != seg[~on_floor][0]
    # a bend is no edge when the threshold allows any merge
    loose = surface_segments(mesh.normals, mesh.colors, mesh.faces, SegmentVoteConfig(k=1e6))
    assert len(np.unique(loose)) == 1


def test_a_segment_takes_its_confident_majority_and_corrections_keep_theirs():
    seg = np.array([0] * 6 + [1] * 4)
    labels = np.array([FLOOR, FLOOR, FLOOR, TABLE, 0, CHAIR, TABLE, TABLE, FLOOR, FLOOR], np.uint16)
    conf = np.array([0.9, 0.9, 0.9, 0.4, 0.0, 1.0, 0.6, 0.6, 0.5, 0.5], np.float32)
    fixed = np.zeros(10, bool)
    fixed[5] = True   # the user said chair there
    cfg = SegmentVoteConfig(min_vote_points=4, correction_weight=1.0)
    out = vote(labels, conf, seg, fixed, cfg)
    assert out[:5].tolist() == [FLOOR] * 5 and out[5] == CHAIR   # the unlabelled point joins its segment
    assert out[6:].tolist() == [TABLE] * 4                      # 1.2 against 1.0
    # segments smaller than min_vote_points are left as they are
    assert np.array_equal(vote(labels, conf, seg, fixed, SegmentVoteConfig(min_vote_points=7)), labels)
    # a correction weighs `correction_weight` confident predictions: at 3 it outweighs floor's 2.7 and carries
    # its segment; the other segment holds no correction and votes as before
    out = vote(labels, conf, seg, fixed, SegmentVoteConfig(min_vote_points=4, correction_weight=3.0))
    assert out[:6].tolist() == [CHAIR] * 6 and out[6:].tolist() == [TABLE] * 4


def test_mesh_labels_fill_a_surface_part_and_keep_corrections():
    """A floor labelled floor, with a few cells the net called table at lower confidence and one cell the
    user corrected to chair: the floor's segment comes out floor except the corrected cell; the wall,
    labelled only near the floor, is left as it was (too little of it holds a label to vote)."""
    mesh, on_floor = floor_and_wall()
    store = LabelStore(GRID)
    cells = slab(0, 8, 0, 8, 0)
    noisy = (cells[:, 0] == 3) & (cells[:, 1] < 3)
    p = pred(cells, FLOOR)
    p.probs[noisy] = pred(cells[noisy], TABLE, p=0.6).probs
    store.fuse(p)
    store.correct(np.array([[1, 4, 0]], np.int32), CHAIR)
    raw, _ = store.labels_at(mesh.positions_m)
    assert np.any(raw[on_floor] == TABLE)   # the interpolated labels keep the net's blotch
    cfg = SegmentVoteConfig(min_segment_points=50, min_vote_points=50)
    out = store.mesh_labels(mesh, cfg)
    segments = surface_segments(mesh.normals, mesh.colors, mesh.faces, cfg)
    assert np.array_equal(store.mesh_labels(mesh, cfg, segments), out)   # segments given: the same labels
    corrected = np.all(np.floor(mesh.positions_m / V).astype(int) == [1, 4, 0], axis=1)
    assert np.all(out[corrected] == CHAIR)
    assert np.all(out[on_floor & ~corrected] == FLOOR)
    assert np.array_equal(out[~on_floor], raw[~on_floor]) and np.any(raw[~on_floor] == 0)
    assert np.array_equal(store.mesh_labels(mesh, SegmentVoteConfig(enabled=False)), raw)
