"""Owns the window's file work: open a recording or dataset folder, save and load sessions, export the
labeled mesh, save screenshots. Slow parts run as jobs (progress + cancel); the pipeline is only
touched on the fusion thread through `FusionWorker.call`."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from PyQt6.QtWidgets import QFileDialog

from app.export_files import EXTRAS, check_export_path, describe_written, write_export
from app.jobs import Job, JobConfig, JobDialog
from fusion.errors import UserError
from storage.export import LabeledMesh
from storage.autosave import discard, find_recoverable
from storage.session import load_session, save_session

log = logging.getLogger(__name__)
RECORDING_FILTER = "RealSense recordings (*.bag *.db3);;All files (*)"
SESSION_FILTER = "Sessions (*.session);;All files (*)"
EXPORT_FILTER = "PLY mesh (*.ply);;OBJ mesh (*.obj);;glTF binary (*.glb)"


@dataclass(frozen=True)
class FileOpsConfig:
    """Defaults of the file dialogs and jobs."""

    session_suffix: str = ".session"     #: added to a session name without a suffix
    export_suffix: str = ".ply"          #: added to an export name without a known suffix
    jobs: JobConfig = field(default_factory=JobConfig)  #: how the jobs wait and end
    view_image_scale: int = 3            #: a view image has this many times the viewport's pixels per side
    view_image_max_px: int = 8192        #: ... but no side longer than this (OpenGL's renderbuffer limit)


def _final_mesh(worker):
    if worker.pipeline is None or worker.pipeline.volume.n_blocks == 0:
        raise UserError("nothing scanned yet: start a source first")
    return (worker.pipeline.final_mesh(), *worker.trajectory())


class FileOps:
    """File menu work for one main window. Thread: GUI thread (job stages run on job threads)."""

    def __init__(self, window, config: FileOpsConfig = FileOpsConfig()):
        self.window, self.config = window, config
        self.jobs: list[Job] = []

    @property
    def last_dir(self) -> str:
        return str(self.window.settings.value("paths/last_dir", str(Path.home())))

    def _remember(self, path: str) -> None:
        self.window.settings.setValue("paths/last_dir", str(Path(path).parent))

    # --- sources ------------------------------------------------------------------------------
    def open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.window, "Open recording", self.last_dir, RECORDING_FILTER)
        if path:
            self._remember(path)
            self.window.use_source(path)

    def open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self.window, "Open dataset folder", self.last_dir)
        if path:
            self.window.settings.setValue("paths/last_dir", path)
            self.window.use_source(path)

    # --- jobs ---------------------------------------------------------------------------------
    def run(self, job: Job, title: str, on_done=None) -> Job:
        self.jobs = [j for j in self.jobs if not j.join(0)]
        job.signals.setParent(self.window)  # owned (and deleted) by the window, on the GUI thread
        dialog = JobDialog(job, title, self.window)
        job.signals.failed.connect(lambda msg: self.window.show_event("info" if msg == "cancelled" else "error",
                                                                      f"{title}: {msg}"))
        if on_done is not None:
            job.signals.done.connect(on_done)
        job.dialog = dialog
        self.jobs.append(job)
        job.start()
        return job

    def save_session(self, path: str | None = None) -> Job | None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.window, "Save session", self.last_dir, SESSION_FILTER)
            if not path:
                return None
        path = Path(path) if Path(path).suffix else Path(path).with_suffix(self.config.session_suffix)
        self._remember(str(path))
        w = self.window
        settings = {"command": "gui", "source": w.worker_source(), "saved_at_unix_s": time.time()}

        def save(job):
            extras = w.nets.session_extras()
            job.ctx["result"] = job.wait(w.worker.call(lambda wk: _save(wk, path, settings, extras)))

        def saved(size):
            w.mark_saved()
            w.show_event("info", f"saved session {path} ({size / 1e6:.1f} MB)")

        return self.run(Job("save-session", [("saving", save)], cancellable=False, config=self.config.jobs),
                        "Save session", saved)

    def load_session(self, path: str | None = None, ask: bool = True) -> Job | None:
        """Load a session (asking first when the current scan has unsaved work); None when nothing started."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self.window, "Open session", self.last_dir, SESSION_FILTER)
            if not path:
                return None
        w = self.window
        if ask and not w.guard.check(f"Opening {Path(path).name}", lambda: self.load_session(path, ask=False)):
            return None
        self._remember(path)

        def read(job):
            job.ctx["session"] = load_session(path)

        def hand_over(job):
            w.worker.command("load", job.ctx.pop("session"), Path(path).name)
            job.ctx["result"] = path

        job = Job("load-session", [("reading", read), ("building the view", hand_over)], config=self.config.jobs)
        job.on_cancel = lambda ctx: ctx["session"].pipeline.close() if "session" in ctx else None
        return self.run(job, "Open session", lambda p: w.show_event("info", f"loaded session {p}"))

    def recover_autosave(self) -> Job | None:
        """Load the newest autosave a crashed run left behind (and stop offering it)."""
        found = find_recoverable()
        if not found:
            self.window.show_event("info", "no autosaved scan to recover")
            return None
        entry = found[0]
        if not self.window.guard.check("Recovering the autosaved scan", self.recover_autosave):
            return None
        discard(entry)
        return self.load_session(str(entry.session_path), ask=False)

    def export_extras(self) -> set[str]:
        """The extra files ticked under File > Export also (remembered between runs)."""
        return {k for k in EXTRAS if self.window.settings.value(f"export/{k}", False) in (True, "true", "1")}

    def set_export_extra(self, key: str, on: bool) -> None:
        self.window.settings.setValue(f"export/{key}", bool(on))

    def export(self, path: str | None = None, extras=None) -> Job | None:
        """Export the labeled mesh to `path` (format by extension) plus the `extras` (keys of
        app.export_files.EXTRAS; default: those ticked in the menu). The message names every file written."""
        extras = self.export_extras() if extras is None else set(extras)
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.window, "Export labeled mesh", self.last_dir, EXPORT_FILTER)
            if not path:
                return None
        path = Path(path)
        if path.suffix.lower() not in (".ply", ".obj", ".glb"):
            path = path.with_suffix(self.config.export_suffix)
        try:
            check_export_path(path)
        except UserError as exc:
            self.window.show_event("error", str(exc))
            return None
        self._remember(str(path))
        w = self.window

        def mesh(job):
            job.ctx["mesh"], job.ctx["stamps"], job.ctx["poses"] = job.wait(w.worker.call(_final_mesh))

        def labels(job):
            m = job.ctx["mesh"]
            job.ctx["labeled"] = LabeledMesh.from_mesh(m, w.nets.mesh_labels(m))

        def write(job):
            job.ctx["result"] = write_export(path, job.ctx["labeled"], extras, job.ctx["stamps"], job.ctx["poses"])

        job = Job("export", [("meshing", mesh), ("labelling", labels), ("writing", write)], config=self.config.jobs)
        return self.run(job, "Export", lambda files: w.show_event("info", describe_written(files)))

    def screenshot(self, path: str | None = None) -> Path | None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.window, "Save screenshot", self.last_dir, "PNG (*.png)")
            if not path:
                return None
        path = Path(path)
        self.window.viewport.flush_uploads()
        if not self.window.grab().save(str(path)):
            self.window.show_event("error", f"cannot write screenshot {path}")
            return None
        self.window.show_event("info", f"screenshot saved to {path}")
        return path

    def save_view_image(self, path: str | None = None) -> Path | None:
        """The 3D view alone (no panels), at `view_image_scale` times its size, in full detail."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.window, "Save view image", self.last_dir, "PNG (*.png)")
            if not path:
                return None
        path, v, c = Path(path), self.window.viewport, self.config
        dpr = v.devicePixelRatioF()
        scale = min(c.view_image_scale, c.view_image_max_px / max(v.width() * dpr, v.height() * dpr, 1))
        w, h = int(v.width() * dpr * scale), int(v.height() * dpr * scale)
        v.flush_uploads()
        image = v.render_offscreen(w, h)
        if image is None or image.isNull() or not image.save(str(path)):
            self.window.show_event("error", f"cannot write the view image {path}")
            return None
        self.window.show_event("info", f"view image ({w}x{h}) saved to {path}")
        return path

    def shutdown(self) -> None:
        """Cancel and join every job (bounded)."""
        for job in self.jobs:
            job.cancel()
        for job in self.jobs:
            if not job.join():
                log.warning("job %s did not end within %.1f s", job.name, job.config.join_timeout_s)


def _pipeline(worker):
    if worker.pipeline is None:
        raise UserError("nothing scanned yet: start a source first")
    return worker.pipeline


def _save(worker, path: Path, settings: dict, extras: dict) -> int:
    """Write the session (fusion thread) and mark the model saved; returns the bytes written."""
    size = save_session(path, _pipeline(worker), *worker.trajectory(), worker.source_description(), settings, extras)
    worker.mark_saved()
    return size

