"""Owns the viewport's OpenGL resources: the shader programs, one vertex/index buffer per mesh chunk
(re-uploaded only when that chunk changed), and the line buffers (camera frustum, trajectory).

Every function here needs the viewport's GL context current: call only from QOpenGLWidget's
initializeGL/paintGL on the GUI thread.
"""
from __future__ import annotations

import ctypes
import logging

import numpy as np
from OpenGL import GL

from app.snapshots import VERTEX_DTYPE, MeshDisplay

log = logging.getLogger(__name__)

MODES = {"rgb": 0, "labels": 1, "confidence": 2, "completion": 1}  #: colour mode -> shader mode

MESH_VS = """#version 330 core
layout(location = 0) in vec3 a_pos;
layout(location = 1) in vec3 a_nrm;
layout(location = 2) in vec4 a_rgb;
layout(location = 3) in vec4 a_lab;
uniform mat4 u_mvp;
uniform mat4 u_view;
uniform int u_mode;
uniform int u_n_hidden;       // classes hidden in the legend: their label colours
uniform vec3 u_hidden[20];
out vec3 v_color;
out vec3 v_nrm;
out float v_hidden;
vec3 conf_color(float c) {
    vec3 lo = vec3(0.85, 0.10, 0.10), mid = vec3(0.95, 0.85, 0.10), hi = vec3(0.10, 0.75, 0.20);
    return c < 0.5 ? mix(lo, mid, c * 2.0) : mix(mid, hi, c * 2.0 - 1.0);
}
void main() {
    gl_Position = u_mvp * vec4(a_pos, 1.0);
    v_nrm = mat3(u_view) * a_nrm;
    bool labeled = any(greaterThan(a_lab.rgb, vec3(0.0)));
    vec3 grey = mix(a_rgb.rgb, vec3(dot(a_rgb.rgb, vec3(0.299, 0.587, 0.114))), 0.75) * 0.7;  // unlabelled: muted
    if (u_mode == 0) v_color = a_rgb.rgb;
    else if (u_mode == 2) v_color = labeled ? conf_color(a_lab.a) : grey;
    else v_color = labeled ? a_lab.rgb : grey;
    v_hidden = 0.0;
    for (int i = 0; i < u_n_hidden; ++i)
        if (labeled && all(lessThan(abs(a_lab.rgb - u_hidden[i]), vec3(0.002)))) v_hidden = 1.0;
}
"""
MESH_FS = """#version 330 core
in vec3 v_color;
in vec3 v_nrm;
in float v_hidden;
uniform int u_lighting;
uniform float u_alpha;
out vec4 frag;
void main() {
    if (v_hidden > 0.5) discard;  // a hidden class: neither drawn nor picked
    vec3 c = v_color;
    if (u_lighting == 1) {
        vec3 n = normalize(v_nrm);
        float head = abs(n.z);
        float key = abs(dot(n, normalize(vec3(0.4, 0.7, 0.6))));
        c *= clamp(0.35 + 0.45 * head + 0.3 * key, 0.0, 1.0);
    }
    frag = vec4(c, u_alpha);
}
"""
LINE_VS = """#version 330 core
layout(location = 0) in vec3 a_pos;
uniform mat4 u_mvp;
void main() { gl_Position = u_mvp * vec4(a_pos, 1.0); }
"""
LINE_FS = """#version 330 core
uniform vec4 u_color;
out vec4 frag;
void main() { frag = u_color; }
"""


def _compile(vs: str, fs: str) -> int:
    shaders = []
    for src, kind in ((vs, GL.GL_VERTEX_SHADER), (fs, GL.GL_FRAGMENT_SHADER)):
        sh = GL.glCreateShader(kind)
        GL.glShaderSource(sh, src)
        GL.glCompileShader(sh)
        if not GL.glGetShaderiv(sh, GL.GL_COMPILE_STATUS):
            raise RuntimeError(f"shader compile failed: {GL.glGetShaderInfoLog(sh).decode(errors='replace')}")
        shaders.append(sh)
    prog = GL.glCreateProgram()
    for sh in shaders:
        GL.glAttachShader(prog, sh)
    GL.glLinkProgram(prog)
    if not GL.glGetProgramiv(prog, GL.GL_LINK_STATUS):
        raise RuntimeError(f"shader link failed: {GL.glGetProgramInfoLog(prog).decode(errors='replace')}")
    for sh in shaders:
        GL.glDeleteShader(sh)
    return prog


LOD_LEVELS = 3  #: levels of detail a mesh buffer holds: the full surface and two simplified ones


class Program:
    """A linked shader program with cached uniform locations. Thread: GUI thread, context current."""

    def __init__(self, vs: str, fs: str):
        self.id = _compile(vs, fs)
        self._loc: dict[str, int] = {}

    def loc(self, name: str) -> int:
        if name not in self._loc:
            self._loc[name] = GL.glGetUniformLocation(self.id, name)
        return self._loc[name]

    def mat4(self, name: str, m: np.ndarray) -> None:
        GL.glUniformMatrix4fv(self.loc(name), 1, GL.GL_TRUE, np.ascontiguousarray(m, np.float32))


class MeshBuffer:
    """One mesh's VAO, vertex buffer and one index buffer per level of detail (0: the full surface, then
    each simplified one). Thread: GUI thread, context current."""

    def __init__(self, levels: int = LOD_LEVELS):
        self.vao = GL.glGenVertexArrays(1)
        self.vbo, *self.ibos = GL.glGenBuffers(1 + levels)
        self.counts = [0] * levels  #: indices (3 per triangle) at each level
        GL.glBindVertexArray(self.vao)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.vbo)
        stride = VERTEX_DTYPE.itemsize
        for loc, (name, size, kind, norm) in enumerate((("pos", 3, GL.GL_FLOAT, False), ("nrm", 3, GL.GL_FLOAT, False),
                                                        ("rgb", 4, GL.GL_UNSIGNED_BYTE, True),
                                                        ("lab", 4, GL.GL_UNSIGNED_BYTE, True))):
            GL.glEnableVertexAttribArray(loc)
            GL.glVertexAttribPointer(loc, size, kind, norm, stride, ctypes.c_void_p(VERTEX_DTYPE.fields[name][1]))
        GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, self.ibos[0])
        GL.glBindVertexArray(0)

    @property
    def count(self) -> int:
        return self.counts[0]

    def upload(self, mesh: MeshDisplay) -> None:
        GL.glBindVertexArray(self.vao)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.vbo)
        GL.glBufferData(GL.GL_ARRAY_BUFFER, mesh.vertices.nbytes, mesh.vertices, GL.GL_DYNAMIC_DRAW)
        levels = [mesh.indices, *mesh.lod_indices]
        levels += levels[-1:] * (len(self.ibos) - len(levels))  # a mesh without its simplified surfaces
        for level in reversed(range(len(self.ibos))):  # ends bound to the full surface
            idx = levels[level]
            GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, self.ibos[level])
            GL.glBufferData(GL.GL_ELEMENT_ARRAY_BUFFER, max(idx.nbytes, 4), idx if len(idx) else None,
                            GL.GL_DYNAMIC_DRAW)
            self.counts[level] = len(idx)
        GL.glBindVertexArray(0)

    def draw(self, level: int = 0) -> None:
        if self.counts[level]:
            GL.glBindVertexArray(self.vao)
            GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, self.ibos[level])
            GL.glDrawElements(GL.GL_TRIANGLES, self.counts[level], GL.GL_UNSIGNED_INT, None)

    def delete(self) -> None:
        GL.glDeleteBuffers(len(self.ibos) + 1, [self.vbo, *self.ibos])
        GL.glDeleteVertexArrays(1, [self.vao])


def choose_detail(lo: np.ndarray, hi: np.ndarray, tris: np.ndarray, mvp: np.ndarray, eye: np.ndarray,
                  budgets_tris) -> tuple[np.ndarray, np.ndarray]:
    """(visible (K,) bool, level (K,) int) over K chunk boxes with `tris` (K, L) triangles at each of L levels
    of detail (0: full): boxes outside the view frustum are culled; the nearest visible ones get level 0
    while their level-0 triangles fit in budgets_tris[0], the nearest of the rest level 1 while theirs fit
    in budgets_tris[1], and so on; the coarsest level takes what is left."""
    k = len(lo)
    if k == 0:
        return np.zeros(0, bool), np.zeros(0, np.int64)
    tris = np.asarray(tris).reshape(k, -1)
    bits = np.array([(i & 1, (i >> 1) & 1, (i >> 2) & 1) for i in range(8)], bool)
    corners = np.where(bits[None], hi[:, None, :], lo[:, None, :])                  # (K,8,3)
    clip = np.concatenate([corners, np.ones((k, 8, 1))], 2) @ np.asarray(mvp, np.float64).T
    x, y, z, w = (clip[..., i] for i in range(4))
    outside = [(x < -w), (x > w), (y < -w), (y > w), (z < -w), (z > w)]
    visible = ~np.any([o.all(1) for o in outside], axis=0)
    dist = np.linalg.norm(np.clip(eye, lo, hi) - eye, axis=1)
    level = np.full(k, tris.shape[1] - 1, np.int64)
    open_ = visible.copy()  # visible, level not yet chosen
    for lv, budget in enumerate(budgets_tris[:tris.shape[1] - 1]):
        order = np.argsort(np.where(open_, dist, np.inf))
        cum = np.cumsum(np.where(open_, tris[:, lv], 0)[order])
        chosen = order[(cum <= budget) & open_[order]]
        level[chosen], open_[chosen] = lv, False
    return visible, level


def adapt_budgets(budgets: list, drawn: dict, ratio: float, budget_range: tuple) -> list:
    """The level budgets of choose_detail for the next paint, after a paint that drew `drawn`
    ({"visible", "level_chunks", "level_triangles"}) and was `ratio` times too fast (target / its time):
    one budget is scaled. A slow paint takes detail from the finest level that still draws any; a fast one
    gives it back to the level whose budget could not take the chunks drawn coarsest."""
    if not drawn or drawn["visible"] == 0:
        return budgets
    tris, chunks = drawn["level_triangles"], drawn["level_chunks"]
    if ratio < 1.0:
        lv = next((i for i in range(len(budgets)) if tris[i] > 0), None)
        if lv is None:
            return budgets
        budget = min(budgets[lv], tris[lv]) * max(ratio, 0.5)
    elif ratio > 1.3 and chunks[0] < drawn["visible"]:
        lv = max(i for i, n in enumerate(chunks) if n) - 1
        budget = max(budgets[lv], tris[lv], 1000) * min(ratio, 1.5)
    else:
        return budgets
    return budgets[:lv] + [int(np.clip(budget, *budget_range))] + budgets[lv + 1:]


class LineBuffer:
    """Points drawn as GL_LINES or GL_LINE_STRIP. Thread: GUI thread, context current."""

    def __init__(self, mode):
        self.mode = mode
        self.vao = GL.glGenVertexArrays(1)
        self.vbo = GL.glGenBuffers(1)
        self.count = 0
        GL.glBindVertexArray(self.vao)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.vbo)
        GL.glEnableVertexAttribArray(0)
        GL.glVertexAttribPointer(0, 3, GL.GL_FLOAT, False, 12, ctypes.c_void_p(0))
        GL.glBindVertexArray(0)

    def upload(self, points: np.ndarray) -> None:
        pts = np.ascontiguousarray(points, np.float32).reshape(-1, 3)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self.vbo)
        GL.glBufferData(GL.GL_ARRAY_BUFFER, max(pts.nbytes, 12), pts if len(pts) else None, GL.GL_DYNAMIC_DRAW)
        self.count = len(pts)

    def draw(self) -> None:
        if self.count > 1:
            GL.glBindVertexArray(self.vao)
            GL.glDrawArrays(self.mode, 0, self.count)


def frustum_lines(T_world_cam: np.ndarray, intrinsics: tuple, depth_m: float) -> np.ndarray:
    """(16,3) segment end points of a camera frustum (apex to the corners, and the far rectangle)."""
    fx, fy, cx, cy, w, h = intrinsics
    corners = np.array([[(u - cx) / fx, (v - cy) / fy, 1.0] for u, v in ((0, 0), (w, 0), (w, h), (0, h))]) * depth_m
    T = np.asarray(T_world_cam, float)
    world = corners @ T[:3, :3].T + T[:3, 3]
    apex = T[:3, 3]
    segs = [p for c in world for p in (apex, c)] + [p for i in range(4) for p in (world[i], world[(i + 1) % 4])]
    return np.array(segs, np.float32)
