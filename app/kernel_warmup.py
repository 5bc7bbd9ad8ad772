"""Owns preparing the compiled kernels when the window opens (`fusion.warmup`), on a thread of its own,
with a busy bar in the status bar while it takes longer than a moment (most of a minute on the first
start after an install, a second or two afterwards). A scan started meanwhile simply waits for the
kernels it needs. Thread: created and read on the GUI thread; the work runs on its own daemon thread."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from PyQt6.QtCore import QObject, QTimer, pyqtSignal

log = logging.getLogger(__name__)
BUSY_TEXT = "preparing compiled kernels (slow on the first start only)…"


@dataclass(frozen=True)
class KernelWarmupConfig:
    enabled: bool = True
    show_after_ms: int = 500   #: the busy bar appears only for work longer than this


class KernelWarmup(QObject):
    """Runs `fusion.warmup.warm_kernels` once; `finished(seconds)` on the GUI thread (-1 on failure)."""

    finished = pyqtSignal(float)

    def __init__(self, status_bar, config: KernelWarmupConfig = KernelWarmupConfig(), parent=None):
        super().__init__(parent)
        self.status_bar, self.config = status_bar, config
        self.seconds: float | None = None  #: set when done
        self.finished.connect(self._done)
        self._thread = threading.Thread(target=self._run, name="kernel-warmup", daemon=True)

    def start(self) -> None:
        self._thread.start()
        QTimer.singleShot(self.config.show_after_ms, self._show_busy)

    def _run(self) -> None:  # warm-up thread
        from fusion.warmup import warm_kernels

        try:
            seconds = warm_kernels()
        except Exception:  # noqa: BLE001 - the scan compiles what it needs anyway
            log.exception("preparing the compiled kernels failed; the first scan will compile them")
            seconds = -1.0
        try:
            self.finished.emit(seconds)
        except RuntimeError:  # the window closed meanwhile (and Qt deleted this object)
            pass

    def _show_busy(self) -> None:
        if self.seconds is None:
            self.status_bar.set_busy("kernels", BUSY_TEXT)

    def _done(self, seconds: float) -> None:
        self.seconds = seconds
        self.status_bar.set_busy("kernels", None)
