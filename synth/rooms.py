"""Owns room layouts: room size per type, the shell (walls, floor, ceiling) and furnishing without overlaps.

The room spans [0, W] x [0, D] x [0, H] metres, z up, floor at z = 0. Walls are numbered 0: y = 0,
1: x = W, 2: y = D, 3: x = 0. Pure functions of a seeded generator; any thread may call them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fusion.classes import NAME_TO_ID
from synth import objects as ob
from synth.primitives import PLANKS, PLASTER, TILE, WHITES, WOODS, Part, Piece, jitter, pick, transform

log = logging.getLogger(__name__)
ROOM_TYPES = ("bedroom", "living room", "office", "kitchen", "bathroom")
# wall index -> yaw (degrees) turning a piece's back (+y) towards that wall
WALL_YAW = {0: 180.0, 1: -90.0, 2: 0.0, 3: 90.0}


@dataclass(frozen=True)
class RoomConfig:
    """Room size ranges and placement rules."""

    width_m: tuple = (3.0, 6.0)  # x extent range
    depth_m: tuple = (3.0, 7.0)  # y extent range
    height_m: tuple = (2.5, 3.0)  # ceiling height range
    bathroom_scale: float = 0.8  # bathrooms are this much smaller (never below 3 m)
    margin_m: float = 0.04  # minimum gap between placed pieces
    tries: int = 150  # random placements tried per piece
    room_tries: int = 20  # whole-room retries when a required piece does not fit
    shell_cell_m: float = 0.5  # walls and floor are split into cells of about this size


@dataclass
class Placed:
    """A piece in world coordinates with its collision bounds."""

    piece: Piece
    lo: np.ndarray
    hi: np.ndarray
    wall: int  # -1 for free-standing


class Placer:
    """Places pieces against walls or free in the room without overlapping earlier ones."""

    def __init__(self, size_m, rng: np.random.Generator, cfg: RoomConfig):
        self.size = np.asarray(size_m, float)
        self.rng, self.cfg = rng, cfg
        self.placed: list[Placed] = []

    def _fits(self, lo, hi) -> bool:
        eps = 1e-6
        if np.any(lo[:2] < -eps) or np.any(hi[:2] > self.size[:2] + eps) or hi[2] > self.size[2] - 0.02:
            return False
        m = self.cfg.margin_m
        return not any(np.all(lo < p.hi + m) and np.all(hi > p.lo - m) for p in self.placed)

    def against_wall(self, piece: Piece, walls=(0, 1, 2, 3), gap_m: float = 0.0, corner: bool = False) -> bool:
        """Put `piece` with its back on one of `walls`; True when it found room."""
        turned = {}
        for _ in range(self.cfg.tries):
            wall = int(walls[self.rng.integers(len(walls))])
            if wall not in turned:
                moved = transform(piece, WALL_YAW[wall], (0.0, 0.0, 0.0))
                turned[wall] = (moved, *moved.bounds())
            moved, lo, hi = turned[wall]
            along = 0 if wall in (0, 2) else 1
            length, w = self.size[along], hi[along] - lo[along]
            if w > length:
                continue
            s = float(self.rng.uniform(w / 2, length - w / 2))
            if corner:
                s = w / 2 if self.rng.random() < 0.5 else length - w / 2
            shift = np.zeros(3)
            shift[along] = s - (lo[along] + hi[along]) / 2
            W, D = self.size[:2]
            shift[1 - along] = {0: gap_m - lo[1], 1: W - gap_m - hi[0], 2: D - gap_m - hi[1], 3: gap_m - lo[0]}[wall]
            if self._try(moved, lo + shift, hi + shift, shift, wall):
                return True
        return False

    def free(self, piece: Piece, margin_m: float = 0.5) -> bool:
        """Put `piece` anywhere at least `margin_m` from the walls."""
        turned = {}
        for _ in range(self.cfg.tries):
            yaw = 90.0 * int(self.rng.integers(4))
            if yaw not in turned:
                moved = transform(piece, yaw, (0.0, 0.0, 0.0))
                turned[yaw] = (moved, *moved.bounds())
            moved, lo, hi = turned[yaw]
            span = self.size[:2] - 2 * margin_m - (hi - lo)[:2]
            if np.any(span < 0):
                continue
            shift = np.zeros(3)
            shift[:2] = margin_m + self.rng.uniform(0, 1, 2) * span - lo[:2]
            if self._try(moved, lo + shift, hi + shift, shift, -1):
                return True
        return False

    def _try(self, piece: Piece, lo, hi, shift, wall: int) -> bool:
        if not self._fits(lo, hi):
            return False
        self.placed.append(Placed(transform(piece, 0.0, shift), lo, hi, wall))
        return True


def room_size(room_type: str, rng: np.random.Generator, cfg: RoomConfig) -> np.ndarray:
    scale = cfg.bathroom_scale if room_type == "bathroom" else 1.0
    w = max(3.0, rng.uniform(*cfg.width_m) * scale)
    d = max(3.0, rng.uniform(*cfg.depth_m) * scale)
    return np.array([w, d, rng.uniform(*cfg.height_m)])


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


def shell(size_m, room_type: str, rng: np.random.Generator, cfg: RoomConfig) -> list:
    """Floor (label floor), four walls (wall) and the ceiling (unlabeled)."""
    W, D, H = size_m
    wet = room_type in ("kitchen", "bathroom")
    floor_col = jitter(rng, (200, 200, 195) if wet else pick(rng, WOODS), 15)
    wall_col = jitter(rng, pick(rng, WHITES + ((210, 200, 170), (180, 200, 210), (215, 190, 180))), 10)
    c = cfg.shell_cell_m
    parts = [_grid_quad(np.zeros(3), np.array([W, 0, 0]), np.array([0, D, 0]), c, NAME_TO_ID["floor"],
                        floor_col, TILE if wet else PLANKS, (0, 0, 1)),
             _grid_quad(np.array([0, 0, H]), np.array([W, 0, 0]), np.array([0, D, 0]), c, 0,
                        (245, 245, 245), PLASTER, (0, 0, -1))]
    corners = np.array([[0, 0, 0], [W, 0, 0], [W, D, 0], [0, D, 0]], float)
    for k in range(4):
        a, b = corners[k], corners[(k + 1) % 4]
        inward = np.array([(W / 2 - (a[0] + b[0]) / 2), (D / 2 - (a[1] + b[1]) / 2), 0.0])
        mat = TILE if room_type == "bathroom" else PLASTER
        parts.append(_grid_quad(a, b - a, np.array([0, 0, H]), c, NAME_TO_ID["wall"], wall_col, mat, inward))
    return parts


def _plan(room_type: str, rng, H: float) -> list:
    """(builder, how, required) in placement order; `how` is 'wall', 'corner' or 'free'."""
    n_pics = int(rng.integers(1, 4))
    common = [(ob.door, "wall", True), (lambda r: ob.window(r, H), "wall", True)]
    tail = [(lambda r: ob.window(r, H), "wall", False)] + [(ob.picture, "wall", i == 0) for i in range(n_pics)]
    plans = {
        "bedroom": [(ob.bed_with_nightstands, "wall", True),
                    (lambda r: ob.cabinet(r, r.uniform(0.8, 1.5), 0.6, r.uniform(1.9, 2.2)), "wall", True),
                    (ob.dresser, "wall", True), (ob.desk_with_chair, "wall", False), (ob.chair, "wall", False)],
        "living room": [(ob.sofa_with_table, "wall", True), (ob.tv_stand, "wall", True),
                        (ob.bookshelf, "wall", True), (ob.chair, "wall", False), (ob.bookshelf, "wall", False),
                        (ob.plant, "corner", False),
                        (lambda r: ob.cabinet(r, r.uniform(0.6, 1.2), 0.45, r.uniform(0.7, 1.0)), "wall", False)],
        "office": [(ob.desk_with_chair, "wall", True), (ob.bookshelf, "wall", True),
                   (lambda r: ob.cabinet(r, 0.5, 0.6, r.uniform(0.7, 1.3), drawers=True), "wall", True),
                   (lambda r: ob.table_with_chairs(r, r.uniform(1.2, 1.8), r.uniform(0.8, 1.0), 4), "free", False),
                   (ob.desk_with_chair, "wall", False), (ob.bookshelf, "wall", False), (ob.plant, "corner", False)],
        "kitchen": [(lambda r: ob.counter_run(r, r.uniform(1.8, 3.0)), "corner", True),
                    (ob.refrigerator, "wall", True),
                    (lambda r: ob.table_with_chairs(r, r.uniform(0.9, 1.4), r.uniform(0.7, 0.9),
                                                    int(r.integers(2, 5))), "free", True),
                    (lambda r: ob.cabinet(r, r.uniform(0.6, 1.0), 0.45, r.uniform(0.8, 1.9)), "wall", False),
                    (ob.plant, "corner", False)],
        "bathroom": [(ob.bathtub, "corner", True), (ob.toilet, "wall", True), (ob.vanity, "wall", True),
                     (lambda r: ob.cabinet(r, 0.45, 0.35, r.uniform(0.8, 1.6)), "wall", False),
                     (ob.plant, "corner", False)],
    }
    return common + plans[room_type] + tail


def furnish(room_type: str, rng: np.random.Generator, cfg: RoomConfig) -> tuple[np.ndarray, list]:
    """A room size and its placed pieces; retries the room when a required piece does not fit."""
    for attempt in range(cfg.room_tries):
        size = room_size(room_type, rng, cfg)
        placer = Placer(size, rng, cfg)
        ok = True
        for builder, how, required in _plan(room_type, rng, size[2]):
            piece = builder(rng)
            gap = 0.0 if piece.name in ("door", "window", "picture") else float(rng.uniform(0.01, 0.06))
            if how == "free":
                done = placer.free(piece)
            else:
                done = placer.against_wall(piece, gap_m=gap, corner=(how == "corner"))
            if required and not done:
                ok = False
                break
        if ok:
            return size, placer.placed
        log.debug("room %s attempt %d: a required piece did not fit", room_type, attempt)
    log.warning("%s: some required furniture did not fit", room_type)
    return size, placer.placed
