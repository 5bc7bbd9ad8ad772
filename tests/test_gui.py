"""The desktop app in a real window (Xvfb + OpenGL): the demo scan shows label colours, colour modes
change the pixels, a recording can be paused, resumed, reset and stopped, and closing leaves no thread."""
from __future__ import annotations

import logging

import numpy as np
from PyQt6.QtCore import Qt

from nets.segment_vote import RefinedLabels
from tests.gui_support import make_window, palette_share, pixels, require_display, scan, shown, surface_mask  # noqa: F401

require_display()
log = logging.getLogger(__name__)


def test_demo_scan_shows_label_colours_and_modes_change_pixels(make_window, qtbot):
    w = make_window(nets=True)
    scan(qtbot, w, "synthetic:3", frames=16)
    log.info("paint while scanning: %s, draw %s", w.viewport.paint_stats(), w.viewport.last_draw)
    shown(qtbot, w)
    present = set(w.nets.store.class_counts())
    assert len(present) >= 2
    qtbot.waitUntil(lambda: w.panel.legend.counts == w.nets.store.class_counts(), timeout=30000)
    w.panel.lighting_check.setChecked(False)  # flat colours: label pixels are exactly the palette
    images = {}
    for mode in ("labels", "rgb", "confidence", "completion"):
        w.panel.mode_box.setCurrentIndex(w.panel.mode_box.findData(mode))
        assert w.viewport.mode == mode
        images[mode] = pixels(w)
    mask = surface_mask(w, images["labels"])
    assert mask.mean() > 0.05, "the scan is not in view"
    share, seen = palette_share(images["labels"], mask, present)
    assert share > 0.6 and len(seen) >= 2, (share, seen)
    rgb_share, _ = palette_share(images["rgb"], mask, present)
    assert rgb_share < share / 3
    changed = np.any(images["rgb"] != images["labels"], axis=2)[mask].mean()
    assert changed > 0.5
    conf = images["confidence"][mask].astype(int)
    assert np.mean(conf[:, 2] <= 52) > 0.8  # the red-yellow-green ramp has little blue
    assert np.any(images["confidence"] != images["labels"], axis=2)[mask].mean() > 0.3
    if w.viewport._completion_buf is not None and w.viewport._completion_buf.count:
        assert np.any(images["completion"] != images["labels"])
    w.panel.lighting_check.setChecked(True)
    w.panel.mode_box.setCurrentIndex(w.panel.mode_box.findData("labels"))
    assert np.any(pixels(w) != images["labels"], axis=2)[mask].mean() > 0.3  # shading


def test_recording_pause_resume_reset_stop_and_close(make_window, qtbot, tmp_path):
    from tests.scenes import SMALL, orbit
    from tests.test_realsense import make_recording

    from app.fusion_worker import FusionWorkerConfig

    # frame-exact replay (also the default): a software-device recording was written in
    # milliseconds, so a paced (real-time) replay would skip almost all of it
    path = make_recording(tmp_path / "scan.db3", orbit(150, SMALL, step_deg=0.5))
    w = make_window(poses="track", worker=FusionWorkerConfig(real_time_recordings=False))
    w.use_source(str(path))
    p = w.panel
    qtbot.mouseClick(p.start_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.frames >= 8 and w.viewport.n_chunks > 0, timeout=10000)
    assert w.status.source == str(path) and w.status.tracking == "ok"
    qtbot.mouseClick(p.pause_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.state == "paused", timeout=2000)
    paused_at = w.status.frames
    for _ in range(3):  # a few rounds of the fusion loop later (a state, not a time) nothing was fused
        fut = w.worker.call(lambda worker: worker.frames_read)
        qtbot.waitUntil(fut.done, timeout=10000)
        assert fut.result() == paused_at
    assert p.pause_btn.text() == "Resume"
    qtbot.mouseClick(p.pause_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.state == "running" and w.status.frames > paused_at + 2, timeout=5000)
    before = w.status.frames
    qtbot.mouseClick(p.reset_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.frames < before, timeout=3000)  # a fresh model, same source
    qtbot.waitUntil(lambda: w.status.frames >= 3 and w.viewport.n_chunks > 0, timeout=5000)
    qtbot.mouseClick(p.stop_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.status.state == "idle", timeout=3000)
    assert not p.stop_btn.isEnabled() and w.viewport.n_chunks > 0  # the model stays after Stop
    assert w.errors == []


def test_unreadable_file_and_missing_camera_are_messages_not_crashes(make_window, qtbot, tmp_path):
    bad = tmp_path / "broken.db3"
    bad.write_bytes(b"not a recording at all")
    w = make_window()
    for spec, words in ((str(bad), "not a RealSense recording"), ("realsense:0000-no-such-camera", "no RealSense camera")):
        w.errors.clear()
        w.use_source(spec)
        w.start_scan()
        qtbot.waitUntil(lambda: bool(w.errors), timeout=5000)
        assert words in w.errors[0] and w.status.state == "idle"
    w.errors.clear()
    scan(qtbot, w, "synthetic:1", frames=3)  # the app goes on


def test_autosave_during_a_scan_writes_a_session_that_loads(make_window, qtbot, tmp_path):
    """The app autosaves while it scans (the copy on the fusion thread, the write beside it); the
    autosave holds the volume, the trajectory and the labels."""
    from app.fusion_worker import FusionWorkerConfig
    from storage.autosave import AutosaveConfig
    from storage.session import load_session

    folder = tmp_path / "autosave"
    w = make_window(nets=True, worker=FusionWorkerConfig(autosave=AutosaveConfig(interval_s=0.3, folder=folder)))
    scan(qtbot, w, "synthetic:3", frames=24)
    saver = w.worker._autosaver
    qtbot.waitUntil(lambda: saver.saves >= 1 and not saver.writing, timeout=20000)
    assert saver.failures == 0 and saver.last_pause_s is not None
    loaded = load_session(saver.path)
    try:
        assert loaded.pipeline.volume.n_blocks > 0 and 0 < len(loaded.poses) <= 24
        assert loaded.settings.get("autosave") is True
    finally:
        loaded.pipeline.close()


def test_an_idle_window_repaints_nothing(make_window, qtbot):
    """Once a scan has finished and nothing changes, the status snapshots that keep arriving repaint no
    widget: not the 3D view, not the status bar, not the camera thumbnails (idle CPU near zero)."""
    from PyQt6.QtCore import QEvent, QObject
    from PyQt6.QtWidgets import QApplication

    class PaintCounter(QObject):
        def __init__(self, watched):
            super().__init__()
            self.watched, self.paints = watched, []

        def eventFilter(self, obj, ev):
            if ev.type() == QEvent.Type.Paint and obj in self.watched:
                self.paints.append(obj)
            return False

    w = make_window()
    scan(qtbot, w, "synthetic:3", frames=6)
    applied = []
    w.snapshot_applied.connect(applied.append)
    qtbot.waitUntil(lambda: len(applied) >= 2, timeout=20000)  # what the scan's end changed has landed
    watched = [*w.status_bar.labels.values(), w.panel.color_thumb, w.panel.depth_thumb]
    counter, view_paints = PaintCounter(watched), len(w.viewport.paint_ms)
    QApplication.instance().installEventFilter(counter)
    try:
        start = len(applied)
        qtbot.waitUntil(lambda: len(applied) >= start + 3, timeout=20000)  # three status-only snapshots
    finally:
        QApplication.instance().removeEventFilter(counter)
    assert all(s.chunks == {} and s.color_thumb is None for s in applied[start:])
    assert counter.paints == [] and len(w.viewport.paint_ms) == view_paints


def test_a_finished_scan_gets_the_final_labels(make_window, qtbot):
    """When the source ends, the whole scene is relabeled as `reconstruct --labels final` does (four
    quarter turns averaged) and the user is told when it is done."""
    w = make_window(nets=True)
    scan(qtbot, w, "synthetic:3", frames=4)
    qtbot.waitUntil(lambda: w.status.nets.get("enabled"), timeout=30000)  # the model has loaded: the next scan labels
    said = []
    w.snapshot_applied.connect(lambda s: said.extend(e.text for e in s.events))
    w.start_scan(12)

    def final_after_the_end() -> str | None:
        end = [i for i, t in enumerate(said) if t == "source finished after 12 frames"]
        return next((t for t in said[end[0]:] if t.startswith("final labels:")), None) if end else None

    sent = []  # mesh chunks the view received after the final pass
    w.snapshot_applied.connect(lambda s: final_after_the_end() and sent.extend(s.chunks))
    qtbot.waitUntil(lambda: final_after_the_end() is not None, timeout=60000)
    assert "4 quarter turns" in final_after_the_end()
    qtbot.waitUntil(lambda: not w.status.nets.get("final_pass"), timeout=20000)  # its busy bar goes
    assert w.nets.store.class_counts()
    # the view then shows what an export writes (labels refined at surface segments) on every chunk
    p = w.worker.pipeline
    qtbot.waitUntil(lambda: set(sent) >= set(p.mesher.chunks), timeout=20000)
    final = p.final_mesh()
    exported = RefinedLabels.of_mesh(final, w.nets.store.mesh_labels(final), 0)
    refined_somewhere = False
    for key in p.mesher.chunks:
        chunk = p.mesher.chunk_mesh(key)
        shown = w.nets.display_labels(chunk)[0]
        assert np.array_equal(shown, exported.overlay(np.zeros_like(shown), chunk.vertex_keys))
        refined_somewhere |= not np.array_equal(shown, w.nets.store.labels_at(chunk.positions_m)[0])
    assert refined_somewhere
