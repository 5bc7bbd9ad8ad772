"""Owns the main window: it creates the workers (fusion worker, nets hookup), the viewport, side panel,
status bar, menus and undo stack, wires user intents to workers, shows their snapshots, persists
settings, and stops and joins every worker when the window closes."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

from PyQt6.QtCore import QObject, QSettings, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QUndoStack
from PyQt6.QtWidgets import QDockWidget, QMainWindow, QMessageBox, QSplitter

from app.correction import CorrectionConfig, CorrectionTool
from app.learning import LearningConfig, LearningController
from app.file_ops import FileOps, FileOpsConfig
from app.fusion_worker import FusionWorker, FusionWorkerConfig
from app.jobs import Job
from app.kernel_warmup import KernelWarmup, KernelWarmupConfig
from app.menus import build_menus
from app.nets_hookup import NetsConfig, NetsHookup
from app.recovery import offer_recovery
from app.ruler import RulerTool
from app.shortcuts import ShortcutGuard
from app.side_panel import DEMO_SOURCE, PanelConfig, SidePanel
from app.snapshots import DisplaySnapshot, FusionStatus
from app.status_bar import StatusBar, StatusBarConfig
from app.unsaved import UnsavedGuard
from app.viewport import Viewport, ViewportConfig
from fusion.classes import CLASSES
from fusion.pipeline import PipelineConfig

log = logging.getLogger(__name__)
ORG, APP = "rgbd-reconstruction", "gui"


@dataclass(frozen=True)
class GuiConfig:
    """Everything the window is built with; the user's QSettings override the scan settings."""

    settings_path: str | None = None     #: QSettings ini file; None: the user's standard location
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    worker: FusionWorkerConfig = field(default_factory=FusionWorkerConfig)
    nets: NetsConfig = field(default_factory=NetsConfig)
    viewport: ViewportConfig = field(default_factory=ViewportConfig)
    panel: PanelConfig = field(default_factory=PanelConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    status: StatusBarConfig = field(default_factory=StatusBarConfig)
    files: FileOpsConfig = field(default_factory=FileOpsConfig)
    window_size_px: tuple = (1440, 880)  #: first-run window size
    error_dialogs: bool = True           #: errors also open a (non-blocking) message box
    confirm_discard: bool = True         #: ask (Save / Discard / Cancel) before unsaved work is discarded
    recovery_dialog: bool = True         #: a crashed run's autosave is offered in a dialog (always in the status bar)
    kernels: KernelWarmupConfig = field(default_factory=KernelWarmupConfig)  #: compile ahead of the first scan
    max_recent: int = 8                  #: recent sources remembered
    list_devices_at_start: bool = True   #: look for RealSense cameras when the window opens


class WorkerBridge(QObject):
    """Carries the fusion worker's 'snapshot ready' to the GUI thread (queued). Thread: emitted from any."""

    snapshot_ready = pyqtSignal()


class MainWindow(QMainWindow):
    """The app window. Thread: GUI thread; workers run on their own threads."""

    snapshot_applied = pyqtSignal(object)   #: the DisplaySnapshot just shown (for the CLI and tests)

    def __init__(self, config: GuiConfig = GuiConfig()):
        super().__init__()
        # Qt deletes the window (and its GL widget) on the GUI thread when it closes; left to Python's
        # cyclic GC it could be destroyed on whichever thread happens to collect, which crashes Qt
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.config = config
        self.settings = QSettings(config.settings_path, QSettings.Format.IniFormat) if config.settings_path \
            else QSettings(ORG, APP)
        self.status = FusionStatus()
        self.errors: list[str] = []
        self.apply_ms: list[float] = []
        self.label_version_shown = -1   #: label-store version whose changes the viewport has been given
        self.last_intrinsics: tuple | None = None  #: (fx, fy, cx, cy, width, height) of the latest frame shown
        self._closed = self._discard_on_close = False
        self.nets = NetsHookup(dataclasses.replace(config.nets, enabled=self._setting("nets/enabled", config.nets.enabled, bool)))
        self.bridge = WorkerBridge(self)
        self.bridge.snapshot_ready.connect(self._on_snapshot)
        self.worker = FusionWorker(self.bridge.snapshot_ready.emit, self.nets, self._pipeline_config(), config.worker)
        self._build_widgets()
        self.files = FileOps(self, config.files)
        self.guard = UnsavedGuard(self, config.confirm_discard)
        self.panel.open_file.connect(self.files.open_file)
        self.panel.open_folder.connect(self.files.open_folder)
        build_menus(self)
        self.shortcut_guard = ShortcutGuard(self, self.actions_by_name.values())
        self._restore_settings()
        self.warmup = KernelWarmup(self.status_bar, config.kernels, parent=self)
        if config.kernels.enabled:
            self.warmup.start()
        self.worker.start_thread()
        if config.list_devices_at_start:
            QTimer.singleShot(0, lambda: self.refresh_devices(announce=False))
        QTimer.singleShot(0, lambda: offer_recovery(self, config.recovery_dialog))

    # --- construction -------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        c = self.config
        self.viewport = Viewport(c.viewport)
        self.panel = SidePanel(c.panel)
        split = QSplitter()
        split.addWidget(self.panel)
        split.addWidget(self.viewport)
        split.setStretchFactor(1, 1)
        split.setSizes([self.panel.minimumWidth(), c.window_size_px[0]])  # the viewport gets the rest
        self.setCentralWidget(split)
        self.camera_dock, self.legend_dock = (self._dock(t, w) for t, w in (("Camera", self.panel.camera_view),
                                                                           ("Classes", self.panel.legend)))
        self.status_bar = StatusBar(c.status)
        self.setStatusBar(self.status_bar)
        self.undo = QUndoStack(self)
        self.correction = CorrectionTool(self.nets, self.viewport, self.undo, c.correction, parent=self)
        self.learning = LearningController(self.nets, self.worker, self.undo, c.learning, parent=self)
        self.learning.message.connect(self.show_event)
        self.status_bar.addPermanentWidget(self.learning.widget)
        self.correction.message.connect(lambda text: self.show_event("info", text))
        self.ruler = RulerTool(lambda: self.viewport.camera.up, parent=self)
        self.ruler.message.connect(lambda text: self.show_event("info", text))
        self.ruler.segment_changed.connect(self.viewport.set_ruler)
        self.viewport.surface_picked.connect(
            lambda point, phase: (self.ruler if self.ruler.active else self.correction).on_pick(point, phase))
        p = self.panel
        p.start.connect(self.start_scan)
        p.pause.connect(lambda on: self.worker.command("pause" if on else "resume"))
        p.stop.connect(lambda: self.worker.command("stop_source"))
        p.reset.connect(self.reset_scan)
        p.record.connect(self._record)
        p.refresh_devices.connect(lambda: self.refresh_devices(announce=True))
        p.settings_changed.connect(self._scan_settings_changed)
        p.notice.connect(self.show_event)
        p.nets_toggled.connect(self._nets_toggled)
        p.mode_changed.connect(self.viewport.set_mode)
        p.fit.connect(self.viewport.fit)
        p.lighting_check.toggled.connect(self.viewport.set_lighting)
        p.follow_check.toggled.connect(self.viewport.set_follow)
        p.correct_btn.toggled.connect(self._set_picking)
        p.tool_box.currentIndexChanged.connect(lambda _i: setattr(self.correction, "tool", p.tool_box.currentData()))
        p.brush_spin.valueChanged.connect(lambda cm: self.correction.set_radius(cm / 100.0))
        p.legend.class_selected.connect(lambda nyu: setattr(self.correction, "nyu40", nyu))
        p.legend.visibility_changed.connect(
            lambda hidden: self.viewport.set_hidden_classes([CLASSES[nyu][1] for nyu in sorted(hidden)]))
        self.correction.set_radius(p.brush_spin.value() / 100.0)
        self.correction.nyu40 = p.legend.selected_class

    def _dock(self, title: str, widget) -> QDockWidget:
        """A movable, floatable (not closable) dock on the right holding `widget`."""
        dock = QDockWidget(title, self)
        dock.setObjectName(f"{title.lower()}_dock")
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        return dock

    def _setting(self, key: str, default, kind=str):
        value = self.settings.value(key, default)
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        try:
            return kind(value)
        except (TypeError, ValueError):
            return default

    def _restore_settings(self) -> None:
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(*self.config.window_size_px)
        p, vol = self.panel, self.config.pipeline.volume
        for spin, key, default in ((p.voxel_spin, "scan/voxel_cm", vol.voxel_size_m * 100),
                                   (p.depth_min_spin, "scan/depth_min_m", vol.depth_min_m),
                                   (p.depth_max_spin, "scan/depth_max_m", vol.depth_max_m),
                                   (p.brush_spin, "correct/brush_cm", p.brush_spin.value())):
            spin.blockSignals(True)
            spin.setValue(self._setting(key, default, float))
            spin.blockSignals(False)
        p.show_validity()
        p.loop_check.blockSignals(True)
        p.loop_check.setChecked(self._setting("scan/loop_closure", self.config.pipeline.loop.enabled, bool))
        p.loop_check.blockSignals(False)
        self.worker.command("config", self._pipeline_config())
        self.correction.set_radius(p.brush_spin.value() / 100.0)
        p.nets_check.blockSignals(True)
        p.nets_check.setChecked(self.nets.enabled)
        p.nets_check.blockSignals(False)
        mode = self._setting("view/mode", "labels")
        p.mode_box.setCurrentIndex(max(p.mode_box.findData(mode), 0))
        p.lighting_check.setChecked(self._setting("view/lighting", True, bool))
        self.viewport.set_mode(p.mode_box.currentData())
        p.set_sources([], self._recent(), self._setting("source/spec", DEMO_SOURCE))

    def _save_settings(self) -> None:
        s, p = self.settings, self.panel
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("scan/voxel_cm", p.voxel_spin.value())
        s.setValue("scan/depth_min_m", p.depth_min_spin.value())
        s.setValue("scan/depth_max_m", p.depth_max_spin.value())
        s.setValue("scan/loop_closure", p.loop_check.isChecked())
        s.setValue("correct/brush_cm", p.brush_spin.value())
        s.setValue("nets/enabled", p.nets_check.isChecked())
        s.setValue("view/mode", self.viewport.mode)
        s.setValue("view/lighting", self.viewport.lighting)
        if p.source_spec():
            s.setValue("source/spec", p.source_spec())
        s.sync()

    def _recent(self) -> list[str]:
        value = self.settings.value("source/recent", [])
        return [value] if isinstance(value, str) else list(value or [])

    # --- intents ------------------------------------------------------------------------------
    def _pipeline_config(self) -> PipelineConfig:
        base = self.config.pipeline
        if not hasattr(self, "panel"):
            return base
        p = self.panel
        vol = dataclasses.replace(base.volume, voxel_size_m=p.voxel_spin.value() / 100.0,
                                  depth_min_m=p.depth_min_spin.value(), depth_max_m=p.depth_max_spin.value())
        loop = dataclasses.replace(base.loop, enabled=p.loop_check.isChecked())
        return dataclasses.replace(base, volume=vol, loop=loop)

    def use_source(self, spec: str) -> None:
        """Select a source (remembered among the recent ones); Start fuses it."""
        recent = [spec] + [r for r in self._recent() if r != spec]
        self.settings.setValue("source/recent", recent[: self.config.max_recent])
        self.panel.select_source(spec)
        self.show_event("info", f"source {spec}: press Start")

    def worker_source(self) -> str:
        return self.status.source or (self.panel.source_spec() or "")

    def _settings_ok(self) -> bool:
        """Refuse scan settings the volume cannot use, with one plain line (and a dialog)."""
        problem = self.panel.settings_problem()
        if problem:
            self.show_event("error", problem)
        return problem is None

    def start_scan(self, max_frames: int | None = None) -> None:
        """Start the selected source: into the loaded session's model, else (asking first when the current
        scan has unsaved work) into a new one."""
        spec = self.panel.source_spec()
        max_frames = max_frames if isinstance(max_frames, int) else None
        if not spec:
            self.show_event("error", "no source selected: pick the demo scene, a camera, a file or a folder")
            return
        if not self._settings_ok():
            return
        if not self.status.continuable and not self.guard.check("Starting a new scan",
                                                                 lambda: self.start_scan(max_frames)):
            return
        self.worker.command("config", self._pipeline_config())
        self.worker.command("start", spec, max_frames)

    def reset_scan(self) -> None:
        if not self._settings_ok() or not self.guard.check("Reset", self.reset_scan):
            return
        self.worker.command("config", self._pipeline_config())
        self.worker.command("reset")

    def mark_saved(self) -> None:
        """A session was just written: the scan and its corrections count as saved."""
        self.undo.setClean()
        self.status = dataclasses.replace(self.status, unsaved_frames=0)

    def _scan_settings_changed(self) -> None:
        self.worker.command("config", self._pipeline_config())
        problem = self.panel.settings_problem()
        self.show_event("warning" if problem else "info",
                        problem or "scan settings apply to the next scan (Reset or Start)")

    def _nets_toggled(self, on: bool) -> None:
        self.worker.command("nets", on)

    def _record(self, on: bool) -> None:
        if not on:
            self.worker.command("record", None)
            return
        name = time.strftime("scan-%Y%m%d-%H%M%S.db3")
        self.worker.command("record", f"{self.files.last_dir}/{name}")

    def set_ruler(self, on: bool) -> None:
        """Measure distances on the surface (turns label correction off, and back)."""
        if on and self.panel.correct_btn.isChecked():
            self.panel.correct_btn.setChecked(False)
        self.ruler.set_active(on)
        self._set_picking(self.panel.correct_btn.isChecked())

    def _set_picking(self, on: bool) -> None:
        if on and self.ruler.active:  # correcting ends measuring
            self.actions_by_name["ruler"].setChecked(False)
            self.ruler.set_active(False)
        on = bool(on) or self.ruler.active
        self.viewport.picking = on
        if on:
            self.viewport.setCursor(Qt.CursorShape.CrossCursor)
        else:
            self.viewport.unsetCursor()

    def refresh_devices(self, announce: bool = True) -> None:
        """List the RealSense cameras attached, on a job thread (the SDK may take a while); an SDK
        error shows as a message, never a crash."""
        def listing(job):
            from fusion.sources.rs_common import list_devices

            job.ctx["result"] = list_devices()

        job = Job("devices", [("listing RealSense cameras", listing)], cancellable=False, config=self.config.files.jobs)
        job.signals.setParent(self)
        job.signals.done.connect(lambda found: self._show_devices(found, announce))
        job.signals.failed.connect(lambda msg: self.show_event("warning", f"cannot list RealSense cameras: {msg}"))
        self.files.jobs.append(job)
        job.start()

    def _show_devices(self, found: list, announce: bool) -> None:
        devices = [(f"RealSense {d.name} ({d.serial})", f"realsense:{d.serial}") for d in found]
        self.panel.set_sources(devices, self._recent())
        if announce and not devices:
            self.show_event("info", "no RealSense camera found: plug one in via USB 3, or open a recording")

    # --- snapshots ----------------------------------------------------------------------------
    def _on_snapshot(self) -> None:
        snap = self.worker.outbox.take()
        if snap is None or self._closed:
            return
        t0 = time.perf_counter()
        self.apply_snapshot(snap)
        self.apply_ms.append((time.perf_counter() - t0) * 1e3)
        self.snapshot_applied.emit(snap)

    def apply_snapshot(self, snap: DisplaySnapshot) -> None:
        if snap.reset:
            self.undo.clear()  # the label store was replaced
        self.status = snap.status
        self.viewport.apply_snapshot(snap)
        self.label_version_shown = max(self.label_version_shown, snap.label_version) if not snap.reset \
            else snap.label_version
        self.panel.set_thumbnails(snap.color_thumb, snap.depth_thumb, clear=snap.reset)
        self.last_intrinsics = snap.intrinsics or (None if snap.reset else self.last_intrinsics)
        if snap.class_counts is not None or snap.reset:
            self.panel.legend.set_counts(snap.class_counts or {})
        s = snap.status
        self.panel.set_state(s.state, s.can_record, bool(s.recording))
        self.actions_by_name["start"].setEnabled(self.panel.start_btn.isEnabled())
        self.status_bar.show_status(s, self.viewport.paint_stats())
        self.status_bar.set_busy("autosave", "autosaving…" if s.autosaving else None)
        self.status_bar.set_busy("final", "final labels…" if s.nets.get("final_pass") else None)
        self.status_bar.set_busy("nets", "loading the labeling nets…" if s.nets.get("loading") else None)
        for ev in snap.events:
            self.show_event(ev.level, ev.text, ev.hint)
        self.setWindowTitle(f"RGB-D reconstruction — {s.source}" if s.source else "RGB-D reconstruction")

    def show_event(self, level: str, text: str, hint: str = "") -> None:
        """A message for the user: the status bar always, a dialog too for errors."""
        full = f"{text} — {hint}" if hint else text
        self.status_bar.message(level, full)
        if level == "error":
            self.errors.append(full)
            if self.config.error_dialogs and not self._closed:
                box = QMessageBox(QMessageBox.Icon.Warning, "RGB-D reconstruction", full, parent=self)
                box.open()  # non-blocking: workers and the viewport go on

    # --- shutdown -----------------------------------------------------------------------------
    def shutdown(self) -> bool:
        """Stop and join every worker (each bounded); True when all ended."""
        if self._closed:
            return True
        self._closed = True
        self.files.shutdown()
        self.learning.shutdown()
        self.worker.stop()
        ok = self.worker.join()
        if not ok:
            log.warning("fusion worker did not end within %.1f s", self.config.worker.join_timeout_s)
        return ok

    def close_discarding(self) -> bool:
        """Close without asking about unsaved work (scripted runs, test teardown)."""
        self._discard_on_close = True
        return self.close()

    def closeEvent(self, ev) -> None:
        if not (self._closed or self._discard_on_close) and not self.guard.check("Quitting", self.close):
            ev.ignore()
            return
        self._save_settings()
        self.shutdown()
        super().closeEvent(ev)
