"""Owns where the window's keyboard shortcuts apply: whatever has focus, except a text field the user is
typing in. Qt lets a focused spin box or line edit claim keys (digits, Ctrl+E) before the window's
shortcuts see them; this guard refuses that claim unless the user is typing there: the field was reached
with Tab, clicked into, or has taken a typed key since it got focus (Enter, Escape or leaving it ends that)."""
from __future__ import annotations

from PyQt6.QtCore import QEvent, QKeyCombination, QObject, Qt
from PyQt6.QtGui import QKeySequence
from PyQt6.QtWidgets import QAbstractSpinBox, QApplication, QLineEdit, QPlainTextEdit, QTextEdit

TEXT_FIELDS = (QAbstractSpinBox, QLineEdit, QTextEdit, QPlainTextEdit)
KEYBOARD_FOCUS = (Qt.FocusReason.TabFocusReason, Qt.FocusReason.BacktabFocusReason)
END_KEYS = (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Escape)
EDIT_KEYS = (Qt.Key.Key_Backspace, Qt.Key.Key_Delete)
Mod = Qt.KeyboardModifier
COMMAND_MODIFIERS = Mod.ControlModifier | Mod.AltModifier | Mod.MetaModifier


def text_field(widget) -> QObject | None:
    """The text field `widget` belongs to (a spin box for its inner line edit), or None."""
    while widget is not None:
        if isinstance(widget, TEXT_FIELDS) and not isinstance(widget.parent(), QAbstractSpinBox):
            return widget
        widget = widget.parent()
    return None


class ShortcutGuard(QObject):
    """Event filter on the window's text fields. Thread: GUI thread."""

    def __init__(self, window, actions):
        super().__init__(window)
        self.window = window
        self.keys = {seq.toString() for a in actions for seq in a.shortcuts() if not seq.isEmpty()}
        self.typing: QObject | None = None  #: the field the user is typing in
        for w in window.findChildren(QObject):
            if text_field(w) is not None:
                w.installEventFilter(self)

    def is_shortcut(self, ev) -> bool:
        """Whether the key event is one of the window's shortcuts (keypad digits count as digits)."""
        try:
            key = Qt.Key(ev.key())
        except ValueError:
            return False
        mods = ev.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        return QKeySequence(QKeyCombination(mods, key)).toString() in self.keys

    def eventFilter(self, obj, ev) -> bool:
        t = ev.type()
        field = text_field(obj)
        if t == QEvent.Type.ShortcutOverride:
            # not accepted: the window's shortcut fires and the field never sees the key
            return field is not self.typing and self.is_shortcut(ev)
        if t == QEvent.Type.FocusIn:
            self.typing = field if ev.reason() in KEYBOARD_FOCUS else None
        elif t == QEvent.Type.FocusOut and self.typing is field:
            self.typing = None
        elif t == QEvent.Type.MouseButtonPress and isinstance(obj, QLineEdit):
            self.typing = field  # clicked into the text itself (a spin box's arrows are not its line edit)
        elif t == QEvent.Type.KeyPress:
            if ev.key() in END_KEYS:
                self.typing = None
            elif ev.key() in EDIT_KEYS or (ev.text().isprintable() and ev.text().strip()
                                           and not ev.modifiers() & COMMAND_MODIFIERS):
                self.typing = field  # a character or an edit went into the field
        return False

    @staticmethod
    def focused_field():
        return text_field(QApplication.focusWidget())
