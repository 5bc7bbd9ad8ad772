"""Loop closure in a real window: the setting (off by default) reaches the next scan, and when a map
correction lands the user reads "loop closed: map corrected", the mesh is the corrected one (no stale
chunk at the old place), the camera path and a painted correction move with it, and undo still works.

The correction is fed to the scan's real loop closer (`LoopCloser.offer`: the map rebuilt from its
keyframes at poses shifted 25 cm, as an accepted loop does after its optimisation): finding a real loop
takes a long drifting scan, which `tests/test_loop_closure.py` covers headless. The swap, the labels,
the mesh and the messages run exactly as after a real loop (here while the scan has finished: a
correction that lands between frames)."""
from __future__ import annotations

import numpy as np
import pytest
from PyQt6.QtCore import Qt

from tests.gui_support import full_detail, labels_on_screen, make_window, require_display, scan, shown  # noqa: F401

require_display()
from tests.test_gui_correction import _click, _pick_class, _surface_pixel  # noqa: E402 (needs the display check)

CHAIR = 5
SHIFT_M = (0.25, 0.0, 0.0)       # five nets cells along x


def _on_fusion(qtbot, w, fn):
    """fn(worker) run on the fusion thread; its result."""
    fut = w.worker.call(fn)
    qtbot.waitUntil(fut.done, timeout=60000)
    return fut.result()


def _mesh_bounds(worker):
    pos = worker.pipeline.mesher.full_mesh().positions_m
    return pos.min(0), pos.max(0)


def _shift_map(worker) -> bool:
    loops = worker.pipeline.loops
    assert loops.wait_idle(60.0)
    C = np.eye(4)
    C[:3, 3] = SHIFT_M
    return loops.offer(np.array([C @ T for T in loops.keyframe_poses()]))


def _corrected(store, nyu40: int) -> set:
    """Cells holding the user's correction `nyu40` (whatever the nets predict there)."""
    a = store.to_arrays()
    return set(map(tuple, a["labels_coords"][a["labels_corrected"] == nyu40].tolist()))


@pytest.mark.parametrize("nets", [False, True], ids=["nets off", "nets on"])
def test_loop_closure_setting_and_a_map_correction_reach_the_user(make_window, qtbot, nets):
    """Nets off: the nets hookup moves the store on the fusion thread; on: the labeler does, on its own."""
    w = make_window(viewport=full_detail(), nets=nets)
    messages = []
    w.status_bar.messageChanged.connect(messages.append)
    p = w.panel
    assert not p.loop_check.isChecked() and "loop" in p.loop_check.toolTip().lower()
    p.loop_check.setChecked(True)
    assert any("next scan" in m for m in messages)
    scan(qtbot, w, "synthetic:3", frames=10)
    assert _on_fusion(qtbot, w, lambda wk: wk.pipeline.loops is not None)   # the setting reached the scan
    shown(qtbot, w)
    p.lighting_check.setChecked(False)
    qtbot.mouseClick(p.correct_btn, Qt.MouseButton.LeftButton)
    p.tool_box.setCurrentIndex(p.tool_box.findData("brush"))
    _pick_class(qtbot, w, CHAIR)
    _click(qtbot, w, _surface_pixel(w))
    store = w.nets.store
    painted = np.array(sorted(_corrected(store, CHAIR)), np.int32).reshape(-1, 3)
    assert len(painted) > 10
    path_before = _on_fusion(qtbot, w, lambda wk: wk.trajectory()[1])
    bounds_before = w.viewport.scene_bounds()

    assert _on_fusion(qtbot, w, _shift_map)
    qtbot.waitUntil(lambda: any(m.startswith("loop closed: map corrected (moved up to 25.0 cm)") for m in messages),
                    timeout=60000)
    qtbot.waitUntil(lambda: store.world == 1, timeout=20000)
    moved = painted + np.array([5, 0, 0], np.int32)
    assert _corrected(store, CHAIR) == set(map(tuple, moved.tolist()))       # all moved, none left behind
    path_after = _on_fusion(qtbot, w, lambda wk: wk.trajectory()[1])
    assert np.allclose(path_after[:, :3, 3] - path_before[:, :3, 3], SHIFT_M, atol=1e-6)

    lo, hi = _on_fusion(qtbot, w, _mesh_bounds)                              # the swapped-in volume's mesh
    qtbot.waitUntil(lambda: np.allclose(w.viewport.scene_bounds()[0], lo, atol=1e-4)
                    and np.allclose(w.viewport.scene_bounds()[1], hi, atol=1e-4), timeout=20000)
    assert lo[0] > bounds_before[0][0] + 0.15                                # no chunk left at the old place

    labels_on_screen(qtbot, w)
    if nets:
        shown(qtbot, w)                                                       # the nets label the new map
        assert _corrected(store, CHAIR) == set(map(tuple, moved.tolist()))
    w.undo.undo()                                                             # the undo stack's cells moved too
    assert _corrected(store, CHAIR) == set()
    w.undo.redo()
    assert _corrected(store, CHAIR) == set(map(tuple, moved.tolist()))
