"""Owns the panel's number fields: a spin box that shows its allowed range and, when a typed value lies
outside it, clamps to the nearest limit and says so instead of silently going back to the old value."""
from __future__ import annotations

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtGui import QValidator
from PyQt6.QtWidgets import QDoubleSpinBox


class RangeSpinBox(QDoubleSpinBox):
    """A QDoubleSpinBox whose out-of-range entries clamp visibly. Thread: GUI thread."""

    clamped = pyqtSignal(float, float)   #: (value typed, value used) when a typed value was out of range

    def __init__(self, lo: float, hi: float, value: float, step: float, suffix: str, decimals: int = 2,
                 parent=None):
        super().__init__(parent)
        self.setRange(lo, hi)
        self.setDecimals(decimals)
        self.setSingleStep(step)
        self.setValue(value)
        self.setSuffix(suffix)
        self.range_text = f"range {self.textFromValue(lo)}–{self.textFromValue(hi)} {suffix.strip()}".rstrip()
        self.setToolTip(self.range_text)

    def _typed(self, text: str) -> float | None:
        body = text.strip()
        if self.suffix() and body.endswith(self.suffix().strip()):
            body = body[: -len(self.suffix().strip())]
        try:
            return float(body.strip().replace(self.locale().decimalPoint(), "."))
        except ValueError:
            return None

    def validate(self, text: str, pos: int):
        state, text, pos = super().validate(text, pos)
        if state == QValidator.State.Invalid and self._typed(text) is not None:
            state = QValidator.State.Intermediate  # a number out of range: fixup clamps it when editing ends
        return state, text, pos

    def fixup(self, text: str) -> str:
        typed = self._typed(text)
        if typed is None:
            return super().fixup(text)
        used = min(max(typed, self.minimum()), self.maximum())
        if used != typed:
            self.clamped.emit(typed, used)
        return self.textFromValue(used) + self.suffix()
