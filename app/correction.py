"""Owns label correction: surface picks in the viewport become label-store corrections (a connected
region of the same label, or a brush stroke) on an undo stack; undo reverts them in the store. The cells a
click or a brush dab covers come from `nets.corrections_file`, the code `main.py relabel` applies too;
every change of the undo stack also starts a learning round (`app.learning`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PyQt6.QtCore import QObject, pyqtSignal
from PyQt6.QtGui import QUndoCommand, QUndoStack

from fusion.classes import CLASSES
from nets.cells import pack_cells
from nets.corrections_file import brush_cells, region_cells

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorrectionConfig:
    """Limits of one correction."""

    max_region_cells: int = 100_000   #: a connected region stops growing at this many cells
    min_brush_m: float = 0.02         #: smallest brush radius
    max_brush_m: float = 1.0          #: largest brush radius


class CorrectionCommand(QUndoCommand):
    """Sets `nyu40` on `cells` in `store`; undo reverts. Thread: GUI thread (the store is thread-safe)."""

    def __init__(self, store, cells: np.ndarray, nyu40: int, text: str):
        super().__init__(text)
        self.store, self.cells, self.nyu40 = store, cells, nyu40
        self.correction = None

    def redo(self) -> None:
        if self.correction is None:
            self.correction = self.store.correct(self.cells, self.nyu40)
        else:
            self.store.apply(self.correction)

    def undo(self) -> None:
        self.store.revert(self.correction)


class CorrectionTool(QObject):
    """Turns picks (point, phase) into undoable corrections with the chosen class. Thread: GUI thread."""

    message = pyqtSignal(str)   #: what happened, for the status bar

    def __init__(self, nets, viewport, undo: QUndoStack, config: CorrectionConfig = CorrectionConfig(), parent=None):
        super().__init__(parent)
        self.nets, self.viewport, self.undo, self.config = nets, viewport, undo, config
        self.tool = "region"
        self.radius_m = 0.15
        self.nyu40 = 1
        self._stroke: np.ndarray | None = None  # packed cells painted in the current brush stroke
        self._hit = False  # the current press landed on the surface
        self._macro = False                     # the stroke's undo macro is open

    def set_radius(self, radius_m: float) -> None:
        self.radius_m = float(np.clip(radius_m, self.config.min_brush_m, self.config.max_brush_m))

    def on_pick(self, point, phase: str) -> None:
        """A viewport pick: 'press' comes only on the surface, 'release' always (None off it)."""
        if phase == "release" and point is None and not self._hit:
            self.message.emit("nothing to correct there: click on the scanned surface")
        self._hit = phase == "press" or (self._hit and phase != "release")
        if self.tool == "region":
            if phase == "press" and point is not None:
                self._region(np.asarray(point, float))
            return
        if phase == "press":
            self._stroke, self._macro = np.zeros(0, np.int64), False
        if point is not None and self._stroke is not None:
            self._brush(np.asarray(point, float))
        if phase == "release" and self._stroke is not None:
            if self._macro:
                self.undo.endMacro()
            self._stroke = None

    def _region(self, point: np.ndarray) -> None:
        store = self.nets.store
        cells = region_cells(store, point, self.config.max_region_cells, self.nyu40)
        if not len(cells):
            self.message.emit("no labelled region there yet: use the brush to label unlabelled surface")
            return
        name = CLASSES[self.nyu40][0]
        self.undo.push(CorrectionCommand(store, cells, self.nyu40, f"region → {name}"))
        self.message.emit(f"{len(cells)} cells set to {name}")

    def brush_cells(self, center: np.ndarray) -> np.ndarray:
        """Stored cells within the radius plus the cells of the visible surface within it."""
        return brush_cells(self.nets.store, center, self.radius_m, self.viewport.surface_points_near)

    def _brush(self, center: np.ndarray) -> None:
        cells = self.brush_cells(center)
        if len(cells):
            fresh = ~np.isin(pack_cells(cells), self._stroke)
            cells = cells[fresh]
        if not len(cells):
            return
        self._stroke = np.union1d(self._stroke, pack_cells(cells))
        name = CLASSES[self.nyu40][0]
        if not self._macro:
            self.undo.beginMacro(f"paint {name}")
            self._macro = True
        self.undo.push(CorrectionCommand(self.nets.store, cells, self.nyu40, f"brush → {name}"))
        self.message.emit(f"painted {len(self._stroke)} cells {name}")
