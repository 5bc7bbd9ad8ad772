"""Owns room layouts: room size per type and furnishing without overlaps (what goes in each type: `synth.plans`).

The room spans [0, W] x [0, D] x [0, H] metres, z up, floor at z = 0. Walls are numbered 0: y = 0,
1: x = W, 2: y = D, 3: x = 0. Pure functions of a seeded generator; any thread may call them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from synth.plans import FLUSH, SIZES_M, plan
from synth.primitives import Piece, transform

log = logging.getLogger(__name__)
# The first five keep the seeds of the original world; a room's type is ROOM_TYPES[seed % len(ROOM_TYPES)].
ROOM_TYPES = ("bedroom", "living room", "office", "kitchen", "bathroom",
              "classroom", "conference room", "corridor", "storage room")
# wall index -> yaw (degrees) turning a piece's back (+y) towards that wall
WALL_YAW = {0: 180.0, 1: -90.0, 2: 0.0, 3: 90.0}


@dataclass(frozen=True)
class RoomConfig:
    """Room size ranges and placement rules."""

    sizes_m: tuple = tuple(SIZES_M.items())  # (type, ((x lo, hi), (y lo, hi), (height lo, hi))) pairs
    margin_m: float = 0.04  # minimum gap between placed pieces
    free_margin_m: float = 0.5  # free-standing pieces keep this far from the walls
    middle_margin_m: float = 1.6  # pieces placed in the middle keep this far (room to walk around them)
    tries: int = 150  # random placements tried per piece
    room_tries: int = 20  # whole-room retries when a required piece does not fit


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
        if np.any(lo[:2] < -eps) or np.any(hi[:2] > self.size[:2] + eps) or hi[2] > self.size[2] + eps:
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
    (w0, w1), (d0, d1), (h0, h1) = dict(cfg.sizes_m)[room_type]
    return np.array([rng.uniform(w0, w1), rng.uniform(d0, d1), rng.uniform(h0, h1)])


def furnish(room_type: str, rng: np.random.Generator, cfg: RoomConfig) -> tuple[np.ndarray, list]:
    """A room size and its placed pieces; retries the room when a required piece does not fit."""
    for attempt in range(cfg.room_tries):
        size = room_size(room_type, rng, cfg)
        placer = Placer(size, rng, cfg)
        ok = True
        for builder, how, required in plan(room_type, rng, size):
            piece = builder(rng)
            gap = 0.0 if piece.name in FLUSH else float(rng.uniform(0.01, 0.06))
            if how in ("free", "middle"):
                done = placer.free(piece, cfg.middle_margin_m if how == "middle" else cfg.free_margin_m)
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
