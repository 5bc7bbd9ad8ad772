"""Owns learning from corrections in the window: after the user corrects labels (or undoes or redoes a
correction), a learning round runs on its own thread ("nets-learn"), the status bar says
"learning from N corrections…" with its progress and a Cancel button, and the relabeled scene shows when
it is done. Scanning goes on meanwhile (the fusion thread only copies the scene's coarse sites for the
round). Undoing every correction brings back the base weights' labels. "Export weights…" writes the
adapted weights as a file `reconstruct --weights` reads.

The round itself (`nets.adapt.CorrectionLearner.learn`) is the code `main.py relabel` runs.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from PyQt6.QtCore import QObject, QTimer, pyqtSignal
from PyQt6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from app.messages import plain_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearningConfig:
    """When rounds start and how long the window waits for their pieces."""

    enabled: bool = True           #: learn from corrections at all
    delay_ms: int = 800            #: a round starts this long after the last correction (clicks in a row: one round)
    region_timeout_s: float = 60.0  #: longest wait for the fusion thread to copy the scene
    join_timeout_s: float = 5.0    #: bound on joining the learning thread when the window closes


class _Bridge(QObject):
    """Carries the learning thread's progress and result to the GUI thread (queued)."""

    progress = pyqtSignal(int, float)
    done = pyqtSignal(object)
    failed = pyqtSignal(str)


class LearningWidget(QWidget):
    """Status-bar piece: what the learning does, a progress bar over the round's budget, Cancel and
    Export weights…. Thread: GUI thread."""

    def __init__(self, budget_s: float, parent=None):
        super().__init__(parent)
        self.label, self.bar = QLabel(), QProgressBar()
        self.bar.setRange(0, max(1, round(budget_s)))
        self.bar.setMaximumWidth(90)
        self.bar.setFormat("%v s")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("stop learning; the labels stay as they were before this round")
        self.export_btn = QPushButton("Export weights…")
        self.export_btn.setToolTip("save the weights learned from your corrections (use with reconstruct --weights)")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for w in (self.label, self.bar, self.cancel_btn, self.export_btn):
            lay.addWidget(w)
        self.show_state("", running=False, adapted=False)

    def show_state(self, text: str, running: bool, adapted: bool) -> None:
        self.label.setText(text)
        self.bar.setVisible(running)
        self.cancel_btn.setVisible(running)
        self.export_btn.setVisible(adapted and not running)
        self.setVisible(bool(text) or adapted)


class LearningController(QObject):
    """Starts a round after corrections change, shows it, cancels it, exports its weights.
    Thread: GUI thread; the round runs on a "nets-learn" thread."""

    message = pyqtSignal(str, str)   #: (level, text) for the window's messages
    round_done = pyqtSignal(object)  #: the RoundResult of a finished (or cancelled) round

    def __init__(self, nets, worker, undo, config: LearningConfig = LearningConfig(), parent=None):
        super().__init__(parent)
        self.nets, self.worker, self.undo, self.config = nets, worker, undo, config
        self.widget = LearningWidget(nets.config.adapt.budget_s)
        self.widget.cancel_btn.clicked.connect(self.cancel)
        self.widget.export_btn.clicked.connect(self._export_dialog)
        self._bridge = _Bridge(self)
        self._bridge.progress.connect(self._on_progress)
        self._bridge.done.connect(self._on_done)
        self._bridge.failed.connect(self._on_failed)
        self._timer = QTimer(self, singleShot=True, interval=config.delay_ms)
        self._timer.timeout.connect(self._start)
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._again = False
        self._told = False          # the reason for not learning was said
        self.corrections = 0        #: corrections the running (or last) round learns from
        self.rounds = 0             #: rounds finished (cancelled ones included)
        self.text = ""              #: what the widget says
        undo.indexChanged.connect(self._corrections_changed)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _corrections_changed(self, _index: int) -> None:
        if not self.config.enabled:
            return
        if self.running:  # learn again with every correction once this round has stopped
            self._again = True
            self._cancel.set()
        else:
            self._timer.start()

    def _start(self) -> None:
        problem = self.nets.learning_problem()
        learner = self.nets.learner() if not problem else None
        if learner is None:  # said once a scan, in the transient messages (manual labels still work)
            if not self._told:
                self._told = True
                self.message.emit("info", f"not learning from corrections: {problem or 'the labeling nets are off'}")
            return
        self.corrections = self.undo.index()
        if not self.corrections and not learner.adapted:  # nothing learned, nothing to undo (a new scan)
            return
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(learner, self.nets.store, self._cancel),
                                        name="nets-learn", daemon=True)
        word = "correction" if self.corrections == 1 else "corrections"
        self._show(f"learning from {self.corrections} {word}…" if self.corrections else "restoring the base labels…",
                   True)
        self.widget.bar.setValue(0)
        self._thread.start()

    def _run(self, learner, store, cancel: threading.Event) -> None:
        """Thread "nets-learn": copy the scene (on the fusion thread), learn, relabel, hand the model on."""
        try:
            region = self.worker.call(lambda w: w.nets.scene_region()).result(self.config.region_timeout_s)
            result = learner.learn(region, store, cancel, progress=self._bridge.progress.emit)
            if not result.cancelled:
                self.nets.adopt(learner)
            self._bridge.done.emit(result)
        except Exception as exc:  # a failed round leaves the labels as they were; say why
            log.exception("learning round failed")
            self._bridge.failed.emit(plain_error(exc))

    def _on_progress(self, steps: int, elapsed_s: float) -> None:
        self.widget.bar.setValue(min(self.widget.bar.maximum(), round(elapsed_s)))
        self.widget.bar.setToolTip(f"{steps} learning steps")

    def _finish_thread(self) -> None:
        if self._thread is not None:
            self._thread.join(self.config.join_timeout_s)
            self._thread = None
        self.rounds += 1

    def _on_done(self, result) -> None:
        self._finish_thread()
        if result.cancelled:
            self._show("learning cancelled: the labels stay as they were", False)
        elif result.adapted:
            self._show(f"learned from {self.corrections} correction{'s' if self.corrections != 1 else ''} "
                       f"({result.steps} steps, {result.learn_s:.0f} s): the scene is relabeled", False)
        else:
            self._show("", False)
        self.round_done.emit(result)
        if self._again:
            self._again = False
            self._timer.start()

    def _on_failed(self, text: str) -> None:
        self._finish_thread()
        self._show("", False)
        self.message.emit("error", f"learning from corrections failed: {text}")
        if self._again:
            self._again = False
            self._timer.start()

    def _show(self, text: str, running: bool) -> None:
        self.text = text
        learner = self.nets.learner()
        self.widget.show_state(text, running, bool(learner is not None and learner.adapted))

    def cancel(self) -> None:
        """Stop the running round (the labels stay as before it) and any queued one."""
        self._again = False
        self._timer.stop()
        self._cancel.set()

    def export_weights(self, path: str) -> bool:
        """Write the adapted weights to `path`; False (and a message) when there are none or it fails."""
        from nets.session_weights import write_weights_file

        blob = self.nets.adapted_weights()
        if blob is None:
            self.message.emit("error", "no adapted weights yet: correct some labels and let the nets learn")
            return False
        try:
            write_weights_file(path, blob)
        except Exception as exc:  # UserError or an unexpected OSError: say it, keep the app
            self.message.emit("error", plain_error(exc))
            return False
        self.message.emit("info", f"adapted weights saved to {path} (use with reconstruct --weights)")
        return True

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.widget, "Export adapted weights", "adapted_weights.pt",
                                              "Weights (*.pt)")
        if path:
            self.export_weights(path)

    def shutdown(self) -> None:
        """Cancel and join the learning thread (bounded)."""
        self.cancel()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.config.join_timeout_s)
