"""Owns long work the user waits for (export, session save/load): named stages run on a job thread,
with a progress dialog and cancel between stages (and while waiting on another thread's result)."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable

from PyQt6.QtCore import QObject, Qt, pyqtSignal
from PyQt6.QtWidgets import QProgressDialog, QWidget

from app.messages import plain_error
from fusion.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobConfig:
    """How jobs wait and end."""

    poll_s: float = 0.05          #: cancel is checked this often while a stage waits on another thread
    join_timeout_s: float = 2.0   #: bound on joining a job thread
    show_after_ms: int = 300      #: the progress dialog appears only for work longer than this


class JobCancelled(Exception):
    """The user cancelled the job."""


class JobSignals(QObject):
    """Signals a job emits from its thread (delivered queued to the GUI thread)."""

    progress = pyqtSignal(int, str)
    done = pyqtSignal(object)
    failed = pyqtSignal(str)


class Job:
    """Stages `(label, fn(job) -> None)` run in order on the thread named "job-<name>"; `job.ctx` carries
    results between them. Thread: start/cancel/join from the GUI thread; stages on the job thread."""

    def __init__(self, name: str, stages: list[tuple[str, Callable]], cancellable: bool = True,
                 config: JobConfig = JobConfig()):
        self.name, self.stages, self.cancellable, self.config = name, stages, cancellable, config
        self.ctx: dict = {}
        self.signals = JobSignals()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"job-{name}", daemon=True)
        self.on_cancel: Callable[[dict], None] | None = None  #: cleanup when cancelled (job thread)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        if self.cancellable:
            self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def join(self, timeout_s: float | None = None) -> bool:
        if self._thread.ident is not None:
            self._thread.join(self.config.join_timeout_s if timeout_s is None else timeout_s)
        return not self._thread.is_alive()

    def check(self) -> None:
        """Raise JobCancelled when the user cancelled (stages call it between steps)."""
        if self._cancel.is_set():
            raise JobCancelled()

    def wait(self, fut: Future):
        """The future's result, checking for cancel while waiting."""
        while True:
            self.check()
            try:
                return fut.result(timeout=self.config.poll_s)
            except FutureTimeout:
                continue

    def _run(self) -> None:
        try:
            for i, (label, fn) in enumerate(self.stages):
                self.check()
                self.signals.progress.emit(i, label)
                fn(self)
            self.signals.progress.emit(len(self.stages), "done")
            self.signals.done.emit(self.ctx.get("result"))
        except JobCancelled:
            if self.on_cancel is not None:
                self.on_cancel(self.ctx)
            self.signals.failed.emit("cancelled")
        except UserError as exc:
            self.signals.failed.emit(str(exc))
        except Exception as exc:  # a bug: keep the app alive, log the traceback
            log.exception("%s failed", self.name)
            self.signals.failed.emit(f"{self.name} failed: {plain_error(exc)}")


class JobDialog(QProgressDialog):
    """Progress of one job, with Cancel when the job can be cancelled. Thread: GUI thread."""

    def __init__(self, job: Job, title: str, parent: QWidget | None = None):
        super().__init__(title, "Cancel" if job.cancellable else None, 0, len(job.stages), parent)
        self.job = job
        self.setWindowTitle(title)
        self.setWindowModality(Qt.WindowModality.WindowModal)
        self.setMinimumDuration(job.config.show_after_ms)
        self.setAutoClose(False)
        self.setAutoReset(False)
        self.canceled.connect(job.cancel)
        job.signals.progress.connect(self._progress)
        job.signals.done.connect(lambda _r: self.close())
        job.signals.failed.connect(lambda _m: self.close())

    def _progress(self, i: int, label: str) -> None:
        self.setValue(i)
        self.setLabelText(f"{label}…" if i < len(self.job.stages) else "done")
