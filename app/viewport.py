"""Owns the 3D viewport widget: draws the chunked mesh in the chosen colour mode with lighting, the
completion overlay, the live camera frustum and trajectory; orbit/pan/zoom/fit/follow; surface picking
by reading back the depth buffer; paint-time measurement.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from OpenGL import GL
from PyQt6.QtCore import QTimer, Qt, pyqtSignal
from PyQt6.QtOpenGLWidgets import QOpenGLWidget

from app.camera import CameraConfig, OrbitCamera
from app.picking import read_surface
from app.gl_scene import (LINE_FS, LINE_VS, MESH_FS, MESH_VS, MODES, LineBuffer, MeshBuffer, Program,
                          adapt_budgets, choose_detail, frustum_lines, LOD_LEVELS)
from app.snapshots import VERTEX_DTYPE, DisplaySnapshot, MeshDisplay

log = logging.getLogger(__name__)
COLOR_MODES = ("rgb", "labels", "confidence", "completion")


@dataclass(frozen=True)
class ViewportConfig:
    """How the viewport draws and measures."""

    camera: CameraConfig = field(default_factory=CameraConfig)
    background: tuple = (0.12, 0.13, 0.15)   #: clear colour RGB 0..1
    upload_budget_bytes: int = 8 << 20      #: GPU uploads per paint at most (the rest waits a frame)
    full_detail_triangles: int = 200_000    #: first budget: nearest chunks drawn in full up to this many triangles
    target_paint_ms: float = 25.0           #: the budgets adapt so a paint takes about this long
    budget_range: tuple = (0, 20_000_000)   #: each adaptive budget stays in this range (triangles)
    frustum_depth_m: float = 0.3            #: drawn depth of the live camera's frustum
    frustum_rgba: tuple = (1.0, 1.0, 1.0, 1.0)      #: colour of the live camera's frustum
    trajectory_rgba: tuple = (1.0, 0.85, 0.2, 1.0)  #: colour of the camera path
    ruler_rgba: tuple = (1.0, 0.2, 0.9, 1.0)        #: colour of the ruler's segment (drawn over the surface)
    completion_alpha: float = 0.45          #: opacity of completed geometry
    pick_window_px: int = 7                 #: picking reads a square this wide and takes the nearest hit
    brush_window_px: int = 161              #: a brush reads the surface from a square this wide at most
    paint_history: int = 500                #: paint times kept for percentiles
    finish_paint: bool = True               #: glFinish in paintGL so paint time includes the GPU's work
    data_fps: float = 12.0                  #: repaints for new scan data at most this often (interaction: at once)


class Viewport(QOpenGLWidget):
    """The 3D view. Thread: GUI thread only (GL calls happen in initializeGL/paintGL/pick)."""

    #: surface point under the mouse in picking mode: (world point (3,) float64, phase press|drag|release)
    surface_picked = pyqtSignal(object, str)

    def __init__(self, config: ViewportConfig = ViewportConfig(), parent=None):
        super().__init__(parent)
        self.config = config
        self.camera = OrbitCamera(config.camera)
        self.mode, self.lighting, self.follow, self.picking = "labels", True, False, False
        self.show_completion = True
        self.paint_ms: deque = deque(maxlen=config.paint_history)
        self.paint_triangles: deque = deque(maxlen=config.paint_history)  #: triangles drawn by each timed paint
        self.gl_error = ""
        self._buffers: dict[tuple, MeshBuffer] = {}
        self._table: tuple | None = None   # (keys, lo, hi, (K, LOD_LEVELS) triangles) of the uploaded chunks
        #: triangles the nearest chunks may draw at each level of detail but the coarsest (see choose_detail);
        #: a level's budget adapts once the finer ones are spent: full detail goes first
        self.budgets = [config.full_detail_triangles] + [config.budget_range[1]] * (LOD_LEVELS - 2)
        self.last_draw: dict = {}
        self._pending: dict[tuple, MeshDisplay] = {}
        self._bounds: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._completion: MeshDisplay | None = None
        self._completion_buf: MeshBuffer | None = None
        self._clear_gl = False
        self.hidden_rgb = np.zeros((0, 3), np.float32)  #: label colours (0-1) of the classes hidden in the legend
        self._lines: dict[str, np.ndarray] = {name: np.zeros((0, 3)) for name in ("frustum", "trajectory", "ruler")}
        self._line_dirty = True
        self._auto_fit, self._oriented = True, False
        self._pose: np.ndarray | None = None
        self._drag: tuple | None = None
        self._gl_ready = False
        self._last_paint_s = 0.0
        self._paint_timer = QTimer(self)
        self._paint_timer.setSingleShot(True)
        self._paint_timer.timeout.connect(self.update)
        self.setMinimumSize(320, 240)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    # --- data in ------------------------------------------------------------------------------
    def apply_snapshot(self, snap: DisplaySnapshot) -> None:
        """Queue a snapshot's chunk changes for upload and update the camera overlays; repaint only
        when something shown changed (status-only snapshots arrive while idle: no repaint, no CPU)."""
        changed = bool(snap.reset or snap.chunks or snap.completion is not None)
        if snap.reset:
            self._pending.clear()
            self._bounds.clear()
            self._clear_gl, self._auto_fit, self._oriented = True, True, False
            self._completion = MeshDisplay(np.zeros(0, VERTEX_DTYPE), np.zeros(0, np.uint32), np.zeros(3), np.zeros(3))
        for key, mesh in snap.chunks.items():
            self._pending[key] = mesh
            if mesh.empty:
                self._bounds.pop(key, None)
            else:
                self._bounds[key] = (mesh.lo_m, mesh.hi_m)
        if snap.completion is not None:
            self._completion = snap.completion
        if snap.up is not None and not np.allclose(np.asarray(snap.up, float) / max(np.linalg.norm(snap.up), 1e-12),
                                                   self.camera.up):
            self.camera.set_up(snap.up)
            changed = True
        if snap.trajectory_m is not None and not _same_array(self._lines["trajectory"], snap.trajectory_m):
            self._lines["trajectory"] = snap.trajectory_m
            self._line_dirty = changed = True
        moved = snap.T_world_cam is not None and not _same_array(self._pose, snap.T_world_cam)
        if moved:
            self._pose = snap.T_world_cam
        if moved and snap.intrinsics is not None:
            self._lines["frustum"] = frustum_lines(snap.T_world_cam, snap.intrinsics, self.config.frustum_depth_m)
            self._line_dirty = changed = True
            if self.follow:
                self.camera.follow(snap.T_world_cam)
        if self._auto_fit and not self.follow and snap.chunks:
            self._fit_bounds()
        if changed:
            self._data_changed()

    def _data_changed(self) -> None:
        """Repaint for new data, but at most data_fps times a second (the CPU is shared with fusion)."""
        wait_ms = 1000.0 / self.config.data_fps - (time.perf_counter() - self._last_paint_s) * 1e3
        if wait_ms <= 0:
            self.update()
        elif not self._paint_timer.isActive():
            self._paint_timer.start(int(wait_ms) + 1)

    def flush_uploads(self) -> None:
        """Paint until every queued chunk is on the GPU (for screenshots and tests)."""
        for _ in range(1000):
            self.repaint()
            if not self._pending or not self._gl_ready:
                return

    @property
    def n_chunks(self) -> int:
        """Mesh chunks with a surface in the current scan (uploaded or waiting for upload)."""
        return len(self._bounds)

    def scene_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self._bounds:
            return None
        lo = np.min([b[0] for b in self._bounds.values()], axis=0)
        hi = np.max([b[1] for b in self._bounds.values()], axis=0)
        return lo, hi

    # --- view commands ------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode not in COLOR_MODES:
            raise ValueError(f"unknown colour mode {mode!r}")
        self.mode = mode
        self.update()

    def set_lighting(self, on: bool) -> None:
        self.lighting = bool(on)
        self.update()

    def set_follow(self, on: bool) -> None:
        self.follow = bool(on)
        self.update()

    def fit(self) -> None:
        """Fit the whole scene and keep fitting while it grows (until the user moves the camera)."""
        self._auto_fit, self.follow = True, False
        self._fit_bounds()
        self.update()

    def _fit_bounds(self) -> None:
        b = self.scene_bounds()
        if b is not None:
            if not self._oriented and self._pose is not None:  # first view of a scan: the camera's side
                self.camera.face_like(self._pose)
                self._oriented = True
            self.camera.fit(*b, aspect=self.width() / max(self.height(), 1))

    # --- GL -----------------------------------------------------------------------------------
    def initializeGL(self) -> None:
        try:
            self._mesh_prog = Program(MESH_VS, MESH_FS)
            self._line_prog = Program(LINE_VS, LINE_FS)
            self._traj = LineBuffer(GL.GL_LINE_STRIP)
            self._frustum = LineBuffer(GL.GL_LINES)
            self._ruler = LineBuffer(GL.GL_LINE_STRIP)
            self._gl_ready = True
        except Exception as exc:  # no usable OpenGL 3.3: say so instead of crashing
            self.gl_error = f"OpenGL 3.3 is not available: {exc}"
            log.error("%s", self.gl_error)

    def paintGL(self) -> None:
        t0 = self._last_paint_s = time.perf_counter()
        c = self.config.background
        GL.glClearColor(c[0], c[1], c[2], 1.0)
        GL.glClear(GL.GL_COLOR_BUFFER_BIT | GL.GL_DEPTH_BUFFER_BIT)
        if not self._gl_ready:
            return
        dpr = self.devicePixelRatioF()
        self._draw_scene(int(round(self.width() * dpr)), int(round(self.height() * dpr)))
        if self.config.finish_paint:
            GL.glFinish()
        self.paint_ms.append((time.perf_counter() - t0) * 1e3)
        self.paint_triangles.append(self.last_draw.get("triangles", 0))
        self._adapt_budget(self.paint_ms[-1])

    def _draw_scene(self, w: int, h: int) -> None:
        """Draw everything into the bound framebuffer of w x h pixels (context current)."""
        GL.glViewport(0, 0, w, h)
        GL.glEnable(GL.GL_DEPTH_TEST)
        self._sync_buffers()
        view = self.camera.view()
        mvp = self.camera.projection(w / max(h, 1)) @ view
        self._draw_meshes(mvp, view)
        self._draw_lines(mvp)
        self._draw_completion(mvp, view)

    def render_offscreen(self, w: int, h: int):
        """The view alone as a w x h QImage, every chunk in full detail (for high-resolution images);
        None without OpenGL."""
        from PyQt6.QtOpenGL import QOpenGLFramebufferObject, QOpenGLFramebufferObjectFormat

        if not self._gl_ready:
            return None
        self.makeCurrent()
        budgets, self.budgets = self.budgets, [10**12] * len(self.budgets)
        try:
            fmt = QOpenGLFramebufferObjectFormat()
            fmt.setAttachment(QOpenGLFramebufferObject.Attachment.CombinedDepthStencil)
            fbo = QOpenGLFramebufferObject(w, h, fmt)
            fbo.bind()
            c = self.config.background
            GL.glClearColor(c[0], c[1], c[2], 1.0)
            GL.glClear(GL.GL_COLOR_BUFFER_BIT | GL.GL_DEPTH_BUFFER_BIT)
            self._draw_scene(w, h)
            GL.glFinish()
            image = fbo.toImage()
            fbo.release()
            return image
        finally:
            self.budgets = budgets
            self.doneCurrent()

    def _adapt_budget(self, ms: float) -> None:
        c = self.config
        self.budgets = adapt_budgets(self.budgets, self.last_draw, c.target_paint_ms / max(ms, 1e-3), c.budget_range)

    def _sync_buffers(self) -> None:
        if self._pending or self._clear_gl:
            self._table = None
        if self._clear_gl:
            for buf in self._buffers.values():
                buf.delete()
            self._buffers.clear()
            self._clear_gl = False
        budget = self.config.upload_budget_bytes
        for key in list(self._pending):
            if budget <= 0:
                self.update()  # the rest next frame
                break
            mesh = self._pending.pop(key)
            if mesh.empty:
                buf = self._buffers.pop(key, None)
                if buf is not None:
                    buf.delete()
                continue
            buf = self._buffers.get(key) or self._buffers.setdefault(key, MeshBuffer())
            buf.upload(mesh)
            budget -= mesh.vertices.nbytes + mesh.indices.nbytes
        if self._completion is not None:
            if self._completion_buf is None:
                self._completion_buf = MeshBuffer()
            self._completion_buf.upload(self._completion)
            self._completion = None
        if self._line_dirty:
            self._traj.upload(self._lines["trajectory"])
            self._frustum.upload(self._lines["frustum"])
            self._ruler.upload(self._lines["ruler"])
            self._line_dirty = False

    def _use_mesh_prog(self, mvp, view, mode: int, alpha: float) -> None:
        p = self._mesh_prog
        GL.glUseProgram(p.id)
        p.mat4("u_mvp", mvp)
        p.mat4("u_view", view)
        GL.glUniform1i(p.loc("u_mode"), mode)
        GL.glUniform1i(p.loc("u_lighting"), int(self.lighting))
        GL.glUniform1f(p.loc("u_alpha"), alpha)
        GL.glUniform1i(p.loc("u_n_hidden"), len(self.hidden_rgb))
        if len(self.hidden_rgb):
            GL.glUniform3fv(p.loc("u_hidden"), len(self.hidden_rgb), self.hidden_rgb)

    def _chunk_table(self) -> tuple:
        if self._table is None:
            keys = [k for k in self._buffers if k in self._bounds]
            lo = np.array([self._bounds[k][0] for k in keys], np.float64).reshape(-1, 3)
            hi = np.array([self._bounds[k][1] for k in keys], np.float64).reshape(-1, 3)
            tris = np.array([[n // 3 for n in self._buffers[k].counts] for k in keys], np.int64).reshape(-1, LOD_LEVELS)
            self._table = (keys, lo, hi, tris)
        return self._table

    def _draw_meshes(self, mvp, view) -> None:
        self._use_mesh_prog(mvp, view, MODES[self.mode], 1.0)
        keys, lo, hi, tris = self._chunk_table()
        visible, level = choose_detail(lo, hi, tris, mvp, self.camera.eye(), self.budgets)
        for i in np.nonzero(visible)[0]:
            self._buffers[keys[i]].draw(level[i])
        GL.glBindVertexArray(0)
        drawn = [int(tris[visible & (level == lv), lv].sum()) for lv in range(LOD_LEVELS)]
        self.last_draw = {"chunks": len(keys), "visible": int(visible.sum()),
                          "level_chunks": [int(np.sum(visible & (level == lv))) for lv in range(LOD_LEVELS)],
                          "level_triangles": drawn, "triangles": sum(drawn), "triangles_total": int(tris[:, 0].sum())}

    def _draw_completion(self, mvp, view) -> None:
        buf = self._completion_buf
        if self.mode != "completion" or buf is None or not buf.count:
            return
        self._use_mesh_prog(mvp, view, MODES["labels"], self.config.completion_alpha)
        GL.glEnable(GL.GL_BLEND)
        GL.glBlendFunc(GL.GL_SRC_ALPHA, GL.GL_ONE_MINUS_SRC_ALPHA)
        GL.glDepthMask(GL.GL_FALSE)  # translucent, and never picked
        buf.draw()
        GL.glDepthMask(GL.GL_TRUE)
        GL.glDisable(GL.GL_BLEND)
        GL.glBindVertexArray(0)

    def _draw_lines(self, mvp) -> None:
        p = self._line_prog
        GL.glUseProgram(p.id)
        p.mat4("u_mvp", mvp)
        GL.glDepthMask(GL.GL_FALSE)  # overlays: not picked
        for buf, color in ((self._traj, self.config.trajectory_rgba), (self._frustum, self.config.frustum_rgba)):
            GL.glUniform4f(p.loc("u_color"), *color)
            buf.draw()
        GL.glDisable(GL.GL_DEPTH_TEST)  # the ruler's segment lies on the surface: drawn over it
        GL.glUniform4f(p.loc("u_color"), *self.config.ruler_rgba)
        self._ruler.draw()
        GL.glEnable(GL.GL_DEPTH_TEST)
        GL.glDepthMask(GL.GL_TRUE)
        GL.glBindVertexArray(0)

    def set_hidden_classes(self, rgb: np.ndarray) -> None:
        """Hide the surface of the classes with these label colours ((k,3) 0-255, at most 20)."""
        self.hidden_rgb = np.ascontiguousarray(np.asarray(rgb, np.float32).reshape(-1, 3)[:20] / 255.0)
        self.update()

    def set_ruler(self, points_m: np.ndarray) -> None:
        """The ruler's segment ((0..2, 3) world points; fewer than two draw nothing)."""
        self._lines["ruler"] = np.asarray(points_m, float).reshape(-1, 3)
        self._line_dirty = True
        self.update()

    # --- picking ------------------------------------------------------------------------------
    def _pixels(self) -> tuple[int, int, float]:
        dpr = self.devicePixelRatioF()
        return int(round(self.width() * dpr)), int(round(self.height() * dpr)), dpr

    def pick(self, x_px: float, y_px: float) -> np.ndarray | None:
        """World point of the surface under widget pixel (x, y), None when there is none."""
        if not self._gl_ready:
            return None
        w, h, dpr = self._pixels()
        r = self.config.pick_window_px // 2
        points, dist2 = read_surface(self, self.camera, int(x_px * dpr), int(y_px * dpr), r, w, h)
        return None if not len(points) else points[np.argmin(dist2)]

    def surface_points_near(self, center_m: np.ndarray, radius_m: float) -> np.ndarray:
        """(K,3) visible surface points within radius_m of center_m (read back from the depth buffer)."""
        if not self._gl_ready:
            return np.zeros((0, 3))
        w, h, _ = self._pixels()
        clip = self.camera.projection(w / max(h, 1)) @ self.camera.view() @ np.append(center_m, 1.0)
        if clip[3] <= 1e-6:
            return np.zeros((0, 3))
        x = (clip[0] / clip[3] + 1) / 2 * w
        y = (1 - clip[1] / clip[3]) / 2 * h
        f_px = h / 2 / np.tan(np.radians(self.camera.config.fov_y_deg) / 2)
        r = int(min(radius_m * f_px / clip[3] + 2, self.config.brush_window_px // 2))
        points, _ = read_surface(self, self.camera, int(x), int(y), r, w, h)
        return points[np.linalg.norm(points - center_m, axis=1) <= radius_m] if len(points) else points

    # --- mouse --------------------------------------------------------------------------------
    def mousePressEvent(self, ev) -> None:
        pos = ev.position()
        if self.picking and ev.button() == Qt.MouseButton.LeftButton:
            self._drag = ("pick", pos)
            self._emit_pick(pos, "press")
            return
        pan = ev.button() in (Qt.MouseButton.RightButton, Qt.MouseButton.MiddleButton) or (
            ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        self._drag = ("pan" if pan else "orbit", pos)

    def mouseMoveEvent(self, ev) -> None:
        if self._drag is None:
            return
        kind, last = self._drag
        pos = ev.position()
        self._drag = (kind, pos)
        if kind == "pick":
            self._emit_pick(pos, "drag")
            return
        self._auto_fit, self.follow = False, False
        dx, dy = pos.x() - last.x(), pos.y() - last.y()
        if kind == "orbit":
            self.camera.orbit(dx, dy)
        else:
            self.camera.pan(dx, dy, self.height())
        self.update()

    def mouseReleaseEvent(self, ev) -> None:
        if self._drag is not None and self._drag[0] == "pick":
            self._emit_pick(ev.position(), "release")
        self._drag = None

    def wheelEvent(self, ev) -> None:
        self._auto_fit = False
        self.camera.zoom(ev.angleDelta().y() / 120.0)
        self.update()

    def _emit_pick(self, pos, phase: str) -> None:
        point = self.pick(pos.x(), pos.y())
        if point is not None or phase == "release":
            self.surface_picked.emit(point, phase)

    def paint_stats(self) -> dict:
        """p50/p95/max paint time in ms over the kept history."""
        if not self.paint_ms:
            return {}
        v = np.array(self.paint_ms)
        return {"n": len(v), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                "max": float(v.max())}


def _same_array(a, b) -> bool:
    """True when a and b hold the same values (either may be None)."""
    return a is b or (a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b))
