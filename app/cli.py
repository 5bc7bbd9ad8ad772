"""Owns the `gui` command: check for a display, set Qt's OpenGL surface format, open the main window on
a source, and for scripts stop after N frames, write a screenshot of the whole window and exit."""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fusion.errors import UserError

log = logging.getLogger(__name__)
HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc", "eglfs", "linuxfb")


@dataclass(frozen=True)
class ScriptConfig:
    """How a scripted run (--exit-after-frames) ends."""

    settle_timeout_s: float = 20.0   #: after the last frame, wait at most this long for the nets' queue to drain
    poll_ms: int = 100               #: how often the end condition is checked


def check_display() -> None:
    """Raise UserError (one line) when Qt would find no display to open a window on."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if sys.platform.startswith("linux") and not platform.startswith(HEADLESS_PLATFORMS):
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise UserError("no display to open the window on (DISPLAY is not set); on a headless machine run "
                            "'xvfb-run -a python main.py gui ...', or use 'python main.py reconstruct'")


def configure_gl() -> None:
    """OpenGL 3.3 core with a depth buffer for every GL widget; call before QApplication exists."""
    from PyQt6.QtGui import QSurfaceFormat

    fmt = QSurfaceFormat()
    fmt.setVersion(3, 3)
    fmt.setProfile(QSurfaceFormat.OpenGLContextProfile.CoreProfile)
    fmt.setDepthBufferSize(24)
    fmt.setSamples(0)  # picking reads the depth buffer back: no multisampling
    QSurfaceFormat.setDefaultFormat(fmt)


class ScriptedExit:
    """Ends a scripted run: after `frames` frames (or the end of the source) and the nets settling, writes
    the screenshot and closes the window. Thread: GUI thread."""

    def __init__(self, window, frames: int | None, screenshot: Path | None, config: ScriptConfig = ScriptConfig()):
        from PyQt6.QtCore import QTimer

        self.window, self.frames, self.screenshot, self.config = window, frames, screenshot, config
        self.done_at: float | None = None
        self.timer = QTimer(window)
        self.timer.timeout.connect(self._check)
        self.timer.start(config.poll_ms)

    def _check(self) -> None:
        s = self.window.status
        finished = s.state == "finished" or (self.frames is not None and s.frames >= self.frames)
        failed = bool(self.window.errors) and s.state in ("idle", "finished")
        if not (finished or failed):
            return
        if self.done_at is None:
            self.done_at = time.monotonic()
        busy = s.nets.get("loading") or (s.nets.get("enabled") and s.nets.get("queue", 0))
        if busy and time.monotonic() - self.done_at < self.config.settle_timeout_s and not failed:
            return
        self.timer.stop()
        if self.screenshot is not None:
            self.window.files.screenshot(str(self.screenshot))
        if self.frames is not None:
            self.window.close_discarding()  # a scripted run ends without asking


def run_gui(source: str | None = None, autostart: bool = False, exit_after_frames: int | None = None,
            screenshot: Path | None = None, config=None) -> int:
    """Open the app; returns the exit status (1 when a scripted run hit an error)."""
    check_display()
    if exit_after_frames is not None and exit_after_frames < 1:
        raise UserError("--exit-after-frames must be at least 1")
    if screenshot is not None and not Path(screenshot).resolve().parent.is_dir():
        raise UserError(f"--screenshot {screenshot}: folder does not exist")
    configure_gl()
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    from app.main_window import GuiConfig, MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = MainWindow(config or GuiConfig(error_dialogs=exit_after_frames is None))
    if source:
        window.panel.select_source(source)
    window.show()
    app.processEvents()
    if window.viewport.gl_error:
        window.show_event("error", window.viewport.gl_error, "update the graphics driver (Mesa 20 or newer)")
    if autostart:
        window.start_scan(exit_after_frames)
    script = ScriptedExit(window, exit_after_frames, screenshot) if (exit_after_frames or screenshot) else None
    signal.signal(signal.SIGINT, lambda *_: window.close())  # Ctrl-C closes cleanly
    tick = QTimer(window)  # lets Python see Ctrl-C while Qt's loop runs
    tick.timeout.connect(lambda: None)
    tick.start(250)
    app.exec()
    window.shutdown()
    del script
    return 1 if exit_after_frames is not None and window.errors else 0
