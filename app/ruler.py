"""Owns the ruler: measure distances on the scanned surface. While it is on, clicks on the surface set
the two ends of a segment (a third click starts a new one); the viewport draws it and the window says
its length, split into horizontal and vertical parts along the scan's up direction. Picks that miss
the surface say so. Thread: GUI thread."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PyQt6.QtCore import QObject, pyqtSignal


@dataclass(frozen=True)
class Measurement:
    """A measured segment (immutable)."""

    a_m: np.ndarray
    b_m: np.ndarray
    up: np.ndarray   #: unit up of the scan

    @property
    def length_m(self) -> float:
        return float(np.linalg.norm(self.b_m - self.a_m))

    @property
    def vertical_m(self) -> float:
        return float(abs(np.dot(self.b_m - self.a_m, self.up)))

    @property
    def horizontal_m(self) -> float:
        return float(np.sqrt(max(self.length_m ** 2 - self.vertical_m ** 2, 0.0)))

    def text(self) -> str:
        return (f"distance {self.length_m:.3f} m (horizontal {self.horizontal_m:.3f} m, "
                f"vertical {self.vertical_m:.3f} m)")


class RulerTool(QObject):
    """Turns surface picks into measurements; `segment_changed(points (0..2,3))` for the overlay."""

    message = pyqtSignal(str)
    segment_changed = pyqtSignal(object)

    def __init__(self, up_of, parent=None):
        super().__init__(parent)
        self.up_of = up_of            #: () -> the scan's current unit up vector
        self.active = False
        self.points: list[np.ndarray] = []
        self.last: Measurement | None = None
        self._hit = False             #: the current press landed on the surface

    def set_active(self, on: bool) -> None:
        self.active = bool(on)
        if on:
            self.message.emit("ruler: click two points on the surface")
        else:
            self.clear()

    def clear(self) -> None:
        self.points, self.last = [], None
        self.segment_changed.emit(np.zeros((0, 3)))

    def on_pick(self, point, phase: str) -> None:
        """A viewport pick: 'press' comes only on the surface, 'release' always (None off it)."""
        if phase == "press":
            self._hit = True
            self._add(np.asarray(point, float))
        elif phase == "release":
            if point is None and not self._hit:
                self.message.emit("ruler: nothing there to measure; click on the scanned surface")
            self._hit = False

    def _add(self, point: np.ndarray) -> None:
        if len(self.points) == 2:
            self.points = []
        self.points.append(point)
        self.segment_changed.emit(np.array(self.points))
        if len(self.points) == 1:
            self.message.emit("ruler: click the second point")
            return
        self.last = Measurement(self.points[0], self.points[1], np.asarray(self.up_of(), float))
        self.message.emit(self.last.text())
