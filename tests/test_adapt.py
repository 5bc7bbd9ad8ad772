"""Learning from corrections (nets.adapt), correction files and `main.py relabel`: a correction on one
object propagates to an uncorrected look-alike; undo restores the base labels; corrections win on their
cells; the adapted weights survive a session and load with `reconstruct --weights`; bad correction files
give one line, a non-zero exit and no outputs."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fusion.coarse import CoarseGridConfig, CoarseRegion
from fusion.errors import UserError
from nets.adapt import AdaptConfig, CorrectionLearner, corrections_of, predict_scene, relabel
from nets.adapt_config import ADAPTED_WEIGHTS
from nets.corrections_file import apply_corrections, parse_corrections
from nets.infer import DEFAULT_WEIGHTS, ChunkModel
from nets.labels import LabelStore

FAST = AdaptConfig(budget_s=60.0, max_steps=40, threads=1, lr=1e-2, anchor_weight=1e-3)
METHODS = {"head": FAST, "finetune": dataclasses.replace(FAST, method="finetune")}
BOX_A, BOX_B = (8, 8), (40, 8)   # look-alike boxes: same shape and colour, 32 cells apart (a stride multiple)


def _box_surface(x0: int, y0: int, size: int = 8, height: int = 10) -> np.ndarray:
    r = np.arange(size)
    cells = [(x0 + i, y0 + j, height) for i in r for j in r]                          # top
    for k in range(1, height + 1):
        cells += [(x0 + i, y0 + j, k) for i in r for j in r if i in (0, size - 1) or j in (0, size - 1)]
    return np.unique(np.array(cells, np.int32), axis=0)


def _scene() -> tuple[CoarseRegion, dict]:
    """A floor with two identical red boxes on it, as coarse sites (5 cm cells)."""
    xs, ys = np.meshgrid(np.arange(0, 56), np.arange(0, 24), indexing="ij")
    floor = np.column_stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)]).astype(np.int32)
    a, b = _box_surface(*BOX_A), _box_surface(*BOX_B)
    coords = np.concatenate([floor, a, b])
    feats = np.zeros((len(coords), 7), np.float32)
    feats[:, 1], feats[:, 2], feats[:, 3] = 0.2, 1.0, 0.3           # sdf_absmin, observed, near
    feats[:, 4:7] = (np.array([0.55, 0.5, 0.45]) - 0.5)             # grey floor
    feats[len(floor):, 4:7] = np.array([0.8, 0.15, 0.15]) - 0.5     # red boxes
    parts = {"floor": np.arange(len(floor)), "a": len(floor) + np.arange(len(a)),
             "b": len(floor) + len(a) + np.arange(len(b))}
    return CoarseRegion((), coords, feats, np.ones(len(coords), bool), CoarseGridConfig()), parts


@pytest.fixture(scope="module")
def model():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("no shipped weights")
    return ChunkModel.load()


def _majority(labels: np.ndarray) -> int:
    values, counts = np.unique(labels, return_counts=True)
    return int(values[counts.argmax()])


def _labelled_store(model, region) -> LabelStore:
    """The scene labeled as a learning round labels it (the final labels' quarter turns)."""
    store = LabelStore(model.grid)
    relabel(model.with_turns(AdaptConfig().relabel_turns), region, store)
    return store


@pytest.mark.parametrize("method", sorted(METHODS))
def test_correction_propagates_to_a_look_alike_and_undo_restores(model, method):
    region, parts = _scene()
    store = _labelled_store(model, region)
    base = store.labels_of_cells(region.coords)[0]
    target = 5 if _majority(base[parts["b"]]) != 5 else 7       # chair, unless the net already says chair
    assert _majority(base[parts["b"]]) != target
    correction = store.correct(region.coords[parts["a"]], target)
    learner = CorrectionLearner(model, METHODS[method])
    result = learner.learn(region, store)
    after = store.labels_of_cells(region.coords)[0]
    assert result.adapted and result.steps > 0 and not result.cancelled
    assert np.all(after[parts["a"]] == target)                   # corrections win on their cells
    assert np.mean(after[parts["b"]] == target) > 0.75           # ... and the look-alike learned it (from none)
    assert np.mean(after[parts["floor"]] == base[parts["floor"]]) > 0.9  # the rest stays as it was
    store.revert(correction)                                     # undo: the next round has no correction
    undone = learner.learn(region, store)
    assert not undone.adapted and learner.model is model
    assert np.array_equal(store.labels_of_cells(region.coords)[0], base)


def test_head_round_moves_only_the_head_and_its_weights_load(model, tmp_path):
    """The "head" method: the adapted net differs from the base only in the semantic head, and its weights
    file gives the same predictions (what `reconstruct --weights` loads)."""
    import torch

    from nets.infer import save_weights

    region, parts = _scene()
    store = _labelled_store(model, region)
    store.correct(region.coords[parts["a"]], 5)
    learner = CorrectionLearner(model, FAST)
    result = learner.learn(region, store)
    assert result.adapted and result.steps == FAST.head_steps
    base, adapted = model.net.state_dict(), learner.model.net.state_dict()
    moved = {k for k in base if not torch.equal(base[k], adapted[k])}
    assert moved and all(k.startswith("sem.") for k in moved), moved
    save_weights(tmp_path / "w.pt", learner.model.net, learner.model.grid)
    back = ChunkModel.load(tmp_path / "w.pt")
    assert np.allclose(predict_scene(back, region).probs, predict_scene(learner.model, region).probs, atol=1e-6)


def test_look_alike_takes_only_near_copies_of_the_corrected_cells():
    """A cell the anchor calls the class corrected away from takes the correction's class when its features
    are near the corrected cells' (within the margin), not when they are nearer its own class's."""
    from nets.adapt_head import look_alike

    rng = np.random.default_rng(0)
    shown = rng.normal([5.0, 0.0], 0.05, (20, 2))        # corrected cells: anchor class 3, set to 7
    copies = rng.normal([5.0, 0.0], 0.05, (10, 2))       # uncorrected near copies, anchor class 3
    plain = rng.normal([0.0, 0.0], 0.5, (200, 2))        # the rest of class 3
    other = rng.normal([5.0, 0.0], 0.05, (10, 2))        # near the corrected cells but anchor class 4
    features = np.concatenate([shown, copies, plain, other]).astype(np.float32)
    anchor = np.array([3] * 230 + [4] * 10)
    rows, classes = np.arange(20), np.full(20, 7)
    candidates = np.arange(20, 240)
    out = look_alike(features, anchor, rows, classes, candidates, margin=0.2)
    assert np.all(out[:10] == 7) and np.all(out[10:] == -1)
    assert np.all(look_alike(features, anchor, rows, np.full(20, 3), candidates, 0.2) == -1)  # nothing moved


def test_a_changed_class_stands_only_where_the_adapted_net_is_sure_of_it():
    """After a round, a cell the adapted net moves to another class keeps the base's prediction unless the
    adapted net gives the new class at least `relabel_min_conf`; cells whose class did not change take the
    adapted probabilities."""
    from nets.adapt import _gated
    from nets.infer import RegionPrediction

    def prediction(probs):
        probs = np.asarray(probs, np.float32)
        n = len(probs)
        return RegionPrediction((), np.arange(3 * n, dtype=np.int32).reshape(n, 3), probs, np.zeros(n, np.float32),
                                np.zeros(n, np.float32), np.ones(n, bool))

    base = prediction([[0.7, 0.3, 0.0], [0.7, 0.3, 0.0], [0.6, 0.4, 0.0]])
    adapted = prediction([[0.4, 0.6, 0.0], [0.1, 0.9, 0.0], [0.9, 0.1, 0.0]])  # unsure move, sure move, same class
    gated = _gated(adapted, base, 0.8)
    np.testing.assert_allclose(gated.probs, [[0.7, 0.3, 0.0], [0.1, 0.9, 0.0], [0.9, 0.1, 0.0]], rtol=1e-6)
    only_adapted = prediction([[0.4, 0.6, 0.0]] * 4)  # a fine-tuned decoder completed a cell the base did not
    gated = _gated(only_adapted, base, 0.8)
    np.testing.assert_allclose(gated.probs, [[0.7, 0.3, 0.0], [0.7, 0.3, 0.0], [0.6, 0.4, 0.0], [0.4, 0.6, 0.0]],
                               rtol=1e-6)


def test_cancelled_round_changes_nothing(model):
    import threading

    region, parts = _scene()
    store = _labelled_store(model, region)
    store.correct(region.coords[parts["a"]], 5)
    before = store.labels_of_cells(region.coords)[0]
    cancel = threading.Event()
    cancel.set()
    result = CorrectionLearner(model, FAST).learn(region, store, cancel)
    assert result.cancelled and result.steps == 0
    assert np.array_equal(store.labels_of_cells(region.coords)[0], before)


def test_later_correction_wins_and_only_it_is_learned(model):
    region, parts = _scene()
    store = _labelled_store(model, region)
    point = ((region.coords[parts["a"]][0] + 0.5) * 0.05).tolist()
    specs = parse_corrections(json.dumps([{"point_m": point, "label": 5, "mode": "brush", "radius_m": 0.6},
                                          {"point_m": point, "label": 7, "mode": "brush", "radius_m": 0.6}]))
    apply_corrections(store, specs, "c.json")
    corr = corrections_of(store)
    assert len(corr) > 10 and set(corr.labels.tolist()) == {7}


@pytest.mark.parametrize("text, needle", [
    ('[{"point_m": [0, 0, 0], "label": 5, "mode": "region"}, {"point_m": [0,0', "line 1 column"),
    ('[{"point_m": [0, 0, 0], "label": 5, "mode": "region"}, {"point_m": [0, 0, 0], "label": 99, '
     '"mode": "region"}]', "entry 2 of 2: label 99"),
    ('[{"point_m": [0, 0], "label": 5, "mode": "region"}]', "entry 1 of 1: point_m"),
    ('[{"point_m": [0, 0, 0], "label": 5, "mode": "paint"}]', "entry 1 of 1: mode"),
    ('[{"point_m": [0, 0, 0], "label": 5, "mode": "brush", "radius_m": -1}]', "entry 1 of 1: radius_m"),
    ('[{"point_m": [0, 0, 0], "label": 5, "mode": "region", "colour": 1}]', "unknown key 'colour'"),
    ('{"point_m": [0, 0, 0]}', "expected a JSON list"),
])
def test_bad_correction_files_are_one_line(text, needle):
    with pytest.raises(UserError) as info:
        parse_corrections(text, "c.json")
    assert "\n" not in str(info.value) and needle in str(info.value) and "c.json" in str(info.value)


def test_session_weights_round_trip(model):
    from nets.session_weights import adapted_model, weights_array

    region, parts = _scene()
    store = _labelled_store(model, region)
    store.correct(region.coords[parts["a"]], 5)
    learner = CorrectionLearner(model, dataclasses.replace(FAST, max_steps=5))
    learner.learn(region, store)
    back = adapted_model({ADAPTED_WEIGHTS: weights_array(learner.model)})
    p1, p2 = predict_scene(learner.model, region), predict_scene(back, region)
    assert np.allclose(p1.probs, p2.probs, atol=1e-6)
    assert adapted_model({}) is None                              # older sessions have none


# --- the command line -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def session_file(tmp_path_factory):
    """A small saved session (two spheres on a floor, no labels)."""
    from fusion.pipeline import FusionPipeline, PipelineConfig
    from fusion.volume import VolumeConfig
    from storage.session import save_session
    from tests.scenes import SMALL, orbit

    frames = orbit(8, SMALL, step_deg=3.0)
    p = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu"), poses="gt"))
    try:
        res = [p.process(f, T_start=f.T_world_cam_gt) for f in frames]
        path = tmp_path_factory.mktemp("sess") / "scan.session"
        save_session(path, p, [r.timestamp_s for r in res], [r.T_world_cam for r in res], {"kind": "test"})
        points = p.final_mesh().positions_m
    finally:
        p.close()
    return path, np.asarray(points)


def _relabel(args, capsys):
    import main

    rc = main.main(["relabel", *map(str, args), "--no-progress", "--threads", "1"])
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("method", ["head", "finetune"])
def test_relabel_writes_outputs_usable_by_reconstruct(session_file, tmp_path, capsys, model, method):
    from nets.session_weights import adapted_model
    from storage.plyio import read_labeled_ply
    from storage.session import load_session

    path, points = session_file
    centre = points.mean(0)
    on = points[np.argmin(np.linalg.norm(points - centre, axis=1))]
    corr = tmp_path / "c.json"
    corr.write_text(json.dumps([{"point_m": on.tolist(), "label": 5, "mode": "brush", "radius_m": 0.2},
                                {"point_m": on.tolist(), "label": 33, "mode": "brush", "radius_m": 0.1}]))
    out = tmp_path / "out"
    rc, err = _relabel([path, "--corrections", corr, "--out", out, "--budget-s", "5", "--method", method], capsys)
    assert rc == 0, err
    for name in ("mesh.ply", "labels.json", "session", "weights.pt"):
        assert (out / name).is_file(), name
    labels = read_labeled_ply(out / "mesh.ply")["labels"]
    assert {5, 33} <= set(np.unique(labels).tolist())            # the later brush wins where they overlap
    saved = load_session(out / "session")
    saved.pipeline.close()
    store = LabelStore.from_arrays(saved.extras)
    assert set(corrections_of(store).labels.tolist()) == {5, 33}
    assert adapted_model(saved.extras) is not None
    ChunkModel.load(out / "weights.pt")                          # what `reconstruct --weights` loads


@pytest.mark.parametrize("entries, needle", [
    ([{"point_m": [0, 0, 1.5], "label": 5, "mode": "region"}, {"point_m": [0, 0, 0], "label": 3.5, "mode": "region"}],
     "entry 2 of 2: label 3.5"),
    ([{"point_m": [40.0, 40.0, 40.0], "label": 5, "mode": "brush"}], "entry 1 of 1: point_m [40.0, 40.0, 40.0] is outside"),
    ([{"point_m": [40.0, 40.0, 40.0], "label": 5, "mode": "region"}], "is outside the scan"),
])
def test_relabel_bad_input_one_line_nothing_written(session_file, tmp_path, capsys, entries, needle, model):
    path, _ = session_file
    corr = tmp_path / "c.json"
    corr.write_text(json.dumps(entries))
    out = tmp_path / "out"
    rc, err = _relabel([path, "--corrections", corr, "--out", out], capsys)
    assert rc == 1 and "\n" not in err and needle in err and str(corr) in err, err
    assert not out.exists()


def test_relabel_malformed_json(session_file, tmp_path, capsys):
    path, _ = session_file
    corr = tmp_path / "c.json"
    corr.write_text('[{"point_m": [0, 0, 0], "label": 5,\n "mode": region}]')
    rc, err = _relabel([path, "--corrections", corr, "--out", tmp_path / "out"], capsys)
    assert rc == 1 and "\n" not in err and "not valid JSON at line 2" in err, err
    assert not (tmp_path / "out").exists()
