"""Learning from corrections in a real window: a region click starts a round ("learning from 1
correction…", Cancel), the fusion thread stays responsive meanwhile, the relabeled scene shows when the
round ends and the labeler takes the adapted model; undo brings back the base labels; a cancelled
round changes nothing; the adapted weights export and go into sessions."""
from __future__ import annotations

import dataclasses

import numpy as np

from tests.gui_support import labels_on_screen, make_window, require_display, scan, shown  # noqa: F401
from tests.test_gui_correction import _click, _pick_class, _surface_pixel

require_display()
WAIT_MS = 180_000  # bounds a failure only; every wait is on a state


def _round(qtbot, w, n: int) -> None:
    qtbot.waitUntil(lambda: w.learning.rounds >= n and not w.learning.running, timeout=WAIT_MS)


def test_learn_relabel_undo_cancel_export(make_window, qtbot, tmp_path):
    from app.learning import LearningConfig
    from nets.adapt import relabel
    from nets.adapt_config import ADAPTED_WEIGHTS
    from nets.labels import LabelStore
    from nets.infer import ChunkModel
    from storage.session import load_session

    w = make_window(nets=True, learning=LearningConfig(delay_ms=50))
    scan(qtbot, w, "synthetic:3", frames=10)
    shown(qtbot, w)
    learner = w.nets.learner()
    learner.config = dataclasses.replace(learner.config, budget_s=30.0, max_steps=12, threads=1)
    store = w.nets.store
    coords, base = store.cells()
    pos = _surface_pixel(w)
    w.panel.correct_btn.setChecked(True)
    w.panel.tool_box.setCurrentIndex(w.panel.tool_box.findData("region"))
    target = next(c for c in (33, 24, 36) if c not in store.class_counts())  # a class the scan does not hold
    _pick_class(qtbot, w, target)
    _click(qtbot, w, pos)
    qtbot.waitUntil(lambda: w.learning.text == "learning from 1 correction…", timeout=WAIT_MS)
    assert w.learning.widget.cancel_btn.isVisible()
    assert w.worker.call(lambda worker: worker.state).result(timeout=30) == "finished"  # fusion answers meanwhile
    _round(qtbot, w, 1)
    assert learner.adapted and w.nets._labeler.model is learner.model and "relabeled" in w.learning.text
    labels_on_screen(qtbot, w)
    corrected = store.cells()[1] == target
    assert corrected.any() and w.errors == []

    w.undo.undo()  # the next round has no correction: the base labels come back
    _round(qtbot, w, 2)
    assert not learner.adapted and w.nets._labeler.model is learner.base
    after_undo_coords, after_undo = store.cells()
    fresh = LabelStore(store.grid)  # what the base weights give on this scene, in one pass
    relabel(learner.base.with_turns(learner.config.relabel_turns),  # as a round labels the scene
            w.worker.call(lambda worker: worker.nets.scene_region()).result(timeout=60), fresh)
    assert np.array_equal(fresh.cells()[0], after_undo_coords)  # the untrained model's four-turn means tie
    assert np.mean(fresh.cells()[1] == after_undo) > 0.99, np.mean(fresh.cells()[1] == after_undo)  # in a few cells
    assert np.array_equal(after_undo_coords, coords) and np.mean(after_undo == base) > 0.95  # live-fused labels

    w.undo.redo()
    qtbot.waitUntil(lambda: w.learning.running, timeout=WAIT_MS)
    w.learning.widget.cancel_btn.click()
    _round(qtbot, w, 3)
    assert "cancelled" in w.learning.text and not learner.adapted  # the labels stay as before the round
    assert np.array_equal(store.cells()[1][store.cells()[1] != target], after_undo[store.cells()[1] != target])

    w.undo.undo()
    w.undo.redo()  # learn again, to the end this time
    _round(qtbot, w, 4)
    assert learner.adapted and w.learning.widget.export_btn.isVisible()
    assert w.learning.export_weights(str(tmp_path / "adapted.pt"))
    ChunkModel.load(tmp_path / "adapted.pt")  # what `reconstruct --weights` reads
    job = w.files.save_session(str(tmp_path / "scan"))
    qtbot.waitUntil(lambda: job.join(0), timeout=WAIT_MS)
    saved = load_session(tmp_path / "scan.session")
    saved.pipeline.close()
    assert ADAPTED_WEIGHTS in saved.extras and w.errors == []
