"""Owns the crash-recovery offer: when a crashed run left an autosave behind, the window says so in the
status bar and asks in a (non-blocking) dialog whether to recover it now. Thread: GUI thread."""
from __future__ import annotations

import time

from PyQt6.QtWidgets import QMessageBox

from storage.autosave import find_recoverable


def offer_recovery(window, dialog: bool = True) -> QMessageBox | None:
    """Offer the newest crashed autosave (None when there is none, or `dialog` is False)."""
    found = find_recoverable()
    if not found:
        return None
    entry = found[0]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.saved_at_unix_s))
    size_mb = entry.size_bytes / 1e6
    text = f"a scan autosaved at {when} was not closed cleanly"
    window.show_event("warning", text, "File > Recover autosaved scan loads it")
    if not dialog:
        return None
    box = QMessageBox(QMessageBox.Icon.Question, "Recover the last scan?",
                      f"The app did not close cleanly: {text} ({size_mb:.1f} MB).\n\n"
                      "Recover it now? Later, File > Recover autosaved scan still can.", parent=window)
    recover = box.addButton("Recover", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Not now", QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(recover)
    box.buttonClicked.connect(lambda button: window.files.recover_autosave() if button is recover else None)
    window.recovery_dialog = box
    box.open()
    return box
