"""Owns the side panel: source choice (RealSense devices, file, folder, demo), scan controls, scan
settings, view options, live thumbnails, label-correction tools and the class legend.

It only emits intents (signals) and shows what it is given; the main window wires it to the workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PyQt6.QtCore import Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QImage, QPixmap
from PyQt6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton,
                             QScrollArea, QVBoxLayout, QWidget)

from app.legend import Legend, LegendConfig
from app.spins import RangeSpinBox
from app.viewport import COLOR_MODES

DEMO_SOURCE = "synthetic:0"
#: what the labels can be trusted for (the model card has the figures)
NETS_NOTE = ("Trained on synthetic rooms only: labels score mIoU 0.69-0.79 on held-out synthetic rooms but about 0.35 "
             "on a real ScanNet room. Check them, and correct them with Pick on surface.")
#: what each control does, shown on hover (number fields add their allowed range)
TOOLTIPS = {
    "source_box": "What to scan: a RealSense camera, a recording, a dataset folder or the demo room",
    "start_btn": "Start scanning the source (Ctrl+Return); disabled while a scan runs",
    "pause_btn": "Pause or resume fusing frames (Space); the model stays",
    "stop_btn": "Stop the source (Ctrl+.); the model stays and can be saved, exported or continued",
    "reset_btn": "Discard the model and start over (Ctrl+R); asks first when there is unsaved work",
    "record_btn": "Record the camera to a file while scanning (RealSense only)",
    "voxel_spin": "Edge of a TSDF voxel: smaller keeps more detail and costs more time and memory",
    "depth_min_spin": "Depth nearer than this is ignored",
    "depth_max_spin": "Depth farther than this is ignored",
    "loop_check": ("Find loops when the camera comes back to a place it saw, and correct the drifted map (mesh, "
                   "labels, your corrections move with it); applies to the next scan (Start or Reset)"),
    "mode_box": "Colour the mesh by camera colour, label, label confidence or completion (keys 1-4)",
    "lighting_check": "Shade the mesh (Ctrl+I)",
    "follow_check": "Keep the view behind the tracked camera (Ctrl+F)",
    "correct_btn": "Pick a class in Classes, then click the surface to give it that class (C)",
    "tool_box": "Connected region: the region of one label under the click that could be the class picked; "
                "Brush: a sphere around it",
    "brush_spin": "Radius of the brush",
}
MODE_NAMES = {"rgb": "RGB", "labels": "Labels", "confidence": "Label confidence", "completion": "Completion overlay"}


@dataclass(frozen=True)
class PanelConfig:
    """Ranges and sizes of the panel's controls."""

    voxel_cm: tuple = (0.4, 10.0)        #: voxel size range (cm)
    depth_m: tuple = (0.1, 10.0)         #: depth range limits (m)
    min_depth_span_m: float = 0.1        #: "depth to" must exceed "depth from" by at least this
    brush_cm: tuple = (2.0, 100.0)       #: brush radius range (cm)
    dock_thumb_width_px: int = 120       #: width of each camera image in the Camera dock (scaled to fit)
    panel_width_px: int = 330            #: panel width
    legend: LegendConfig = field(default_factory=LegendConfig)


def _spin(lo: float, hi: float, value: float, step: float, suffix: str, decimals: int = 2) -> RangeSpinBox:
    return RangeSpinBox(lo, hi, value, step, suffix, decimals)


def to_pixmap(rgb: np.ndarray) -> QPixmap:
    """(h,w,3) uint8 -> QPixmap (copied)."""
    a = np.ascontiguousarray(rgb, np.uint8)
    img = QImage(a.data, a.shape[1], a.shape[0], 3 * a.shape[1], QImage.Format.Format_RGB888)
    return QPixmap.fromImage(img.copy())


class SidePanel(QScrollArea):
    """Controls and readouts. Thread: GUI thread."""

    open_file = pyqtSignal()
    open_folder = pyqtSignal()
    refresh_devices = pyqtSignal()
    start = pyqtSignal()
    pause = pyqtSignal(bool)          #: True: pause, False: resume
    stop = pyqtSignal()
    reset = pyqtSignal()
    record = pyqtSignal(bool)
    settings_changed = pyqtSignal()   #: voxel size, depth range or loop closure edited
    notice = pyqtSignal(str, str)     #: (level, text) for the status bar: a value clamped, a range refused
    nets_toggled = pyqtSignal(bool)
    mode_changed = pyqtSignal(str)
    fit = pyqtSignal()

    def __init__(self, config: PanelConfig = PanelConfig(), parent=None):
        super().__init__(parent)
        self.config = config
        body = QWidget()
        lay = QVBoxLayout(body)
        for group in (self._source_group(), self._scan_group(), self._view_group(), self._correct_group()):
            lay.addWidget(group)
        lay.addStretch(1)
        # shown in docks beside the viewport by the window: with them the whole window fits 1280x720
        self.camera_view = self._frames_group()
        self.legend = Legend(config.legend)
        self.setWidget(body)
        self.setWidgetResizable(True)
        for name, tip in TOOLTIPS.items():
            widget = getattr(self, name)
            range_text = getattr(widget, "range_text", "")
            widget.setToolTip(f"{tip} ({range_text})" if range_text else tip)
        # wide enough for its controls: no horizontal scrolling
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMinimumWidth(max(config.panel_width_px,
                                 body.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width() + 4))

    # --- groups -------------------------------------------------------------------------------
    def _source_group(self) -> QGroupBox:
        g = QGroupBox("Source")
        lay = QVBoxLayout(g)
        self.source_box = QComboBox()
        self.source_box.setMinimumContentsLength(18)
        lay.addWidget(self.source_box)
        row = QHBoxLayout()
        for text, sig, tip in (("File…", self.open_file, "Open a recording (.bag, .db3) or a ScanNet .sens file"),
                               ("Folder…", self.open_folder, "Open an RGB-D dataset folder (7-Scenes, TUM, Redwood, "
                                                             "SUN3D, synthetic)"),
                               ("Cameras", self.refresh_devices, "Look for connected RealSense cameras")):
            b = QPushButton(text)
            b.clicked.connect(sig)
            b.setToolTip(tip)
            row.addWidget(b)
        lay.addLayout(row)
        self.set_sources([], [])
        return g

    def _scan_group(self) -> QGroupBox:
        g = QGroupBox("Scan")
        lay = QVBoxLayout(g)
        row = QHBoxLayout()
        self.start_btn, self.pause_btn = QPushButton("Start"), QPushButton("Pause")
        self.stop_btn, self.reset_btn = QPushButton("Stop"), QPushButton("Reset")
        self.record_btn = QPushButton("Record")
        for b in (self.pause_btn, self.record_btn):
            b.setCheckable(True)
        self.start_btn.clicked.connect(self.start)
        self.pause_btn.toggled.connect(self.pause)
        self.stop_btn.clicked.connect(self.stop)
        self.reset_btn.clicked.connect(self.reset)
        self.record_btn.toggled.connect(self.record)
        row2 = QHBoxLayout()  # two rows keep the panel narrow (the viewport gets the room)
        for r, buttons in ((row, (self.start_btn, self.pause_btn, self.stop_btn)), (row2, (self.reset_btn, self.record_btn))):
            for b in buttons:
                r.addWidget(b)
            lay.addLayout(r)
        form = QFormLayout()
        c = self.config
        self.voxel_spin = _spin(*c.voxel_cm, 1.0, 0.1, " cm", 1)
        self.depth_min_spin = _spin(*c.depth_m, 0.15, 0.05, " m")
        self.depth_max_spin = _spin(*c.depth_m, 4.0, 0.25, " m")
        for s, name in ((self.voxel_spin, "Voxel size"), (self.depth_min_spin, "Depth from"),
                        (self.depth_max_spin, "Depth to")):
            s.valueChanged.connect(lambda _v: self.settings_changed.emit())
            s.valueChanged.connect(lambda _v: self.show_validity())
            s.clamped.connect(lambda typed, used, s=s, name=name: self._clamped(s, name, typed, used))
        form.addRow("Voxel size", self.voxel_spin)
        form.addRow("Depth from", self.depth_min_spin)
        form.addRow("Depth to", self.depth_max_spin)
        self.loop_check = QCheckBox("Loop closure")   # off by default, like `reconstruct`
        self.loop_check.toggled.connect(lambda _on: self.settings_changed.emit())
        form.addRow(self.loop_check)
        self.nets_check = QCheckBox("Labeling nets")
        self.nets_check.setChecked(True)
        self.nets_check.toggled.connect(self.nets_toggled)
        self.nets_check.setToolTip(NETS_NOTE)
        form.addRow(self.nets_check)
        self.nets_note = QLabel(NETS_NOTE)
        self.nets_note.setWordWrap(True)
        self.nets_note.setStyleSheet("color: #777; font-size: 10px")
        form.addRow(self.nets_note)
        lay.addLayout(form)
        return g

    def _view_group(self) -> QGroupBox:
        g = QGroupBox("View")
        lay = QFormLayout(g)
        self.mode_box = QComboBox()
        for m in COLOR_MODES:
            self.mode_box.addItem(MODE_NAMES[m], m)
        self.mode_box.currentIndexChanged.connect(lambda _i: self.mode_changed.emit(self.mode_box.currentData()))
        lay.addRow("Colour", self.mode_box)
        row = QHBoxLayout()
        self.lighting_check, self.follow_check = QCheckBox("Lighting"), QCheckBox("Follow camera")
        self.lighting_check.setChecked(True)
        fit = QPushButton("Fit")
        fit.clicked.connect(self.fit)
        fit.setToolTip("Frame the whole model in the view (F)")
        for w in (self.lighting_check, self.follow_check, fit):
            row.addWidget(w)
        lay.addRow(row)
        return g

    def _frames_group(self) -> QWidget:
        g = QWidget()
        row = QHBoxLayout(g)
        self.color_thumb, self.depth_thumb = QLabel("colour"), QLabel("depth")
        w = self.config.dock_thumb_width_px
        for lab in (self.color_thumb, self.depth_thumb):
            lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lab.setFixedSize(w, w * 3 // 4)  # a whole 4:3 image, scaled to fit
            row.addWidget(lab)
        g.setFixedHeight(g.sizeHint().height())  # the legend below gets the rest
        return g

    def _correct_group(self) -> QGroupBox:
        g = QGroupBox("Correct labels")
        lay = QFormLayout(g)
        row = QHBoxLayout()
        self.correct_btn = QPushButton("Pick on surface")
        self.correct_btn.setCheckable(True)
        self.tool_box = QComboBox()
        self.tool_box.addItem("Connected region", "region")
        self.tool_box.addItem("Brush", "brush")
        row.addWidget(self.correct_btn)
        row.addWidget(self.tool_box)
        lay.addRow(row)
        self.brush_spin = _spin(*self.config.brush_cm, 15.0, 1.0, " cm", 0)
        self.brush_spin.clamped.connect(lambda t, u: self._clamped(self.brush_spin, "Brush radius", t, u))
        lay.addRow("Brush radius", self.brush_spin)
        self.undo_row = QHBoxLayout()
        lay.addRow(self.undo_row)
        return g

    # --- scan settings -------------------------------------------------------------------------
    def _clamped(self, spin: RangeSpinBox, name: str, typed: float, used: float) -> None:
        unit = spin.suffix().strip()
        side = "smallest" if typed < used else "largest"
        text = (f"{name} {typed:g} {unit} is outside the allowed {spin.range_text}: "
                f"set to the {side}, {spin.textFromValue(used)} {unit}")
        QTimer.singleShot(0, lambda: self.notice.emit("warning", text))  # after the value's own messages

    def settings_problem(self) -> str | None:
        """Why the scan settings cannot be used (one line), or None when they can."""
        lo, hi = self.depth_min_spin.value(), self.depth_max_spin.value()
        span = self.config.min_depth_span_m
        if hi - lo < span - 1e-9:
            return (f"Depth from ({lo:.2f} m) must be at least {span:g} m less than Depth to ({hi:.2f} m): "
                    "change the scan settings")
        return None

    def show_validity(self) -> None:
        """Mark the depth fields (colour and tooltip) while their range cannot be used."""
        problem = self.settings_problem()
        for spin in (self.depth_min_spin, self.depth_max_spin):
            spin.setStyleSheet("QDoubleSpinBox { background: #f6c6c6; }" if problem else "")
            spin.setToolTip(spin.range_text + (f"\n{problem}" if problem else ""))

    # --- readouts -----------------------------------------------------------------------------
    def set_sources(self, devices: list, recent: list[str], current: str | None = None) -> None:
        """devices: [(label, spec)]; recent: specs opened before."""
        current = current or self.source_spec()
        self.source_box.blockSignals(True)
        self.source_box.clear()
        self.source_box.addItem("Demo scene (synthetic room)", DEMO_SOURCE)
        for label, spec in devices:
            self.source_box.addItem(label, spec)
        if not devices:
            self.source_box.addItem("No RealSense camera found", None)
            self.source_box.model().item(self.source_box.count() - 1).setEnabled(False)
        for spec in recent:
            if self.source_box.findData(spec) < 0:
                self.source_box.addItem(spec, spec)
        self.source_box.blockSignals(False)
        if current:
            self.select_source(current)

    def select_source(self, spec: str) -> None:
        i = self.source_box.findData(spec)
        if i < 0:
            self.source_box.addItem(spec, spec)
            i = self.source_box.count() - 1
        self.source_box.setCurrentIndex(i)

    def source_spec(self) -> str | None:
        if not hasattr(self, "source_box"):
            return None
        return self.source_box.currentData()

    def set_thumbnails(self, color: np.ndarray | None, depth: np.ndarray | None, clear: bool = False) -> None:
        """Show new thumbnails; None keeps the old one, unless `clear` (a new or loaded model)."""
        for lab, img, text in ((self.color_thumb, color, "colour"), (self.depth_thumb, depth, "depth")):
            if img is not None:
                lab.setPixmap(to_pixmap(img).scaled(lab.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                                    Qt.TransformationMode.SmoothTransformation))
            elif clear:
                lab.clear()
                lab.setText(text)

    def set_state(self, state: str, can_record: bool, recording: bool) -> None:
        """Enable the buttons that make sense in the worker's state."""
        active = state in ("running", "paused")
        self.start_btn.setEnabled(not active)
        self.pause_btn.setEnabled(active)
        self.stop_btn.setEnabled(active)
        self.record_btn.setEnabled(can_record)
        for b, on in ((self.pause_btn, state == "paused"), (self.record_btn, recording)):
            b.blockSignals(True)
            b.setChecked(on)
            b.blockSignals(False)
        self.pause_btn.setText("Resume" if state == "paused" else "Pause")
