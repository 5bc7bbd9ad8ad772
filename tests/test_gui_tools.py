"""Viewing tools in a real window. The ruler: two clicks on the surface measure the distance between them
(split along the scan's up), the viewport draws the segment over the surface, a click off the surface
says so, and turning label correction on ends measuring. The legend: a class can be hidden, shown alone
or all shown again, and the viewport follows."""
from __future__ import annotations

import numpy as np
from PyQt6.QtCore import QPoint, Qt

from tests.gui_support import full_detail, make_window, pixels, require_display, scan, shown, surface_mask  # noqa: F401

require_display()
MS = 60_000  # bound on waits for work on a loaded machine (a failure, never a pace)


def _two_surface_pixels(w) -> tuple[QPoint, QPoint]:
    """Two viewport pixels well inside the drawn surface, far apart on one row (widget coordinates)."""
    mask = surface_mask(w, pixels(w))
    inner = mask.copy()
    for axis in (0, 1):
        for shift in (-10, 10):
            inner &= np.roll(mask, shift, axis)
    row = int(np.argmax(inner.sum(1)))
    xs = np.nonzero(inner[row])[0]
    dpr = w.viewport.devicePixelRatioF()
    return QPoint(int(xs[5] / dpr), int(row / dpr)), QPoint(int(xs[-5] / dpr), int(row / dpr))


def _messages(w) -> str:
    return w.status_bar.currentMessage()


def test_two_clicks_measure_and_draw_a_segment_and_a_miss_says_so(make_window, qtbot):
    w = make_window(viewport=full_detail())
    scan(qtbot, w, "synthetic:3", frames=8, timeout_s=MS / 1000)
    shown(qtbot, w, timeout_s=MS / 1000)
    a_px, b_px = _two_surface_pixels(w)
    w.actions_by_name["ruler"].trigger()
    assert w.ruler.active and w.viewport.picking and not w.panel.correct_btn.isChecked()
    qtbot.mouseClick(w.viewport, Qt.MouseButton.LeftButton, pos=a_px)
    assert _messages(w) == "ruler: click the second point"
    qtbot.mouseClick(w.viewport, Qt.MouseButton.LeftButton, pos=b_px)
    m = w.ruler.last
    assert m is not None and m.length_m > 0.1
    a, b = (w.viewport.pick(p.x(), p.y()) for p in (a_px, b_px))
    assert m.length_m == np.linalg.norm(np.asarray(b) - np.asarray(a))  # the points under the clicks
    assert abs(m.horizontal_m ** 2 + m.vertical_m ** 2 - m.length_m ** 2) < 1e-9
    assert _messages(w).startswith(f"distance {m.length_m:.3f} m (horizontal")
    ruler_rgb = np.round(np.array(w.viewport.config.ruler_rgba[:3]) * 255)
    qtbot.waitUntil(lambda: np.any(np.all(np.abs(pixels(w).astype(int) - ruler_rgb) <= 3, axis=2)), timeout=MS)
    qtbot.mouseClick(w.viewport, Qt.MouseButton.LeftButton, pos=QPoint(2, 2))  # the background
    assert _messages(w) == "ruler: nothing there to measure; click on the scanned surface"
    qtbot.mouseClick(w.panel.correct_btn, Qt.MouseButton.LeftButton)  # correcting ends measuring
    assert not w.ruler.active and not w.actions_by_name["ruler"].isChecked() and w.ruler.last is None
    assert w.viewport.picking


def _class_pixels(w, nyu40: int) -> int:
    from fusion.classes import CLASSES

    rgb = np.array(CLASSES[nyu40][1])
    return int(np.all(np.abs(pixels(w).astype(int) - rgb) <= 2, axis=2).sum())


def test_the_legend_hides_isolates_and_shows_classes(make_window, qtbot):
    chair, table = 5, 7
    w = make_window(viewport=full_detail())
    scan(qtbot, w, "synthetic:3", frames=8, timeout_s=MS / 1000)
    shown(qtbot, w, timeout_s=MS / 1000)
    p, legend = w.panel, w.panel.legend
    p.lighting_check.setChecked(False)  # flat label colours
    p.mode_box.setCurrentIndex(p.mode_box.findData("labels"))
    a_px, _ = _two_surface_pixels(w)
    qtbot.mouseClick(p.correct_btn, Qt.MouseButton.LeftButton)
    p.tool_box.setCurrentIndex(p.tool_box.findData("brush"))
    p.brush_spin.setValue(30.0)
    legend.select_class(chair)
    w.correction.nyu40 = chair
    qtbot.mouseClick(w.viewport, Qt.MouseButton.LeftButton, pos=a_px)
    qtbot.waitUntil(lambda: _class_pixels(w, chair) > 50, timeout=MS)
    legend.item(legend.ids.index(chair), 0).setCheckState(Qt.CheckState.Unchecked)  # the user unticks it
    assert legend.hidden == {chair}
    qtbot.waitUntil(lambda: _class_pixels(w, chair) == 0, timeout=MS)
    legend.set_hidden(set())
    qtbot.waitUntil(lambda: _class_pixels(w, chair) > 50, timeout=MS)
    legend.isolate(table)  # only tables: the chair-labelled surface goes
    assert legend.hidden == set(legend.ids) - {table}
    qtbot.waitUntil(lambda: _class_pixels(w, chair) == 0, timeout=MS)
    legend._context_menu(legend.visualItemRect(legend.item(0, 0)).center())
    show_all = next(a for a in legend.context_menu.actions() if a.text() == "Show all classes")
    assert any(a.text() == "Show only wall" for a in legend.context_menu.actions())
    show_all.trigger()
    legend.context_menu.close()
    assert legend.hidden == set()
    qtbot.waitUntil(lambda: _class_pixels(w, chair) > 50, timeout=MS)


def test_a_view_image_has_three_times_the_pixels_and_the_same_picture(make_window, qtbot, tmp_path):
    from PyQt6.QtGui import QImage

    w = make_window(viewport=full_detail())
    scan(qtbot, w, "synthetic:3", frames=6, timeout_s=MS / 1000)
    shown(qtbot, w, timeout_s=MS / 1000)
    w.panel.lighting_check.setChecked(False)
    path = w.files.save_view_image(str(tmp_path / "view.png"))
    assert path is not None and _messages(w).startswith("view image (")
    img = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB888)
    screen = pixels(w)
    assert (img.width(), img.height()) == (3 * screen.shape[1], 3 * screen.shape[0])
    a = np.frombuffer(img.constBits().asstring(img.sizeInBytes()), np.uint8)
    big = a.reshape(img.height(), img.bytesPerLine())[:, : 3 * img.width()].reshape(img.height(), img.width(), 3)
    small = big[1::3, 1::3]  # the same view: the surface covers the same pixels
    agree = np.mean(surface_mask(w, small) == surface_mask(w, screen))
    assert agree > 0.97 and surface_mask(w, screen).mean() > 0.05


def test_a_correction_click_off_the_surface_says_so(make_window, qtbot):
    w = make_window(viewport=full_detail())
    scan(qtbot, w, "synthetic:3", frames=4, timeout_s=MS / 1000)
    shown(qtbot, w, timeout_s=MS / 1000)
    qtbot.mouseClick(w.panel.correct_btn, Qt.MouseButton.LeftButton)
    for tool in ("region", "brush"):
        w.panel.tool_box.setCurrentIndex(w.panel.tool_box.findData(tool))
        w.status_bar.clearMessage()
        qtbot.mouseClick(w.viewport, Qt.MouseButton.LeftButton, pos=QPoint(2, 2))  # the background
        assert _messages(w) == "nothing to correct there: click on the scanned surface", tool
    assert w.undo.count() == 0  # nothing was corrected
