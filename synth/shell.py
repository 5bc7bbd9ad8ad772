"""Owns a room's shell: floor, ceiling (NYU40 22), the four walls with doorways cut where a door stands open,
a short space seen through each doorway, and skirting boards.

The room spans [0, W] x [0, D] x [0, H]; walls are numbered as in `synth.rooms` (0: y = 0, 1: x = W,
2: y = D, 3: x = 0). Only the space behind an open door reaches outside the room box. Pure functions
of a seeded generator; any thread may call them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.classes import CEILING, NAME_TO_ID
from synth.primitives import PLANKS, PLASTER, TILE, WALL_FINISHES, WHITES, WOODS, Part, box, jitter, pick

WALL, FLOOR = NAME_TO_ID["wall"], NAME_TO_ID["floor"]


@dataclass(frozen=True)
class ShellConfig:
    """Shell geometry rules."""

    cell_m: float = 0.5  # walls, floor and ceiling are split into cells of about this size
    skirting_prob: float = 0.7  # share of rooms with skirting boards
    skirting_height_m: tuple = (0.05, 0.12)  # skirting board height range
    skirting_depth_m: tuple = (0.01, 0.02)  # how far skirting stands out of the wall
    beyond_depth_m: tuple = (1.0, 2.2)  # depth of the space seen through an open doorway
    beyond_margin_m: tuple = (0.2, 0.8)  # that space is this much wider than the doorway on each side


@dataclass(frozen=True)
class Opening:
    """A doorway in wall `wall` from s0 to s1 metres along it (from its first corner), floor to z1."""

    wall: int
    s0: float
    s1: float
    z1: float


def _grid_quad(origin, e1, e2, cell_m: float, label: int, color, material: int, inward) -> Part:
    """A rectangle origin + a*e1 + b*e2 split into cells, triangles facing `inward`."""
    n1 = max(1, int(round(np.linalg.norm(e1) / cell_m)))
    n2 = max(1, int(round(np.linalg.norm(e2) / cell_m)))
    a, b = np.meshgrid(np.linspace(0, 1, n1 + 1), np.linspace(0, 1, n2 + 1), indexing="ij")
    v = origin + a.reshape(-1, 1) * e1 + b.reshape(-1, 1) * e2
    idx = np.arange((n1 + 1) * (n2 + 1)).reshape(n1 + 1, n2 + 1)
    q = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    tris = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]]).astype(np.int32)
    if np.dot(np.cross(e1, e2), inward) < 0:
        tris = tris[:, ::-1].copy()
    return Part(np.asarray(v, float), tris, label, tuple(color), material)


def wall_frame(size_m, k: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Wall k's first corner, unit direction along it, length and unit inward normal."""
    W, D = float(size_m[0]), float(size_m[1])
    corners = np.array([[0, 0, 0], [W, 0, 0], [W, D, 0], [0, D, 0]], float)
    a, b = corners[k], corners[(k + 1) % 4]
    length = float(np.linalg.norm(b - a))
    inward = np.array([(W / 2 - (a[0] + b[0]) / 2), (D / 2 - (a[1] + b[1]) / 2), 0.0])
    return a, (b - a) / length, length, inward / np.linalg.norm(inward)


def _span(size_m, k: int, lo, hi) -> tuple[float, float]:
    """(s0, s1): the stretch of wall k that box (lo, hi) covers."""
    a, e, length, _ = wall_frame(size_m, k)
    s = sorted((float(np.dot(np.asarray(lo) - a, e)), float(np.dot(np.asarray(hi) - a, e))))
    return max(0.0, s[0]), min(length, s[1])


def wall_of(size_m, lo, hi, tol_m: float = 0.05) -> tuple[int, float, float] | None:
    """(wall, s0, s1) of a box lying on a wall (its centre within tol_m of the wall plane), else None."""
    c = (np.asarray(lo) + np.asarray(hi)) / 2
    for k in range(4):
        a, _, _, n = wall_frame(size_m, k)
        if abs(np.dot(c - a, n)) < tol_m:
            return (k, *_span(size_m, k, lo, hi))
    return None


def openings_of(size_m, pieces) -> list[Opening]:
    """The doorways that placed pieces (their `openings` boxes, world frame) cut into the walls."""
    out = []
    for piece in pieces:
        for lo, hi in piece.openings:
            hit = wall_of(size_m, lo, hi)
            if hit is not None:
                out.append(Opening(hit[0], hit[1], hit[2], float(hi[2])))
    return out


def _wall_parts(size_m, k: int, holes: list, color, material: int, cell_m: float) -> list:
    """Wall k as rectangles around its doorways."""
    H = float(size_m[2])
    a, e, length, n = wall_frame(size_m, k)
    up = np.array([0.0, 0.0, H])
    parts, s = [], 0.0
    for o in sorted(holes, key=lambda h: h.s0):
        if o.s0 > s:
            parts.append(_grid_quad(a + s * e, (o.s0 - s) * e, up, cell_m, WALL, color, material, n))
        parts.append(_grid_quad(a + o.s0 * e + [0, 0, o.z1], (o.s1 - o.s0) * e, [0, 0, H - o.z1], cell_m,
                                WALL, color, material, n))
        s = max(s, o.s1)
    if s < length:
        parts.append(_grid_quad(a + s * e, (length - s) * e, up, cell_m, WALL, color, material, n))
    return parts


def _beyond(size_m, o: Opening, rng, cfg: ShellConfig) -> list:
    """A short space behind doorway `o`: floor, ceiling, back and side walls, all facing the doorway."""
    H = float(size_m[2])
    a, e, _, n = wall_frame(size_m, o.wall)
    depth, m = rng.uniform(*cfg.beyond_depth_m), rng.uniform(*cfg.beyond_margin_m)
    s0, s1 = o.s0 - m, o.s1 + m
    out, c = -n * depth, cfg.cell_m
    wall_col = jitter(rng, pick(rng, WHITES), 10)
    floor_col = jitter(rng, pick(rng, WOODS + ((190, 190, 185),)), 15)
    base, across, up = a + s0 * e, (s1 - s0) * e, np.array([0.0, 0.0, H])
    return [_grid_quad(base, across, out, c, FLOOR, floor_col, PLANKS, (0, 0, 1)),
            _grid_quad(base + up, across, out, c, CEILING, (245, 245, 245), PLASTER, (0, 0, -1)),
            _grid_quad(base + out, across, up, c, WALL, wall_col, PLASTER, n),
            _grid_quad(base, out, up, c, WALL, wall_col, PLASTER, e),
            _grid_quad(base + across, out, up, c, WALL, wall_col, PLASTER, -e)]


def _skirting(size_m, k: int, cuts: list, rng_vals, color) -> list:
    """Skirting boards along wall k, broken where `cuts` ((s0, s1) spans: doors) stand."""
    height, depth = rng_vals
    a, e, length, n = wall_frame(size_m, k)
    parts, s = [], 0.0
    for s0, s1 in sorted(cuts) + [(length, length)]:
        if s0 - s > 0.05:
            p0, p1 = a + s * e, a + s0 * e + n * depth + [0, 0, height]
            parts.append(box(np.minimum(p0, p1), np.maximum(p0, p1), WALL, color, PLASTER))
        s = max(s, s1)
    return parts


def shell(size_m, room_type: str, rng: np.random.Generator, cfg: ShellConfig, placed=()) -> list:
    """Floor (floor), ceiling (ceiling), walls (wall) with doorways, skirting, and what lies past doorways.

    `placed` are the room's placed pieces (world frame, with `.piece`, `.lo`, `.hi`): open doors cut
    doorways, every door breaks the skirting."""
    W, D, H = size_m
    wet = room_type in ("kitchen", "bathroom")
    floor_col = jitter(rng, (200, 200, 195) if wet else pick(rng, WOODS), 15)
    wall_col = jitter(rng, pick(rng, WALL_FINISHES), 10)
    c = cfg.cell_m
    parts = [_grid_quad(np.zeros(3), np.array([W, 0, 0]), np.array([0, D, 0]), c, FLOOR,
                        floor_col, TILE if wet else PLANKS, (0, 0, 1)),
             _grid_quad(np.array([0, 0, H]), np.array([W, 0, 0]), np.array([0, D, 0]), c, CEILING,
                        (245, 245, 245), PLASTER, (0, 0, -1))]
    holes = openings_of(size_m, [p.piece for p in placed])
    mat = TILE if room_type == "bathroom" else PLASTER
    for k in range(4):
        parts += _wall_parts(size_m, k, [o for o in holes if o.wall == k], wall_col, mat, c)
    for o in holes:
        parts += _beyond(size_m, o, rng, cfg)
    if room_type != "bathroom" and rng.random() < cfg.skirting_prob:
        dims = (rng.uniform(*cfg.skirting_height_m), rng.uniform(*cfg.skirting_depth_m))
        col = jitter(rng, pick(rng, WHITES + WOODS + (tuple(int(v * 0.8) for v in wall_col),)), 8)
        doors = [(p.wall, _span(size_m, p.wall, p.lo, p.hi)) for p in placed if p.piece.name == "door"]
        for k in range(4):
            parts += _skirting(size_m, k, [span for wall, span in doors if wall == k], dims, col)
    return parts
