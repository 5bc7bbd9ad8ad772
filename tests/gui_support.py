"""Shared by the GUI tests: skip cleanly without a usable X display, build a real main window on a
temporary settings file, wait for scans and labels, and read viewport pixels."""
from __future__ import annotations

import dataclasses
import logging
import os
import socket

import numpy as np
import pytest


def display_problem() -> str | None:
    """Why a real GL window cannot be opened here (None when it can)."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform and platform != "xcb":
        return f"QT_QPA_PLATFORM={platform} gives no OpenGL context; the GUI tests need xcb (Xvfb)"
    display = os.environ.get("DISPLAY", "")
    if not display:
        return "no X display (DISPLAY is unset); `make test` starts Xvfb for the GUI tests"
    host, _, rest = display.partition(":")
    if not host or host == "unix":  # a local display: is an X server listening on its socket?
        sock = f"/tmp/.X11-unix/X{rest.split('.')[0]}"
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1.0)
                s.connect(sock)
        except OSError as exc:
            return f"no X server on DISPLAY={display} ({sock}: {exc.strerror or exc})"
    return None


def require_display() -> None:
    """Skip the calling test module unless a real window with OpenGL can be opened."""
    problem = display_problem()
    if problem:
        pytest.skip(problem, allow_module_level=True)
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    from app.cli import configure_gl

    configure_gl()


def gui_config(tmp_path, nets: bool = False, poses: str = "gt", voxel_m: float = 0.02, **overrides):
    """A GuiConfig for tests: settings in tmp_path, no dialogs (unless asked: confirm_discard=True or
    recovery_dialog=True), small voxels, the untrained model."""
    from app.kernel_warmup import KernelWarmupConfig
    from app.main_window import GuiConfig
    from app.nets_hookup import NetsConfig
    from fusion.pipeline import PipelineConfig
    from fusion.volume import VolumeConfig

    overrides.setdefault("confirm_discard", False)
    overrides.setdefault("recovery_dialog", False)
    overrides.setdefault("kernels", KernelWarmupConfig(enabled=False))  # the suite compiles them anyway
    return GuiConfig(settings_path=str(tmp_path / "settings.ini"), error_dialogs=False,
                     pipeline=PipelineConfig(volume=VolumeConfig(voxel_size_m=voxel_m), poses=poses),
                     nets=NetsConfig(enabled=nets, untrained=True), **overrides)


def full_detail():
    """A ViewportConfig that draws every chunk in full detail: pixel checks must not depend on the
    adaptive detail, which follows the paint time (and so the machine's load)."""
    from app.viewport import ViewportConfig

    return ViewportConfig(full_detail_triangles=10**9, budget_range=(10**9, 10**9))


@pytest.fixture
def make_window(qtbot, tmp_path, caplog):
    """make_window(**gui_config kwargs) -> a shown MainWindow; closed at teardown, which must leave no
    worker thread (the suite's autouse fixture checks) and no error in the log."""
    from app.main_window import MainWindow

    caplog.set_level(logging.INFO)
    windows = []

    def make(**kwargs):
        w = MainWindow(gui_config(tmp_path, **kwargs))
        w.resize(1100, 720)
        w.show()
        qtbot.waitExposed(w)
        windows.append(w)
        return w

    yield make
    from PyQt6.QtCore import QCoreApplication, QEvent

    for w in windows:
        if not w._closed:  # a test may have closed (and so deleted) it already
            w.close_discarding()
        w.worker._thread.join(timeout=120.0)  # the window waits 2 s; on a busy machine the thread may take longer
        assert not w.worker._thread.is_alive(), "fusion thread still running after close"
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)  # delete the windows now
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


def scan(qtbot, w, source: str, frames: int, timeout_s: float = 40.0) -> None:
    """Start `source` for `frames` frames and wait until they are fused."""
    w.panel.select_source(source)
    w.start_scan(frames)
    qtbot.waitUntil(lambda: w.status.state == "finished", timeout=int(timeout_s * 1000))
    assert w.status.frames == frames and w.errors == []


def shown(qtbot, w, timeout_s: float = 20.0) -> None:
    """Label everything (when the nets are on) and wait until labels and mesh chunks reached the GPU."""
    ms = int(timeout_s * 1000)
    if w.nets.enabled:
        qtbot.waitUntil(lambda: w.status.nets.get("enabled"), timeout=ms)  # the model has loaded
        fut = w.worker.call(lambda worker: worker.nets.drain())
        qtbot.waitUntil(fut.done, timeout=ms)
        assert fut.result() >= 0
    labels_on_screen(qtbot, w, timeout_s)


def labels_on_screen(qtbot, w, timeout_s: float = 60.0) -> None:
    """Wait until the window has applied a snapshot holding every label change made so far (a state the
    window reports, not a time), then upload everything to the GPU. The timeout only bounds a failure."""
    version = w.nets.store.version
    qtbot.waitUntil(lambda: w.label_version_shown >= version, timeout=int(timeout_s * 1000))
    w.viewport.flush_uploads()


def pixels(w) -> np.ndarray:
    """The viewport's framebuffer as (H,W,3) uint8."""
    from PyQt6.QtGui import QImage

    w.viewport.flush_uploads()
    img = w.viewport.grabFramebuffer().convertToFormat(QImage.Format.Format_RGB888)
    a = np.frombuffer(img.constBits().asstring(img.sizeInBytes()), np.uint8)
    return a.reshape(img.height(), img.bytesPerLine())[:, : 3 * img.width()].reshape(img.height(), img.width(), 3)


def background(w) -> np.ndarray:
    return np.round(np.array(w.viewport.config.background) * 255).astype(np.uint8)


def surface_mask(w, img: np.ndarray) -> np.ndarray:
    return np.any(np.abs(img.astype(int) - background(w)) > 2, axis=2)


def palette_share(img: np.ndarray, mask: np.ndarray, ids) -> tuple[float, set]:
    """Share of the surface pixels that are exactly the colour of one of `ids`, and those ids."""
    from fusion.classes import CLASSES

    seen, hit = set(), np.zeros(mask.shape, bool)
    for nyu in ids:
        match = np.all(img == np.array(CLASSES[nyu][1], np.uint8), axis=2) & mask
        if match.sum() > 20:
            seen.add(nyu)
        hit |= match
    return hit.sum() / max(mask.sum(), 1), seen


def with_fields(obj, **changes):
    return dataclasses.replace(obj, **changes)


class DialogAnswerer:
    """Answers the modal message boxes a test causes, in order, by clicking the named button ("Save",
    "Discard", "Cancel", "OK"). A QTimer looks for the box while its modal loop runs: a state check,
    not a fixed wait. A box nobody expected is cancelled and recorded, so a test never hangs on it."""

    def __init__(self, interval_ms: int = 20):
        from PyQt6.QtCore import QTimer

        self.answers: list[str] = []
        self.asked: list[str] = []        #: the text of every box seen
        self.unexpected: list[str] = []   #: boxes that came without an answer queued
        self.timer = QTimer()
        self.timer.timeout.connect(self._look)
        self.timer.start(interval_ms)

    def expect(self, *answers: str) -> "DialogAnswerer":
        self.answers.extend(answers)
        return self

    def _look(self) -> None:
        from PyQt6.QtWidgets import QApplication, QMessageBox

        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox) or not box.isVisible():
            return
        self.asked.append(box.text())
        if not self.answers:
            self.unexpected.append(box.text())
        name = self.answers.pop(0) if self.answers else "Cancel"
        button = next(b for b in box.buttons() if b.text().replace("&", "") == name)
        button.click()

    def stop(self) -> None:
        self.timer.stop()


@pytest.fixture
def answerer():
    a = DialogAnswerer()
    yield a
    a.stop()
    assert not a.unexpected, f"questions nobody expected: {a.unexpected}"
