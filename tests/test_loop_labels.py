"""Labels and user corrections follow a loop-closure map correction: cells move with their keyframe,
collisions keep the correction (then the more confident prediction), undo works on the moved cells, and
the incremental labeler follows a correction the pipeline swapped in (old-world results are not fused)."""
from __future__ import annotations

import threading
import time
import types

import numpy as np
import pytest

from fusion.coarse import CoarseGridConfig
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.sources.synthetic import SyntheticConfig, SyntheticSource
from fusion.volume import VolumeConfig
from loopclosure.closer import MapCorrection
from loopclosure.config import LoopClosureConfig
from nets.cells import CLASS_IDS
from nets.incremental import IncrementalLabeler
from nets.infer import ChunkModel
from nets.labels import LabelStore
from synth.render import RenderConfig

GRID = CoarseGridConfig()
V = GRID.voxel_size_m
WALL, CHAIR, TABLE = 1, 5, 7


def _prediction(cells: np.ndarray, nyu40, conf=0.9):
    """A prediction of `nyu40` (one, or one per cell) with confidence `conf` (the same) on the cells."""
    nyu40, conf = np.broadcast_to(nyu40, len(cells)), np.broadcast_to(np.float32(conf), len(cells))
    probs = np.repeat(((1 - conf) / (len(CLASS_IDS) - 1))[:, None], len(CLASS_IDS), 1).astype(np.float32)
    probs[np.arange(len(cells)), [list(CLASS_IDS).index(c) for c in nyu40]] = conf
    keys = np.unique(np.floor_divide(cells, GRID.chunk_voxels), axis=0)
    return types.SimpleNamespace(keys=[tuple(k) for k in keys.tolist()], coords=cells, probs=probs,
                                 observed=np.ones(len(cells), bool))


def _patch(x0: int, y0: int, z: int, size: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(x0, x0 + size), np.arange(y0, y0 + size), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], 1).astype(np.int32)


def _turn(deg: float, about_m, shift_m) -> np.ndarray:
    """A world change: turn `deg` about z through `about_m`, then shift by `shift_m`."""
    a = np.deg2rad(deg)
    C = np.eye(4)
    C[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    C[:3, 3] = np.asarray(about_m) - C[:3, :3] @ np.asarray(about_m) + np.asarray(shift_m)
    return C


def _correction(corrections, positions_m, view_centres_m) -> MapCorrection:
    """A map correction with known per-keyframe world changes (no loop needed)."""
    n = len(corrections)
    return MapCorrection(first_frame=100, keyframe_frames=np.arange(n) * 10, corrections=np.array(corrections),
                         max_shift_m=0.3, loops=1, optimise_s=0.0, rebuild_s=0.0,
                         keyframe_positions_m=np.asarray(positions_m, float),
                         keyframe_view_centres_m=np.asarray(view_centres_m, float))


def _labels(store: LabelStore, cells) -> np.ndarray:
    return store.labels_of_cells(cells)[0]


def _corrected(store: LabelStore, nyu40: int) -> set:
    a = store.to_arrays()
    return set(map(tuple, a["labels_coords"][a["labels_corrected"] == nyu40].tolist()))


def _shifted(shift_m):
    """A move: every point's world change is the same shift."""
    T = np.eye(4)
    T[:3, 3] = shift_m
    return lambda p: np.repeat(T[None], len(p), 0)


def test_correction_and_labels_move_with_their_keyframe_and_undo_follows():
    near, far = _patch(0, 0, 0, 12), _patch(60, 0, 0, 12)        # around x = 0.3 m and x = 3.3 m
    store = LabelStore(GRID)
    store.fuse(_prediction(np.concatenate([near, far]), WALL))
    painted = far[:40]
    corr = store.correct(painted, CHAIR)
    # keyframe 0 stays; keyframe 1 turned 4 degrees and moved 0.3 m. Both cameras look down from 1 m at the
    # floor, their view centres on it; keyframe 0's camera is nearer to the far patch's left part than
    # keyframe 1's camera is: the view centres decide
    C1 = _turn(4.0, (3.3, 0.3, 0.0), (0.3, 0.12, 0.0))
    mc = _correction([np.eye(4), C1], [(1.6, 0.3, 1.0), (5.0, 0.3, 1.0)], [(0.3, 0.3, 0.0), (3.3, 0.3, 0.0)])
    assert store.follow([mc.surface_transforms]) and store.world == 1
    # expected: every cell whose centre keyframe 1's change brings from a painted cell (pulled back)
    ahead = np.floor(mc.move_surface_points((painted + 0.5) * V) / V).astype(int)
    axes = [np.arange(lo - 2, hi + 3) for lo, hi in zip(ahead.min(0), ahead.max(0))]
    box = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    back = np.linalg.inv(C1)
    came = np.floor(((box + 0.5) * V) @ back[:3, :3].T / V + back[:3, 3] / V).astype(int)
    expected = set(map(tuple, box[(came[:, None, :] == painted[None]).all(2).any(1)].tolist()))
    assert 36 <= len(expected) <= 44                                          # no holes, no doubled cells
    assert _corrected(store, CHAIR) == expected                               # moved, none left behind
    assert (_labels(store, near) == WALL).all()                               # the unmoved part stays
    assert store.follow([mc.surface_transforms]) == set()                     # a move is followed once
    moved = np.array(sorted(expected), np.int32)
    store.revert(corr)                                                        # undo: where the cells are now
    assert _corrected(store, CHAIR) == set() and (_labels(store, moved) == WALL).all()
    store.apply(corr)                                                         # redo
    assert _corrected(store, CHAIR) == expected
    again = store.correct(moved[:5], TABLE)                                   # a correction made after the move
    store.revert(again)
    assert _corrected(store, CHAIR) == expected


def test_collisions_keep_the_correction_then_the_more_confident():
    cells = np.array([[0, 0, 0], [1, 0, 0], [5, 0, 0], [6, 0, 0]], np.int32)
    store = LabelStore(GRID)
    store.fuse(_prediction(cells, [TABLE, WALL, TABLE, WALL], [0.95, 0.6, 0.95, 0.6]))
    store.correct(cells[[1]], CHAIR)                     # the weaker prediction's cell is corrected
    back = np.eye(4)
    back[0, 3] = -V

    def fold(p):                                         # cells 1 and 6 move one cell back onto 0 and 5
        odd = np.isin(np.floor(p[:, 0] / V).astype(int), (1, 6))
        return np.where(odd[:, None, None], back, np.eye(4))

    store.follow([fold])
    coords, labels = store.cells()
    assert dict(zip(map(tuple, coords.tolist()), labels.tolist())) == {(0, 0, 0): CHAIR, (5, 0, 0): TABLE}


def test_store_cleared_follows_from_scratch():
    store = LabelStore(GRID)
    store.fuse(_prediction(_patch(0, 0, 0, 4), WALL))
    store.follow([_shifted((0.1, 0, 0))])
    store.clear()
    assert store.world == 0
    assert store.fuse(_prediction(_patch(0, 0, 0, 4), WALL), world=1) is None   # another world: not fused
    store.follow([_shifted((0.1, 0, 0))])
    assert store.fuse(_prediction(_patch(0, 0, 0, 4), WALL), world=1) and len(store) == 16


# --- the labeler follows a correction the pipeline swapped in ---------------------------------------------
@pytest.fixture(scope="module")
def frames():
    cfg = SyntheticConfig(render=RenderConfig(intrinsics=RenderConfig().intrinsics.scaled(0.25)))
    src = SyntheticSource(3, n_frames=200, config=cfg)
    return [src.frame(i) for i in range(0, 60, 5)]


def _pipeline() -> FusionPipeline:
    loop = LoopClosureConfig(enabled=True, worker_duty=1.0)
    return FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu"), poses="gt", loop=loop))


class _HeldModel:
    """A model whose next prediction, once armed, waits inside predict until released."""

    def __init__(self, model):
        self.model, self.grid = model, model.grid
        self.armed, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()

    def predict(self, region):
        if self.armed.is_set():
            self.armed.clear()
            self.entered.set()
            self.release.wait(30.0)
        return self.model.predict(region)


def test_labeler_follows_a_swapped_in_correction(frames):
    p = _pipeline()
    held_model = _HeldModel(ChunkModel.untrained(seed=0))
    labeler = IncrementalLabeler(p, held_model)
    try:
        for f in frames[:-2]:
            p.process(f)
        labeler.step()
        coords, _ = labeler.labels.cells()
        painted = coords[coords[:, 2] == np.median(coords[:, 2]).astype(int)][:30]
        labeler.labels.correct(painted, CHAIR)
        # an old-world snapshot is being inferred when the map moves: its result must not be fused
        p.process(frames[-2])
        assert p.loops.wait_idle(60.0)
        held_model.armed.set()
        labeler.start()
        assert held_model.entered.wait(60.0)
        shift = np.eye(4)
        shift[:3, 3] = (0.25, 0.0, 0.0)                                     # five nets cells along x
        held = p.loops.keyframe_poses()
        assert p.loops.offer(np.array([shift @ T for T in held]))
        res = p.process(frames[-1])
        assert res.map_correction is not None and res.map_correction.max_shift_m == pytest.approx(0.25)
        held_model.release.set()
        deadline = time.monotonic() + 60.0
        while labeler.stats()["stale_results_dropped"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert labeler.stats()["stale_results_dropped"] >= 1                 # dropped, not fused
        labeler.stop()
        assert labeler.join(30.0)
        labeler.step()
        moved = painted + np.array([5, 0, 0], np.int32)
        assert labeler.labels.world == 1
        assert (labeler.labels.labels_of_cells(moved)[0] == CHAIR).all()
        old_only = painted[painted[:, 0] < painted[:, 0].min() + 5]
        assert len(old_only) and (labeler.labels.labels_of_cells(old_only)[0] != CHAIR).all()
    finally:
        held_model.release.set()
        labeler.stop()
        labeler.join(30.0)
        p.close()
