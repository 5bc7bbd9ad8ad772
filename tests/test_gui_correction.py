"""Label correction in a real window: mouse clicks on the surface paint and relabel regions, undo/redo
revert them in the label store, the viewport shows them at once, and exports and sessions keep them."""
from __future__ import annotations

import numpy as np
from PyQt6.QtCore import QPoint, Qt

from fusion.classes import SCANNET20
from tests.gui_support import (full_detail, labels_on_screen, make_window, pixels, require_display, scan,  # noqa: F401
                               shown, surface_mask)

require_display()
CHAIR, TABLE = 5, 7


def _pick_class(qtbot, w, nyu40: int) -> None:
    legend = w.panel.legend
    item = legend.item(legend.ids.index(nyu40), 0)
    legend.scrollToItem(item)
    qtbot.mouseClick(legend.viewport(), Qt.MouseButton.LeftButton, pos=legend.visualItemRect(item).center())
    assert w.correction.nyu40 == nyu40


def _surface_pixel(w) -> QPoint:
    """A viewport pixel on the scanned surface, well inside it (in widget coordinates)."""
    mask = surface_mask(w, pixels(w))
    inner = mask.copy()
    for axis in (0, 1):
        for shift in (-12, 12):
            inner &= np.roll(mask, shift, axis)
    ys, xs = np.nonzero(inner)
    c = np.array(mask.shape) / 2
    i = np.argmin((ys - c[0]) ** 2 + (xs - c[1]) ** 2)
    dpr = w.viewport.devicePixelRatioF()
    return QPoint(int(xs[i] / dpr), int(ys[i] / dpr))


def _click(qtbot, w, pos: QPoint) -> None:
    qtbot.mouseClick(w.viewport, Qt.MouseButton.LeftButton, pos=pos)


def _color_at(w, pos: QPoint) -> tuple:
    dpr = w.viewport.devicePixelRatioF()
    return tuple(pixels(w)[int(pos.y() * dpr), int(pos.x() * dpr)])


def test_brush_region_undo_redo_show_at_once_and_export(make_window, qtbot, tmp_path):
    w = make_window(viewport=full_detail())
    scan(qtbot, w, "synthetic:3", frames=10)
    shown(qtbot, w)
    p = w.panel
    p.lighting_check.setChecked(False)
    p.mode_box.setCurrentIndex(p.mode_box.findData("labels"))
    pos = _surface_pixel(w)
    store = w.nets.store
    assert store.class_counts() == {}  # nets off: nothing labelled yet
    qtbot.mouseClick(p.correct_btn, Qt.MouseButton.LeftButton)
    assert w.viewport.picking
    p.tool_box.setCurrentIndex(p.tool_box.findData("brush"))
    p.brush_spin.setValue(20.0)
    _pick_class(qtbot, w, CHAIR)
    _click(qtbot, w, pos)
    painted = store.class_counts().get(CHAIR, 0)
    assert painted > 10 and set(store.class_counts()) == {CHAIR}
    labels_on_screen(qtbot, w)  # the snapshot with the change arrived: waits on that, not on a time
    assert _color_at(w, pos) == SCANNET20[CHAIR][1]
    w.activateWindow()  # shortcuts need an active window (Xvfb has no window manager to activate it)
    qtbot.waitUntil(w.isActiveWindow, timeout=10000)
    qtbot.keyClick(w.viewport, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # Edit > Undo
    assert store.class_counts() == {}
    labels_on_screen(qtbot, w)
    assert _color_at(w, pos) != SCANNET20[CHAIR][1]
    w.undo.redo()
    assert store.class_counts() == {CHAIR: painted}
    p.tool_box.setCurrentIndex(p.tool_box.findData("region"))
    _pick_class(qtbot, w, TABLE)
    _click(qtbot, w, pos)
    assert store.class_counts() == {TABLE: painted}  # the whole connected chair region became table
    labels_on_screen(qtbot, w)
    assert _color_at(w, pos) == SCANNET20[TABLE][1]
    assert w.undo.count() == 2 and w.errors == []
    _export_has(qtbot, w, tmp_path / "scan.ply", TABLE)


def _export_has(qtbot, w, path, nyu40: int) -> None:
    """File > Export writes the corrected labels (and only them: the nets are off)."""
    from plyfile import PlyData

    job = w.files.export(str(path))
    qtbot.waitUntil(lambda: job.join(0), timeout=60000)
    assert w.errors == []
    labels = np.asarray(PlyData.read(str(path))["vertex"]["label"])
    assert np.count_nonzero(labels == nyu40) > 20 and set(np.unique(labels)) <= {0, nyu40}


def test_session_save_and_load_keep_corrections(make_window, qtbot, tmp_path):
    from storage.session import load_session
    from nets.labels import LabelStore

    w = make_window(viewport=full_detail())
    scan(qtbot, w, "synthetic:3", frames=6)
    shown(qtbot, w)
    w.panel.tool_box.setCurrentIndex(w.panel.tool_box.findData("brush"))
    w.panel.correct_btn.setChecked(True)
    _pick_class(qtbot, w, CHAIR)
    _click(qtbot, w, _surface_pixel(w))
    painted = w.nets.store.class_counts()[CHAIR]
    job = w.files.save_session(str(tmp_path / "scan"))
    qtbot.waitUntil(lambda: job.join(0), timeout=15000)
    path = tmp_path / "scan.session"
    assert path.exists() and w.errors == []
    saved = load_session(path)
    saved.pipeline.close()
    assert LabelStore.from_arrays(saved.extras).class_counts() == {CHAIR: painted}

    w.worker.command("reset")
    qtbot.waitUntil(lambda: w.nets.store.class_counts() == {} and w.viewport.n_chunks == 0, timeout=5000)
    assert w.undo.count() == 0  # the old store's corrections cannot be undone into the new one
    job = w.files.load_session(str(path))
    qtbot.waitUntil(lambda: job.join(0) and w.viewport.n_chunks > 0, timeout=15000)
    qtbot.waitUntil(lambda: w.nets.store.class_counts() == {CHAIR: painted}, timeout=5000)
    assert w.errors == []
