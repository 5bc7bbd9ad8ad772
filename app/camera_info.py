"""Owns the camera details dialog (View > Camera details): the source, the device (name, serial,
firmware, USB), the depth intrinsics with the fields of view, the depth scale and the frame rate, as the
source reports them. The source is asked on the fusion thread, so the dialog never blocks the scan.
Thread: GUI thread."""
from __future__ import annotations

import math
from dataclasses import dataclass

from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QVBoxLayout

DEVICE_FIELDS = {"name": "Device", "serial": "Serial number", "firmware": "Firmware", "usb": "USB"}


@dataclass(frozen=True)
class CameraInfoConfig:
    poll_ms: int = 50          #: how often the dialog looks for the fusion thread's answer
    wait_ms: int = 10_000      #: after this the dialog says the source did not answer


def _fov_deg(focal_px: float, size_px: int) -> float:
    return math.degrees(2.0 * math.atan(size_px / (2.0 * focal_px)))


def _depth_scale(desc: dict) -> str | None:
    if "depth_scale_m_per_unit" in desc:
        m = float(desc["depth_scale_m_per_unit"])
        return f"{m * 1000:.4g} mm per unit ({1.0 / m:.6g} units per metre)"
    if "depth_units_per_m" in desc:
        u = float(desc["depth_units_per_m"])
        return f"{1000.0 / u:.4g} mm per unit ({u:.6g} units per metre)"
    return None


def camera_rows(desc: dict, intrinsics: tuple | None) -> list[tuple[str, str]]:
    """(field, value) rows from the source's `describe()` and the latest frame's intrinsics
    (fx, fy, cx, cy, width, height); fields the source does not report are left out."""
    rows = [("Source", str(desc.get("kind") or desc.get("spec") or "none"))]
    if desc.get("path"):
        rows.append(("Path", str(desc["path"])))
    for key, name in DEVICE_FIELDS.items():
        if desc.get("device", {}).get(key):
            rows.append((name, str(desc["device"][key])))
    intr = intrinsics or tuple(desc.get("intrinsics", {}).get(k) for k in ("fx", "fy", "cx", "cy", "width", "height"))
    if intr and None not in intr:
        fx, fy, cx, cy, w, h = intr
        rows += [("Resolution", f"{int(w)} x {int(h)} px"), ("Focal length", f"fx {fx:.2f} px, fy {fy:.2f} px"),
                 ("Principal point", f"cx {cx:.2f} px, cy {cy:.2f} px"),
                 ("Field of view", f"{_fov_deg(fx, w):.1f}° x {_fov_deg(fy, h):.1f}°")]
    scale = _depth_scale(desc)
    if scale:
        rows.append(("Depth scale", scale))
    if desc.get("fps"):
        rows.append(("Frame rate", f"{float(desc['fps']):g} frames/s"))
    return rows


class CameraInfoDialog(QDialog):
    """Shows `camera_rows` once the fusion thread has answered. Thread: GUI thread."""

    def __init__(self, window, config: CameraInfoConfig = CameraInfoConfig()):
        super().__init__(window)
        self.setWindowTitle("Camera details")
        self.window, self.config, self.rows = window, config, None
        lay = QVBoxLayout(self)
        self.form = QFormLayout()
        self.form.addRow(QLabel("asking the source…"))
        lay.addLayout(self.form)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self._future = window.worker.call(lambda worker: worker.source_description())
        self._waited_ms = 0
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._poll)
        self._timer.start(config.poll_ms)

    def _poll(self) -> None:
        self._waited_ms += self.config.poll_ms
        if not self._future.done() and self._waited_ms < self.config.wait_ms:
            return
        self._timer.stop()
        while self.form.rowCount():
            self.form.removeRow(0)
        if not self._future.done() or self._future.exception() is not None:
            self.form.addRow(QLabel("the source did not say (it may be busy or closed)"))
            return
        self.rows = camera_rows(self._future.result(), self.window.last_intrinsics)
        for name, value in self.rows:
            label = QLabel(value)
            label.setWordWrap(True)
            self.form.addRow(name, label)


def show_camera_info(window) -> CameraInfoDialog:
    dlg = CameraInfoDialog(window)
    window.camera_info_dialog = dlg
    dlg.open()
    return dlg
