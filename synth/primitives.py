"""Owns the mesh primitives furniture is built from: boxes, cylinders, folded sheets, labeled parts and pieces.

A piece is built in its local frame: footprint centred on the origin, x across its width, y across its
depth with the front facing -y (the back goes against a wall), z up from the floor (wall-mounted pieces
carry their absolute height). Pure functions; any thread may call them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Surface materials: the renderer maps each to a procedural texture.
PLASTER, WOOD, TILE, FABRIC, ART, PLAIN, PLANKS, GLASS = range(8)
N_MATERIALS = 8

WOODS = ((150, 105, 65), (190, 150, 100), (110, 75, 45), (205, 180, 140))
FABRICS = ((120, 130, 150), (170, 90, 80), (90, 120, 90), (200, 190, 170), (70, 70, 80), (150, 120, 160))
WHITES = ((235, 235, 230), (225, 228, 232), (240, 236, 225))
#: Wall finishes: paint in whites and pastels three times in four, else wood panelling or a dark paint
#: (real rooms have both, and a net that has only seen pale walls reads a wooden wall as a door or cabinet)
WALL_FINISHES = WHITES * 3 + ((210, 200, 170), (180, 200, 210), (215, 190, 180), WOODS[0], WOODS[2],
                          (150, 150, 145), (110, 125, 140))


@dataclass
class Part:
    """One convex-ish primitive with a single label, base colour and material."""

    vertices: np.ndarray  # (n, 3) float64 metres
    triangles: np.ndarray  # (m, 3) int32, indices into vertices
    label: int
    color: tuple
    material: int


@dataclass
class Piece:
    """A placeable object: its parts and the local boxes (lo, hi) that must stay clear of others."""

    name: str
    parts: list = field(default_factory=list)
    keepout: list = field(default_factory=list)  # extra (lo, hi) boxes with no geometry (door swing)
    openings: list = field(default_factory=list)  # (lo, hi) boxes the room's wall is cut away in (open door)

    def add(self, part: Part) -> "Piece":
        self.parts.append(part)
        return self

    def extend(self, parts) -> "Piece":
        self.parts.extend(parts)
        return self

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of all geometry and keep-out boxes."""
        pts = [p.vertices for p in self.parts] + [np.array(k) for k in self.keepout]
        allp = np.concatenate(pts)
        return allp.min(0), allp.max(0)


def jitter(rng: np.random.Generator, rgb, amount: int = 12) -> tuple:
    """A colour near `rgb`."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def pick(rng: np.random.Generator, options) -> tuple:
    return options[int(rng.integers(len(options)))]


def _orient_outward(v: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Flip triangles of a convex solid so that their normals point away from its centroid."""
    c = v.mean(0)
    a, b, d = v[tris[:, 0]], v[tris[:, 1]], v[tris[:, 2]]
    n = np.cross(b - a, d - a)
    flip = np.einsum("ij,ij->i", n, (a + b + d) / 3 - c) < 0
    tris = tris.copy()
    tris[flip] = tris[flip][:, ::-1]
    return tris


_BOX_TRIS = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int32)


def box(lo, hi, label: int, color, material: int = PLAIN) -> Part:
    """Axis-aligned box from corner `lo` to corner `hi` (metres)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    corners = np.array([[(hi if i & 4 else lo)[0], (hi if i & 2 else lo)[1], (hi if i & 1 else lo)[2]]
                        for i in range(8)])
    return Part(corners, _orient_outward(corners, _BOX_TRIS), label, tuple(color), material)


def frustum(center_xy, z0: float, z1: float, r0: float, r1: float, label: int, color,
            material: int = PLAIN, segments: int = 16, scale_y: float = 1.0) -> Part:
    """Vertical (truncated) cone or cylinder from z0 (radius r0) to z1 (radius r1), capped."""
    ang = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([np.cos(ang), np.sin(ang) * scale_y], 1)
    cx, cy = center_xy
    bottom = np.column_stack([cx + r0 * ring[:, 0], cy + r0 * ring[:, 1], np.full(segments, z0)])
    top = np.column_stack([cx + r1 * ring[:, 0], cy + r1 * ring[:, 1], np.full(segments, z1)])
    v = np.vstack([bottom, top, [[cx, cy, z0], [cx, cy, z1]]])
    i = np.arange(segments)
    j = (i + 1) % segments
    side = np.concatenate([np.stack([i, j, segments + j], 1), np.stack([i, segments + j, segments + i], 1)])
    caps = np.concatenate([np.stack([np.full(segments, 2 * segments), j, i], 1),
                           np.stack([np.full(segments, 2 * segments + 1), segments + i, segments + j], 1)])
    tris = np.concatenate([side, caps]).astype(np.int32)
    return Part(v, _orient_outward(v, tris), label, tuple(color), material)


def rod(p0, p1, radius: float, label: int, color, material: int = PLAIN, segments: int = 10) -> Part:
    """Cylinder between two points (any direction)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    part = frustum((0.0, 0.0), 0.0, length, radius, radius, label, color, material, segments)
    z = axis / length
    x = np.cross(z, [0.0, 0.0, 1.0] if abs(z[2]) < 0.9 else [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z], 1)
    part.vertices = part.vertices @ R.T + p0
    return part


def folded_sheet(x0: float, x1: float, y: float, z0: float, z1: float, label: int, color,
                 fold_m: float = 0.12, depth_m: float = 0.04) -> Part:
    """A hanging curtain: a vertical sheet across x0..x1 at depth y with zig-zag folds."""
    n = max(2, int(round((x1 - x0) / (fold_m / 2))) + 1)
    xs = np.linspace(x0, x1, n)
    ys = y + np.where(np.arange(n) % 2 == 0, 0.0, -depth_m)
    bottom = np.column_stack([xs, ys, np.full(n, z0)])
    top = np.column_stack([xs, ys, np.full(n, z1)])
    v = np.vstack([bottom, top])
    i = np.arange(n - 1)
    tris = np.concatenate([np.stack([i, i + 1, n + i + 1], 1), np.stack([i, n + i + 1, n + i], 1)])
    return Part(v, tris.astype(np.int32), label, tuple(color), FABRIC)


def legs(w: float, d: float, h: float, t: float, label: int, color, material: int = WOOD,
         inset: float = 0.0) -> list:
    """Four square legs of side t under a w x d footprint, from the floor to height h."""
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - inset - t / 2), sy * (d / 2 - inset - t / 2)
            out.append(box((cx - t / 2, cy - t / 2, 0), (cx + t / 2, cy + t / 2, h), label, color, material))
    return out


def transform(piece: Piece, yaw_deg: float, offset) -> Piece:
    """A copy of `piece` rotated about z by a multiple of 90 degrees and moved by `offset`."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).round(12)
    off = np.asarray(offset, float)

    def move(p):
        return p @ R.T + off

    parts = [Part(move(p.vertices), p.triangles, p.label, p.color, p.material) for p in piece.parts]
    def boxes(pairs):
        out = []
        for lo, hi in pairs:
            pts = move(np.array([lo, hi], float))
            out.append((pts.min(0), pts.max(0)))
        return out

    return Piece(piece.name, parts, boxes(piece.keepout), boxes(piece.openings))


def merge(name: str, placed) -> Piece:
    """One piece from several already-positioned pieces (e.g. a table with its chairs)."""
    out = Piece(name)
    for p in placed:
        out.parts.extend(p.parts)
        out.keepout.extend(p.keepout)
        out.openings.extend(p.openings)
    return out


def turned(part: Part, yaw_deg: float, pivot=(0.0, 0.0, 0.0), tilt_deg: float = 0.0) -> Part:
    """A copy of `part` tilted about x by `tilt_deg`, then turned about z by any `yaw_deg`, both about `pivot`."""
    a, b = np.radians(yaw_deg), np.radians(tilt_deg)
    Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    piv = np.asarray(pivot, float)
    v = (part.vertices - piv) @ (Rz @ Rx).T + piv
    return Part(v, part.triangles, part.label, part.color, part.material)
