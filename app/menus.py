"""Owns the main window's menus, toolbar-free actions and keyboard shortcuts."""
from __future__ import annotations

from PyQt6.QtGui import QAction, QKeySequence
from PyQt6.QtWidgets import QToolButton

from app.camera_info import show_camera_info
from app.export_files import EXTRAS
from app.help_menu import help_menu
from app.side_panel import MODE_NAMES
from app.viewport import COLOR_MODES

StdKey = QKeySequence.StandardKey


def _action(window, menu, text: str, slot, shortcut=None, checkable: bool = False) -> QAction:
    act = QAction(text, window)
    if shortcut is not None:
        act.setShortcut(QKeySequence(shortcut) if isinstance(shortcut, str) else shortcut)
    act.setCheckable(checkable)
    act.triggered.connect(slot)
    menu.addAction(act)
    return act


def _file_menu(w, acts: dict) -> None:
    m, f = w.menuBar().addMenu("&File"), w.files
    acts["open_file"] = _action(w, m, "Open &recording…", lambda: f.open_file(), StdKey.Open)
    acts["open_folder"] = _action(w, m, "Open dataset &folder…", lambda: f.open_folder(), "Ctrl+Shift+O")
    acts["open_session"] = _action(w, m, "Open &session…", lambda: f.load_session(), "Ctrl+L")
    acts["recover"] = _action(w, m, "Recover &autosaved scan", lambda: f.recover_autosave())
    acts["save_session"] = _action(w, m, "&Save session…", lambda: f.save_session(), StdKey.Save)
    acts["export"] = _action(w, m, "&Export labeled mesh…", lambda: f.export(), "Ctrl+E")
    extras, ticked = m.addMenu("Export &also"), f.export_extras()
    for key, (text, _suffix) in EXTRAS.items():
        acts[f"export_{key}"] = act = _action(w, extras, text, lambda on, k=key: f.set_export_extra(k, on), None, True)
        act.setChecked(key in ticked)
    acts["screenshot"] = _action(w, m, "Save screens&hot…", lambda: f.screenshot(), "Ctrl+P")
    acts["view_image"] = _action(w, m, "Save &view image (high resolution)…", lambda: f.save_view_image(),
                                 "Ctrl+Shift+P")
    m.addSeparator()
    acts["quit"] = _action(w, m, "&Quit", w.close, StdKey.Quit)


def _scan_menu(w, acts: dict) -> None:
    m, p = w.menuBar().addMenu("&Scan"), w.panel
    acts["start"] = _action(w, m, "&Start", lambda: w.start_scan(), "Ctrl+Return")
    acts["pause"] = _action(w, m, "&Pause / resume", lambda: p.pause_btn.toggle(), "Space")
    acts["stop"] = _action(w, m, "S&top", lambda: p.stop_btn.click(), "Ctrl+.")
    acts["reset"] = _action(w, m, "&Reset model", lambda: w.reset_scan(), "Ctrl+R")
    acts["devices"] = _action(w, m, "Find RealSense &cameras", lambda: w.refresh_devices(announce=True))


def _edit_menu(w, acts: dict) -> None:
    m, p = w.menuBar().addMenu("&Edit"), w.panel
    undo, redo = w.undo.createUndoAction(w, "&Undo"), w.undo.createRedoAction(w, "&Redo")
    undo.setShortcut(QKeySequence(StdKey.Undo))
    redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
    for a in (undo, redo):
        m.addAction(a)
        btn = QToolButton()
        btn.setDefaultAction(a)
        p.undo_row.addWidget(btn)
    acts["undo"], acts["redo"] = undo, redo
    acts["pick"] = _action(w, m, "&Correct labels (pick on surface)", lambda on: p.correct_btn.setChecked(on), "C", True)
    p.correct_btn.toggled.connect(acts["pick"].setChecked)
    acts["ruler"] = _action(w, m, "&Measure distance (ruler)", lambda on: w.set_ruler(on), "M", True)


def _view_menu(w, acts: dict) -> None:
    m, p, v = w.menuBar().addMenu("&View"), w.panel, w.viewport
    acts["reset_view"] = _action(w, m, "&Reset view (fit scene)", lambda: v.fit(), "F")
    acts["follow"] = _action(w, m, "&Follow camera", lambda on: p.follow_check.setChecked(on), "Ctrl+F", True)
    p.follow_check.toggled.connect(acts["follow"].setChecked)
    acts["lighting"] = _action(w, m, "&Lighting", lambda on: p.lighting_check.setChecked(on), "Ctrl+I", True)
    acts["lighting"].setChecked(p.lighting_check.isChecked())
    p.lighting_check.toggled.connect(acts["lighting"].setChecked)
    acts["camera_info"] = _action(w, m, "&Camera details…", lambda: show_camera_info(w), "Ctrl+D")
    m.addSeparator()
    for i, mode in enumerate(COLOR_MODES):
        acts[f"mode_{mode}"] = _action(w, m, MODE_NAMES[mode],
                                       lambda _c=False, i=i: p.mode_box.setCurrentIndex(i), str(i + 1))


def build_menus(w) -> dict[str, QAction]:
    """File, Scan, Edit, View and Help menus of MainWindow `w`; returns the actions by name (also
    w.actions_by_name)."""
    acts: dict[str, QAction] = {}
    for menu in (_file_menu, _scan_menu, _edit_menu, _view_menu):
        menu(w, acts)
    help_menu(w, acts, _action)
    w.actions_by_name = acts
    return acts
