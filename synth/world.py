"""Owns the synthetic world: one triangle mesh with per-triangle NYU40 label, base colour and material.

`build_world(seed)` is deterministic: the room type is `ROOM_TYPES[seed % len(ROOM_TYPES)]`, everything
else comes from a generator seeded with `seed`. A World is immutable after construction; any thread may read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synth.rooms import ROOM_TYPES, RoomConfig, furnish
from synth.shell import ShellConfig, shell


@dataclass(frozen=True)
class WorldConfig:
    """What `build_world` varies besides the seed."""

    room: RoomConfig = field(default_factory=RoomConfig)  # size ranges and placement rules
    shell: ShellConfig = field(default_factory=ShellConfig)  # walls, floor, ceiling, skirting, doorways
    texture_offset_m: float = 4.0  # random texture shift per part, so repeated textures do not line up


@dataclass(frozen=True)
class Obstacle:
    """A placed piece's world bounds (metres) and name, for camera planning."""

    name: str
    lo: np.ndarray
    hi: np.ndarray


@dataclass(frozen=True)
class World:
    """A furnished room. Vertices are never shared between parts, so per-vertex labels are exact.

    vertices (V,3) float32 metres, z up; triangles (T,3) int32; vertex_labels (V,) uint16 NYU40;
    vertex_colors (V,3) uint8 base colour; tri_materials (T,) uint8; tri_tex_offset (T,2) float32 metres.
    """

    seed: int
    room_type: str
    size_m: np.ndarray  # (W, D, H)
    vertices: np.ndarray
    triangles: np.ndarray
    vertex_labels: np.ndarray
    vertex_colors: np.ndarray
    tri_materials: np.ndarray
    tri_tex_offset: np.ndarray
    obstacles: tuple = ()

    @property
    def tri_labels(self) -> np.ndarray:
        return self.vertex_labels[self.triangles[:, 0]]

    @property
    def tri_colors(self) -> np.ndarray:
        return self.vertex_colors[self.triangles[:, 0]]

    def tri_normals(self) -> np.ndarray:
        """(T,3) float32 unit face normals (right-handed winding)."""
        v = self.vertices[self.triangles]
        n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def labels_present(self) -> set:
        return set(int(x) for x in np.unique(self.vertex_labels))


def room_type_for(seed: int) -> str:
    return ROOM_TYPES[seed % len(ROOM_TYPES)]


def build_world(seed: int, config: WorldConfig | None = None) -> World:
    """The furnished room for `seed` (deterministic)."""
    cfg = config or WorldConfig()
    rng = np.random.default_rng([int(seed), 0x5EED])
    room_type = room_type_for(seed)
    size, placed = furnish(room_type, rng, cfg.room)
    parts = shell(size, room_type, rng, cfg.shell, placed)
    for p in placed:
        parts.extend(p.piece.parts)
    verts, tris, labels, colors, mats, offs = [], [], [], [], [], []
    base = 0
    for part in parts:
        n, m = len(part.vertices), len(part.triangles)
        verts.append(part.vertices)
        tris.append(part.triangles + base)
        labels.append(np.full(n, part.label, np.uint16))
        colors.append(np.tile(np.asarray(part.color, np.uint8), (n, 1)))
        mats.append(np.full(m, part.material, np.uint8))
        offs.append(np.tile(rng.uniform(0, cfg.texture_offset_m, 2).astype(np.float32), (m, 1)))
        base += n
    obstacles = tuple(Obstacle(p.piece.name, p.lo, p.hi) for p in placed)
    return World(seed, room_type, np.asarray(size, float), np.concatenate(verts).astype(np.float32),
                 np.concatenate(tris).astype(np.int32), np.concatenate(labels), np.concatenate(colors),
                 np.concatenate(mats), np.concatenate(offs), obstacles)
