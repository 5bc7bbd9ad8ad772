"""The app explains itself (issue 18): a Help menu (shortcuts read from the actions, the model card,
About), tooltips with allowed ranges, Start disabled while a scan runs, a crashed run's autosave
offered in a dialog that recovers it, and a layout that fits 1280x720. Every wait is on a state (timeouts only bound failures)."""
from __future__ import annotations

import functools
import json
import subprocess
import sys

from PyQt6.QtCore import Qt

from tests.gui_support import make_window, require_display  # noqa: F401

require_display()
MS = 60_000  # bound on waits for work on a loaded machine (a failure, never a pace)


def test_help_lists_every_shortcut_and_shows_the_model_card_and_versions(make_window, qtbot):
    import open3d
    from PyQt6.QtGui import QAction
    from PyQt6.QtWidgets import QTableWidget, QTextBrowser

    from app.help_menu import shortcut_rows

    w = make_window()
    acts = w.actions_by_name
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow, timeout=MS)
    qtbot.keyClick(w, Qt.Key.Key_F1)
    qtbot.waitUntil(lambda: getattr(w, "help_dialog", None) is not None and w.help_dialog.isVisible(), timeout=MS)
    rows = set(shortcut_rows(w.findChildren(QAction)))
    assert ("Start", "Ctrl+Return") in rows and ("Export labeled mesh", "Ctrl+E") in rows
    assert ("Undo", "Ctrl+Z") in rows and ("Keyboard shortcuts", "F1") in rows
    table = w.help_dialog.findChild(QTableWidget)
    shown = {(table.item(r, 0).text(), table.item(r, 1).text()) for r in range(table.rowCount())}
    assert shown == rows
    w.help_dialog.close()
    acts["model_card"].trigger()
    qtbot.waitUntil(lambda: w.help_dialog.isVisible(), timeout=MS)
    assert "synthetic" in w.help_dialog.findChild(QTextBrowser).toPlainText()
    w.help_dialog.close()
    acts["about"].trigger()
    qtbot.waitUntil(lambda: w.help_dialog.isVisible(), timeout=MS)
    assert f"Open3D {open3d.__version__}" in w.help_dialog.findChild(QTextBrowser).toPlainText()
    w.help_dialog.close()


def test_controls_have_tooltips_with_ranges_and_start_waits_for_the_scan_to_end(make_window, qtbot):
    from app.side_panel import TOOLTIPS

    w = make_window()
    p = w.panel
    for name in TOOLTIPS:
        assert getattr(p, name).toolTip(), name
    assert "range 0.4–10.0 cm" in p.voxel_spin.toolTip() and "Edge of a TSDF voxel" in p.voxel_spin.toolTip()
    assert p.start_btn.isEnabled()
    p.select_source("synthetic:2")
    w.start_scan(400)
    qtbot.waitUntil(lambda: w.status.state == "running" and w.status.frames >= 1, timeout=MS)
    assert not p.start_btn.isEnabled() and not w.actions_by_name["start"].isEnabled()
    qtbot.mouseClick(p.stop_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.state == "idle", timeout=MS)
    assert p.start_btn.isEnabled() and w.actions_by_name["start"].isEnabled()


def _crashed_autosave(folder) -> None:
    """A real session autosaved by a 'process' that has since died: what a crash leaves behind."""
    from fusion.pipeline import FusionPipeline, PipelineConfig
    from fusion.volume import VolumeConfig
    from storage.autosave import AutosaveConfig, Autosaver
    from storage.session import capture_session, write_session
    from tests.scenes import SMALL, orbit

    p = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.04, device="cpu")))
    stamps, poses = [], []
    for f in orbit(4, SMALL):
        r = p.process(f, T_start=f.T_world_cam_gt)
        stamps.append(r.timestamp_s)
        poses.append(r.T_world_cam)
    capture = functools.partial(write_session, capture=capture_session(p, stamps, poses, {"kind": "test"}))
    s = Autosaver(lambda: capture, AutosaveConfig(interval_s=1.0, folder=folder), name="scan-crashed")
    s.start(0.0)
    assert s.maybe_save(1.0) and s.wait()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    s.marker_path.write_text(json.dumps(json.loads(s.marker_path.read_text()) | {"pid": dead.pid}))
    p.close()


def test_a_crashed_scan_is_offered_in_a_dialog_that_recovers_it(make_window, qtbot, tmp_path, monkeypatch):
    from storage.autosave import default_folder, find_recoverable

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    _crashed_autosave(default_folder())
    w = make_window(recovery_dialog=True)
    qtbot.waitUntil(lambda: getattr(w, "recovery_dialog", None) is not None and w.recovery_dialog.isVisible(),
                    timeout=MS)
    assert "not closed cleanly" in w.recovery_dialog.text()
    recover = next(b for b in w.recovery_dialog.buttons() if b.text() == "Recover")
    qtbot.mouseClick(recover, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.continuable and w.status.frames == 4, timeout=MS)
    assert find_recoverable() == []  # recovered: no longer offered


def test_the_window_fits_1280x720_with_the_legend_and_camera_images_whole(make_window, qtbot):
    import numpy as np

    w = make_window()
    w.resize(1280, 720)
    qtbot.waitUntil(lambda: w.size().width() == 1280 and w.size().height() == 720, timeout=MS)
    p, legend = w.panel, w.panel.legend
    qtbot.waitUntil(lambda: p.verticalScrollBar().maximum() == 0, timeout=MS)  # the panel needs no scrolling
    last = legend.visualItemRect(legend.item(len(legend.ids) - 1, 0))
    assert legend.verticalScrollBar().maximum() == 0 and last.bottom() <= legend.viewport().height()
    assert w.viewport.width() >= w.width() // 2  # the model gets the most room
    p.set_thumbnails(np.full((120, 160, 3), 90, np.uint8), np.full((120, 160, 3), 200, np.uint8))
    for lab in (p.color_thumb, p.depth_thumb):
        pix = lab.pixmap()
        assert (pix.width(), pix.height()) == (lab.width(), lab.height())  # scaled whole, not cropped


def test_camera_details_show_the_intrinsics_and_depth_scale(make_window, qtbot):
    from app.camera_info import camera_rows
    from tests.gui_support import scan

    rs = {"kind": "realsense", "device": {"name": "Intel RealSense D435", "serial": "123", "firmware": "5.13"},
          "depth_scale_m_per_unit": 0.001, "fps": 30}
    rows = dict(camera_rows(rs, (615.0, 615.0, 320.0, 240.0, 640, 480)))
    assert rows["Device"] == "Intel RealSense D435" and rows["Serial number"] == "123"
    assert rows["Depth scale"] == "1 mm per unit (1000 units per metre)" and rows["Frame rate"] == "30 frames/s"
    assert rows["Field of view"] == "55.0° x 42.6°"
    w = make_window()
    scan(qtbot, w, "synthetic:2", 3)
    w.actions_by_name["camera_info"].trigger()
    qtbot.waitUntil(lambda: w.camera_info_dialog.rows is not None, timeout=MS)
    shown = dict(w.camera_info_dialog.rows)
    fx, fy, cx, cy, width, height = w.last_intrinsics
    assert shown["Resolution"] == f"{width} x {height} px" and shown["Focal length"].startswith(f"fx {fx:.2f} px")
    w.camera_info_dialog.close()


def test_kernels_are_prepared_when_the_window_opens_with_a_busy_bar(make_window, qtbot):
    from app.kernel_warmup import BUSY_TEXT, KernelWarmupConfig

    w = make_window(kernels=KernelWarmupConfig(enabled=True, show_after_ms=0))
    bar = w.status_bar
    qtbot.waitUntil(lambda: w.warmup.seconds is not None or bar.busy_bar.isVisible(), timeout=MS)
    if w.warmup.seconds is None:  # still running: the user sees why the first start is slow
        assert bar.busy_label.text() == BUSY_TEXT
    qtbot.waitUntil(lambda: w.warmup.seconds is not None, timeout=5 * MS)
    assert w.warmup.seconds > 0 and not bar.busy_bar.isVisible() and not bar.busy_label.isVisible()


def test_an_autosave_being_written_shows_a_busy_bar(make_window, qtbot, tmp_path, monkeypatch):
    import threading

    import app.fusion_worker as fusion_worker
    from app.fusion_worker import FusionWorkerConfig
    from storage.autosave import AutosaveConfig

    release, started = threading.Event(), threading.Event()

    def held_write(path, capture):  # the autosave's write, held until the test has seen the bar
        started.set()
        release.wait(MS / 1000)
        path.write_bytes(b"session")

    monkeypatch.setattr(fusion_worker, "write_session", held_write)
    w = make_window(worker=FusionWorkerConfig(autosave=AutosaveConfig(interval_s=0.3, folder=tmp_path / "auto")))
    bar = w.status_bar
    w.panel.select_source("synthetic:2")
    w.start_scan(400)
    qtbot.waitUntil(started.is_set, timeout=MS)
    qtbot.waitUntil(lambda: bar.busy_label.isVisible() and bar.busy_label.text() == "autosaving…", timeout=MS)
    release.set()
    qtbot.waitUntil(lambda: not bar.busy_label.isVisible(), timeout=MS)
    qtbot.mouseClick(w.panel.stop_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.state == "idle", timeout=MS)


def test_background_work_shows_in_one_busy_bar_until_all_of_it_ends(make_window):
    from app.snapshots import DisplaySnapshot, FusionStatus

    w = make_window()
    bar = w.status_bar
    w.apply_snapshot(DisplaySnapshot(seq=1, status=FusionStatus(nets={"loading": True}, autosaving=True)))
    assert bar.busy_bar.isVisible() and bar.busy_label.text() in ("autosaving…", "loading the labeling nets…")
    w.apply_snapshot(DisplaySnapshot(seq=2, status=FusionStatus(nets={"loading": True})))
    assert bar.busy_bar.isVisible() and bar.busy_label.text() == "loading the labeling nets…"
    w.apply_snapshot(DisplaySnapshot(seq=3, status=FusionStatus(nets={"enabled": True})))
    assert not bar.busy_bar.isVisible() and not bar.busy_label.isVisible()
