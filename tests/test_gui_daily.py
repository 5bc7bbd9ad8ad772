"""The app as a daily tool (issue 18, one test per broken item): the panel's File/Folder buttons, scan
settings checked before Start, continuing a loaded session, no work discarded without asking, a truthful
status bar, exports that write what was asked and say so, shortcuts whatever has focus, out-of-range
values clamped visibly. Every wait is on an event or a state (timeouts only bound failures)."""
from __future__ import annotations

import os

import pytest
from PyQt6.QtCore import Qt

from tests.gui_support import answerer, make_window, require_display, scan  # noqa: F401

require_display()
MS = 60_000  # bound on waits for work on a loaded machine (a failure, never a pace)


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("app.")]


def _activate(qtbot, w) -> None:
    w.activateWindow()  # shortcuts need an active window (Xvfb has no window manager to activate it)
    qtbot.waitUntil(w.isActiveWindow, timeout=MS)


def test_file_and_folder_buttons_open_their_dialogs(make_window, qtbot, tmp_path, monkeypatch):
    import app.file_ops as file_ops
    from PyQt6.QtWidgets import QPushButton

    rec, folder = tmp_path / "scan.db3", tmp_path / "dataset"
    folder.mkdir()
    monkeypatch.setattr(file_ops.QFileDialog, "getOpenFileName", lambda *a, **k: (str(rec), ""))
    monkeypatch.setattr(file_ops.QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    w = make_window()
    buttons = {b.text(): b for b in w.panel.findChildren(QPushButton)}
    qtbot.mouseClick(buttons["File…"], Qt.MouseButton.LeftButton)
    assert w.panel.source_spec() == str(rec)
    qtbot.mouseClick(buttons["Folder…"], Qt.MouseButton.LeftButton)
    assert w.panel.source_spec() == str(folder)


def test_depth_range_is_checked_before_start_and_backend_errors_read_plainly(make_window, qtbot):
    from app.messages import plain_error

    w = make_window()
    p = w.panel
    p.depth_min_spin.setValue(5.0)
    p.depth_max_spin.setValue(0.5)
    assert "Depth from" in p.depth_min_spin.toolTip()  # marked as entered
    qtbot.mouseClick(p.start_btn, Qt.MouseButton.LeftButton)
    assert len(w.errors) == 1 and "Depth from (5.00 m)" in w.errors[0] and "Depth to (0.50 m)" in w.errors[0]
    assert w.status.state == "idle" and w.worker.source is None  # never started
    p.depth_min_spin.setValue(0.1)
    p.depth_max_spin.setValue(0.3)  # valid, but the demo room lies farther: no frame has depth in range
    w.errors.clear()
    w.panel.select_source("synthetic:1")
    w.start_scan(3)
    qtbot.waitUntil(lambda: w.status.frames >= 3 and w.status.state != "running", timeout=MS)
    assert not w.errors and w.status.frames_integrated == 0  # skipped, not fatal, nothing fused
    raw = "\x1b[1;31m[Open3D Error] (void f(int)) /src/open3d/Voxel.cpp:186: Something broke\n\x1b[0;m"
    assert plain_error(RuntimeError(raw)) == "Something broke"


def test_continuing_a_loaded_session_fuses_the_source_again(make_window, qtbot, tmp_path, caplog, answerer):
    w = make_window(poses="track", confirm_discard=True)
    w.panel.select_source("synthetic:3")
    w.start_scan(30)
    qtbot.waitUntil(lambda: w.status.frames >= 6, timeout=MS)
    path = tmp_path / "part.session"
    job = w.files.save_session(str(path))  # partway, while scanning
    qtbot.waitUntil(lambda: job.join(0) and path.exists(), timeout=MS)
    qtbot.waitUntil(lambda: w.status.unsaved_frames > 0, timeout=MS)  # more frames after the save
    qtbot.mouseClick(w.panel.stop_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.state == "idle", timeout=MS)
    answerer.expect("Discard")  # the frames fused after the save
    w.files.load_session(str(path))
    qtbot.waitUntil(lambda: w.status.continuable and w.viewport.n_chunks > 0, timeout=MS)
    loaded = w.status.frames
    assert loaded >= 6 and w.status.unsaved_frames == 0 and len(answerer.asked) == 1
    w.start_scan(12)  # the same source from its first frame: relocalises into the saved model
    qtbot.waitUntil(lambda: w.status.state == "finished", timeout=MS)
    s = w.status
    assert s.frames == loaded + 12 and s.frames_integrated >= loaded + 11 and s.frames_dropped <= 1, s
    assert s.unsaved_frames >= 11 and s.tracking == "ok" and w.errors == []
    assert "relocalised: scanning resumes" in _messages(caplog)
    assert len(answerer.asked) == 1  # Start into a loaded session discards nothing


def test_no_work_is_discarded_without_asking(make_window, qtbot, tmp_path, monkeypatch, answerer):
    import app.file_ops as file_ops

    saved = tmp_path / "kept.session"
    monkeypatch.setattr(file_ops.QFileDialog, "getSaveFileName", lambda *a, **k: (str(saved), ""))
    w = make_window(confirm_discard=True)
    scan(qtbot, w, "synthetic:1", frames=3)
    answerer.expect("Cancel", "Cancel", "Cancel")
    assert not w.close() and w.isVisible()                      # Quit: cancelled
    qtbot.mouseClick(w.panel.reset_btn, Qt.MouseButton.LeftButton)  # Reset: cancelled
    w.start_scan(2)                                             # Start anew: cancelled
    assert [q.split(".")[1].split()[0] for q in answerer.asked] == ["Quitting", "Reset", "Starting"]
    assert w.status.frames == 3 and w.viewport.n_chunks > 0 and w.status.state == "finished"
    answerer.expect("Save")  # Reset: save first, then reset
    qtbot.mouseClick(w.panel.reset_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: saved.exists() and w.viewport.n_chunks == 0 and w.status.frames == 0, timeout=MS)
    w.files.load_session(str(saved))  # nothing unsaved: no question
    qtbot.waitUntil(lambda: w.status.continuable and w.viewport.n_chunks > 0, timeout=MS)
    w.start_scan(2)  # continues the loaded session: no question
    qtbot.waitUntil(lambda: w.status.state == "finished" and w.status.unsaved_frames > 0, timeout=MS)
    assert len(answerer.asked) == 4
    answerer.expect("Cancel")
    assert w.files.load_session(str(saved)) is None  # Open session: cancelled
    assert "Opening kept.session" in answerer.asked[-1]
    answerer.expect("Discard")
    _activate(qtbot, w)
    qtbot.keyClick(w.viewport, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)  # File > Quit
    qtbot.waitUntil(lambda: w._closed, timeout=MS)
    assert "Quitting" in answerer.asked[-1] and len(answerer.asked) == 6


def test_status_bar_tells_the_truth(make_window, qtbot, tmp_path):
    w = make_window(nets=True)
    labels = w.status_bar.labels
    assert labels["tracking"].text() == "tracking –"  # no frame yet: no claim
    w.panel.select_source("synthetic:2")
    w.start_scan(200)
    # long enough for the nets to refresh chunks whose neighbours changed (once a busy loop, queue never 0)
    qtbot.waitUntil(lambda: w.status.frames >= 30 and "fps" in labels["fusion"].text(), timeout=MS)
    assert labels["tracking"].text() == "tracking ok"
    qtbot.mouseClick(w.panel.stop_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.state == "idle", timeout=MS)
    assert "fps" not in labels["fusion"].text()  # nothing runs
    qtbot.waitUntil(lambda: w.status.nets.get("enabled") and w.status.nets.get("queue") == 0
                    and labels["nets"].text().startswith("nets: queue 0"), timeout=MS)  # the nets finish
    frames = w.status.frames
    path = tmp_path / "scan.session"
    job = w.files.save_session(str(path))
    qtbot.waitUntil(lambda: job.join(0) and path.exists(), timeout=MS)
    w.reset_scan()
    qtbot.waitUntil(lambda: w.status_bar.currentMessage().startswith("reset: the model is empty"), timeout=MS)
    assert w.status.frames == 0 and w.panel.color_thumb.pixmap().isNull()
    w.files.load_session(str(path))
    qtbot.waitUntil(lambda: w.status.continuable, timeout=MS)
    assert w.status.frames == frames and f"{frames} frames" in labels["fusion"].text()
    assert w.windowTitle().endswith("scan.session") and labels["tracking"].text() == "tracking –"
    assert w.panel.color_thumb.pixmap().isNull()  # no stale camera image of an earlier scan


def test_export_writes_what_was_asked_and_says_so(make_window, qtbot, tmp_path):
    w = make_window()
    scan(qtbot, w, "synthetic:1", frames=3)
    out = tmp_path / "out"
    out.mkdir()

    def export(path, **kw):
        job = w.files.export(str(path), **kw)
        qtbot.waitUntil(lambda: w.status_bar.currentMessage().startswith("exported " + path.name), timeout=MS)
        qtbot.waitUntil(lambda: job.join(0), timeout=MS)
        assert w.errors == []
        return w.status_bar.currentMessage()

    msg = export(out / "room.ply")
    assert sorted(os.listdir(out)) == ["room.ply"] and msg == "exported room.ply"
    bar = w.status_bar
    assert bar.message_fits()  # the whole message shows
    for key in ("legend", "trajectory"):  # File > Export also
        w.actions_by_name[f"export_{key}"].trigger()
    msg = export(out / "room2.obj")
    assert msg == "exported room2.obj with room2.mtl, room2_legend.json, room2_trajectory.txt"
    assert sorted(os.listdir(out)) == ["room.ply", "room2.mtl", "room2.obj", "room2_legend.json",
                                       "room2_trajectory.txt"]
    assert bar.message_fits()
    assert w.files.export(str(tmp_path / "missing" / "room.glb")) is None
    assert "--out" not in w.errors[-1] and "does not exist" in w.errors[-1]
    if os.geteuid() != 0:  # root may write anywhere
        out.chmod(0o500)
        assert w.files.export(str(out / "room3.ply")) is None and "not writable" in w.errors[-1]
        out.chmod(0o700)


def test_shortcuts_work_whatever_has_focus_except_while_typing(make_window, qtbot, monkeypatch):
    import app.file_ops as file_ops

    asked = []

    def cancelled_dialog(parent, caption, *args, **kwargs):
        asked.append(caption)
        return "", ""

    monkeypatch.setattr(file_ops.QFileDialog, "getSaveFileName", cancelled_dialog)
    w = make_window()
    p, spin = w.panel, w.panel.voxel_spin
    _activate(qtbot, w)
    for widget, key, mode in ((spin, Qt.Key.Key_3, "confidence"), (p.legend, Qt.Key.Key_1, "rgb"),
                              (p.mode_box, Qt.Key.Key_2, "labels"), (p.depth_max_spin, Qt.Key.Key_4, "completion")):
        widget.setFocus(Qt.FocusReason.MouseFocusReason)
        qtbot.waitUntil(widget.hasFocus, timeout=MS)
        qtbot.keyClick(widget, key)
        assert w.viewport.mode == mode, (widget, mode)
    assert spin.value() == 2.0 and p.depth_max_spin.value() == 4.0  # no digit went into a spin box
    spin.setFocus(Qt.FocusReason.MouseFocusReason)
    qtbot.keyClick(spin, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)  # File > Export
    assert asked == ["Export labeled mesh"]
    qtbot.mouseClick(spin.lineEdit(), Qt.MouseButton.LeftButton)  # into the text: typing
    spin.lineEdit().selectAll()
    qtbot.keyClicks(spin, "3")
    qtbot.keyClick(spin, Qt.Key.Key_Return)
    assert spin.value() == 3.0 and w.viewport.mode == "completion"  # typed, not a shortcut
    qtbot.keyClick(spin, Qt.Key.Key_1)  # Enter ended the typing
    assert w.viewport.mode == "rgb" and spin.value() == 3.0


@pytest.mark.parametrize("typed, used", [("0.1", 0.4), ("25", 10.0)])
def test_out_of_range_voxel_size_is_clamped_visibly(make_window, qtbot, typed, used):
    w = make_window()
    spin = w.panel.voxel_spin
    _activate(qtbot, w)
    spin.setFocus(Qt.FocusReason.TabFocusReason)  # reached with Tab: typing
    qtbot.waitUntil(spin.hasFocus, timeout=MS)
    spin.lineEdit().selectAll()
    qtbot.keyClicks(spin, typed)
    qtbot.keyClick(spin, Qt.Key.Key_Return)
    assert spin.value() == used and w.viewport.mode == "labels"
    qtbot.waitUntil(lambda: w.status_bar.currentMessage().startswith("Voxel size"), timeout=MS)
    msg = w.status_bar.currentMessage()
    assert f"Voxel size {typed} cm" in msg and f"{used:.1f} cm" in msg and "0.4–10.0 cm" in msg, msg
    assert w._pipeline_config().volume.voxel_size_m == pytest.approx(used / 100)


def test_the_panel_says_what_the_nets_were_trained_on(make_window):
    w = make_window()
    note = w.panel.nets_note
    assert note.isVisibleTo(w.panel) and "synthetic rooms only" in note.text() and "real" in note.text()
    assert w.panel.nets_check.toolTip() == note.text()
