"""Owns the Help menu: the list of keyboard shortcuts, the labeling nets' model card and About.
The shortcut list is read from the window's actions, so it cannot drift from what the keys do.
Thread: GUI thread."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from PyQt6.QtGui import QAction, QKeySequence
from PyQt6.QtWidgets import (QDialog, QDialogButtonBox, QHeaderView, QTableWidget, QTableWidgetItem, QTextBrowser,
                             QVBoxLayout, QWidget)

MODEL_CARD = Path(__file__).resolve().parents[1] / "resources" / "nets" / "MODEL_CARD.md"
APP_TITLE = "RGB-D Reconstruction and Labeling"
ABOUT_TEXT = (
    "<h3>{title}</h3>"
    "<p>Tracks an RGB-D camera, a recording or a dataset, fuses every depth frame into a TSDF volume "
    "and labels the fused geometry with ScanNet's 20 classes while you scan.</p>"
    "<p>The labeling nets were trained on the project's synthetic rooms only: see Help &gt; Model card "
    "for what they score on real scans.</p>"
    "<p>Python {python} · Open3D {open3d} · PyTorch {torch} · Qt {qt}</p>")


@dataclass(frozen=True)
class HelpConfig:
    dialog_size_px: tuple[int, int] = (560, 520)  #: size of the shortcut and model-card dialogs


def shortcut_rows(actions) -> list[tuple[str, str]]:
    """(what it does, keys) for every action with a shortcut, in menu order; '&' accelerators removed."""
    rows = []
    for act in actions:
        keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in act.shortcuts() if not s.isEmpty())
        if keys:
            rows.append((act.text().replace("&", "").rstrip("…"), keys))
    return rows


def _dialog(parent: QWidget, title: str, body: QWidget, config: HelpConfig) -> QDialog:
    dlg = QDialog(parent)
    dlg.setWindowTitle(title)
    lay = QVBoxLayout(dlg)
    lay.addWidget(body)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
    buttons.rejected.connect(dlg.reject)
    lay.addWidget(buttons)
    dlg.resize(*config.dialog_size_px)
    return dlg


def shortcuts_dialog(window, config: HelpConfig = HelpConfig()) -> QDialog:
    """A table of the window's keyboard shortcuts."""
    rows = shortcut_rows(window.findChildren(QAction))
    table = QTableWidget(len(rows), 2)
    table.setHorizontalHeaderLabels(["Action", "Keys"])
    for r, (text, keys) in enumerate(rows):
        table.setItem(r, 0, QTableWidgetItem(text))
        table.setItem(r, 1, QTableWidgetItem(keys))
    table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
    table.verticalHeader().hide()
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    return _dialog(window, "Keyboard shortcuts", table, config)


def model_card_dialog(window, config: HelpConfig = HelpConfig()) -> QDialog:
    """The shipped weights' model card (what the nets were trained on, how they score)."""
    view = QTextBrowser()
    try:
        view.setMarkdown(MODEL_CARD.read_text(encoding="utf-8"))
    except OSError as exc:
        view.setPlainText(f"the model card could not be read: {exc.strerror or exc}")
    return _dialog(window, "Model card: labeling nets", view, config)


def about_text() -> str:
    import open3d
    from PyQt6.QtCore import QT_VERSION_STR

    try:
        import torch
        torch_version = torch.__version__.split("+")[0]
    except ImportError:  # a build without the nets
        torch_version = "not installed"
    return ABOUT_TEXT.format(title=APP_TITLE, python=platform.python_version(), open3d=open3d.__version__,
                             torch=torch_version, qt=QT_VERSION_STR)


def about_dialog(window, config: HelpConfig = HelpConfig()) -> QDialog:
    view = QTextBrowser()
    view.setHtml(about_text())
    return _dialog(window, f"About {APP_TITLE}", view, config)


def _open(window, make) -> QDialog:
    """Show the dialog without blocking (tests and the scan keep running); kept on the window."""
    dlg = make(window)
    window.help_dialog = dlg
    dlg.open()
    return dlg


def help_menu(w, acts: dict, action) -> None:
    """The Help menu of MainWindow `w`; `action` is the menus module's action factory."""
    m = w.menuBar().addMenu("&Help")
    acts["shortcuts"] = action(w, m, "&Keyboard shortcuts", lambda: _open(w, shortcuts_dialog), "F1")
    acts["model_card"] = action(w, m, "&Model card", lambda: _open(w, model_card_dialog))
    acts["about"] = action(w, m, "&About", lambda: _open(w, about_dialog))
