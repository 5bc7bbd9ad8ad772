"""Owns the question asked before work is discarded (quit, reset, open a session, start a new scan):
Save, Discard or Cancel. Unsaved work is fused frames not yet in a saved session, and label corrections
made since the last save."""
from __future__ import annotations

from typing import Callable

from PyQt6.QtWidgets import QMessageBox

Button = QMessageBox.StandardButton
TITLE = "Unsaved scan"


def ask(parent, action: str, what: str) -> str:
    """A modal Save / Discard / Cancel question; returns "save", "discard" or "cancel"."""
    box = QMessageBox(QMessageBox.Icon.Question, TITLE, f"{what}. {action} discards it.", parent=parent)
    box.setInformativeText("Save it first?")
    box.setStandardButtons(Button.Save | Button.Discard | Button.Cancel)
    box.setDefaultButton(Button.Save)
    box.setEscapeButton(Button.Cancel)
    answer = box.exec()
    return {Button.Save.value: "save", Button.Discard.value: "discard"}.get(int(answer), "cancel")


class UnsavedGuard:
    """Asks before the window's unsaved work is discarded. Thread: GUI thread."""

    def __init__(self, window, enabled: bool = True):
        self.window, self.enabled = window, enabled

    def unsaved(self) -> str:
        """What would be lost ('' when nothing): frames fused and corrections made since the last save."""
        w = self.window
        frames = w.status.unsaved_frames
        parts = [f"{frames} fused frame{'s' if frames != 1 else ''}"] if frames > 0 else []
        if not w.undo.isClean():
            parts.append("label corrections")
        return f"The scan has {' and '.join(parts)} not saved" if parts else ""

    def check(self, action: str, then: Callable[[], object]) -> bool:
        """True: go on now (nothing unsaved, or the user discards it). False: not now; after Save, `then`
        runs once the session is written (not at all when the user cancels or the save fails)."""
        what = self.unsaved()
        if not what or not self.enabled:
            return True
        answer = ask(self.window, action, what)
        if answer == "save":
            job = self.window.files.save_session()
            if job is not None:
                job.signals.done.connect(lambda _size: then())
        return answer == "discard"
