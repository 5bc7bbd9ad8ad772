"""Owns the status bar: fusion frames/s, dropped frames, tracking state, how up was found, blocks and
memory, nets queue and label latency, and the viewport's paint time; a transient message makes room for
itself by hiding the less important readouts while it shows."""
from __future__ import annotations

from dataclasses import dataclass

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QLabel, QProgressBar, QStatusBar

from app.snapshots import FusionStatus

TRACKING_COLORS = {"ok": "#3c9a3c", "lost": "#d03030"}


@dataclass(frozen=True)
class StatusBarConfig:
    """How long transient messages stay."""

    message_ms: int = 6000      #: info messages
    warning_ms: int = 15000     #: warnings and errors
    nets_width_px: int = 330    #: the nets readout is cut to this width (the whole text is its tooltip)
    busy_width_px: int = 80     #: the busy bar shown while background work runs (kernels, autosave)
    #: readouts hidden, in this order, while a message needs their room
    yield_order: tuple = ("ui", "memory", "gravity", "nets", "dropped", "tracking", "fusion")


def _fmt_s(value) -> str:
    return "–" if value is None else f"{value:.2f} s"


def nets_text(nets: dict) -> str:
    """'nets: queue 3 · latency p50 0.41 s p95 1.20 s' or the reason the nets are off."""
    if not nets.get("enabled"):
        return nets.get("message") or "nets off"
    queue = nets.get("queue", nets.get("queue_length", "–"))
    return (f"nets: queue {queue} · latency p50 {_fmt_s(nets.get('latency_p50_s'))}"
            f" p95 {_fmt_s(nets.get('latency_p95_s'))}")


def fusion_text(s: FusionStatus) -> str:
    """'running · 12.3 fps · 40 frames'; frames/s only while a source is open."""
    fps = f" · {s.fps:.1f} fps" if s.state in ("running", "paused") else ""
    return f"{s.state}{fps} · {s.frames} frames"


def tracking_text(tracking: str) -> str:
    return f"tracking {tracking}" if tracking else "tracking –"


def gravity_text(g: dict) -> str:
    """'up: floor (0.92)', 'up: settling…', 'up: ground truth' or '' before a scan."""
    if not g:
        return ""
    if g.get("settling"):
        return "up: settling…"
    names = {"gt": "ground truth", "camera": "first camera"}
    method = g.get("method", "")
    return f"up: {names[method]}" if method in names else f"up: {method} ({g.get('confidence', 0):.2f})"


class StatusBar(QStatusBar):
    """Permanent readouts plus transient messages. Thread: GUI thread."""

    def __init__(self, config: StatusBarConfig = StatusBarConfig(), parent=None):
        super().__init__(parent)
        self.config = config
        self.labels = {name: QLabel() for name in ("fusion", "dropped", "tracking", "gravity", "memory", "nets", "ui")}
        self.labels["nets"].setMaximumWidth(config.nets_width_px)
        self.busy_label, self.busy_bar = QLabel(), QProgressBar()
        self.busy_bar.setRange(0, 0)  # busy: no known end
        self.busy_bar.setMaximumWidth(config.busy_width_px)
        for w in (self.busy_label, self.busy_bar):
            self.addPermanentWidget(w)
            w.hide()
        for lab in self.labels.values():
            self.addPermanentWidget(lab)
        self._yielded: list[str] = []
        self._busy: dict[str, str] = {}  #: background work running: key -> what the user reads
        self.messageChanged.connect(self._make_room)
        self.show_status(FusionStatus(), {})

    def show_status(self, s: FusionStatus, paint: dict) -> None:
        L = self.labels
        L["fusion"].setText(fusion_text(s))
        L["dropped"].setText(f"{s.frames_dropped} dropped")
        L["tracking"].setText(tracking_text(s.tracking))
        style = f"color: {TRACKING_COLORS.get(s.tracking, '#888')}; font-weight: bold"
        if L["tracking"].styleSheet() != style:  # setting a style sheet repaints even when it is the same
            L["tracking"].setStyleSheet(style)
        L["gravity"].setText(gravity_text(s.gravity))
        L["memory"].setText(f"{s.n_blocks} blocks · {s.volume_mb:.0f} MB volume · {s.process_mb:.0f} MB in all")
        text = nets_text(s.nets)
        L["nets"].setText(L["nets"].fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, self.config.nets_width_px))
        L["nets"].setToolTip(text)
        L["ui"].setText(f"UI {paint['p50']:.0f} ms (p95 {paint['p95']:.0f})" if paint else "UI –")

    def set_busy(self, key: str, text: str | None) -> None:
        """Show `text` with a busy bar while background work `key` runs (None: it ended); several
        may run at once, the latest text shows."""
        self._busy.pop(key, None)
        if text:
            self._busy[key] = text
        self.busy_label.setText(next(reversed(self._busy.values()), ""))
        for w in (self.busy_label, self.busy_bar):
            w.setVisible(bool(self._busy))

    def message(self, level: str, text: str) -> None:
        self.showMessage(text, self.config.message_ms if level == "info" else self.config.warning_ms)

    def message_room_px(self) -> int:
        """Width left of the visible readouts, where the transient message shows."""
        used = sum(lab.sizeHint().width() + 2 * self.layout().spacing() for lab in self.labels.values()
                   if not lab.isHidden())
        return self.width() - used - 2 * self.layout().contentsMargins().left() - 16  # the size grip

    def message_fits(self, text: str | None = None) -> bool:
        text = self.currentMessage() if text is None else text
        return self.fontMetrics().horizontalAdvance(text) + 8 <= self.message_room_px()

    def _make_room(self, text: str) -> None:
        """Hide readouts (least important first) until the message fits; show them again after it."""
        for name in self._yielded:
            self.labels[name].show()
        self._yielded = []
        for name in self.config.yield_order:
            if not text or self.message_fits(text):
                break
            self.labels[name].hide()
            self._yielded.append(name)
