"""Owns what furnishes each room type: its size ranges and the ordered list of pieces to place.

A plan is a list of (builder, how, required): `builder(rng)` makes a Piece, `how` is 'wall', 'corner',
'free' or 'middle' (free, far enough from the walls to walk around), and a room whose required piece
does not fit is drawn again. Order matters: built-ins that span a wall and large free-standing groups
come before doors and windows, small things last. Pure functions of a seeded generator; any thread may
call them.
"""
from __future__ import annotations

import numpy as np

from synth import clutter as cl
from synth import fixtures as fx
from synth import objects as ob
from synth import seating as st
from synth import tables as tb
from synth.primitives import WOODS, jitter, pick

# room type -> ((x range), (y range), (height range)) metres
SIZES_M = {
    "bedroom": ((3.0, 6.0), (3.0, 7.0), (2.5, 3.0)),
    "living room": ((3.0, 6.0), (3.0, 7.0), (2.5, 3.0)),
    "office": ((3.0, 6.0), (3.0, 7.0), (2.5, 3.0)),
    "kitchen": ((3.0, 6.0), (3.0, 7.0), (2.5, 3.0)),
    "bathroom": ((3.0, 4.8), (3.0, 5.6), (2.5, 3.0)),
    "classroom": ((6.0, 9.0), (6.0, 9.0), (2.8, 3.4)),
    "conference room": ((5.5, 7.5), (6.5, 9.5), (2.6, 3.2)),
    "corridor": ((2.4, 3.2), (6.0, 10.0), (2.4, 3.0)),
    "storage room": ((2.8, 4.5), (3.2, 5.5), (2.4, 3.0)),
}
# the original room types: their windows always have curtains
HOMELY = ("bedroom", "living room", "office", "kitchen", "bathroom")
# pieces that sit flush on their wall (no gap drawn)
FLUSH = ("door", "window", "picture", "whiteboard", "radiator", "tv", "pilaster", "wall_cabinets")


def _window(H: float, radiator_prob: float, curtain_prob: float):
    def build(r):
        curtains = bool(r.random() < curtain_prob)
        if r.random() < radiator_prob:
            return fx.window_with_radiator(r, H, curtains)
        return ob.window(r, H, curtains)
    return build


def _clutter(rng, lo: int, hi: int) -> list:
    return [(cl.floor_clutter, "wall", False) for _ in range(int(rng.integers(lo, hi + 1)))]


def _lead(room_type: str, rng, size) -> list:
    """Built-ins spanning a wall, pilasters, large free-standing groups: placed before doors."""
    W, D, H = size
    wood = jitter(rng, pick(rng, WOODS), 8)
    spans = {"storage room": 1.0, "bedroom": 0.3, "office": 0.3, "classroom": 0.3, "corridor": 0.2}
    out = []
    if rng.random() < spans.get(room_type, 0.0):
        out.append((lambda r: fx.wall_cabinets(r, min(W, D), H, col=wood), "wall", room_type == "storage room"))
    for _ in range(int(rng.integers(0, 3))):
        wide = bool(rng.random() < 0.3)
        out.append((lambda r, w=wide: fx.pilaster(r, H, w), "corner" if rng.random() < 0.5 else "wall", False))
    if room_type == "classroom":
        out.append((lambda r: tb.classroom_rows(r, W - 1.6, D - 2.6), "free", True))
    if room_type == "conference room":
        out.append((lambda r: tb.conference_set(r, min(D - 4.0, r.uniform(2.4, 4.0)), r.uniform(0.9, 1.1)),
                    "middle", True))
    door_col = wood if out and rng.random() < 0.6 else None
    out.append((lambda r: fx.door(r, col=door_col, panels=True if door_col else None), "wall", True))
    return out


def _body(room_type: str, rng, size) -> list:
    """The room type's own furniture, most important first."""
    W, D, H = size
    tall_cabinet = (lambda r: ob.cabinet(r, r.uniform(0.8, 1.5), 0.6, r.uniform(1.9, 2.2)), "wall", True)
    kitchen_table = (lambda r: ob.table_with_chairs(r, r.uniform(0.9, 1.4), r.uniform(0.7, 0.9), int(r.integers(2, 5)),
                                                    st.dining_seat, tb.any_table), "free", True)
    office_table = (lambda r: ob.table_with_chairs(r, r.uniform(1.2, 1.8), r.uniform(0.8, 1.0), 4, st.meeting_seat,
                                                   tb.any_table), "free", False)
    plans = {
        "bedroom": [(ob.bed_with_nightstands, "wall", True), tall_cabinet, (ob.dresser, "wall", True),
                    (tb.desk_setup, "wall", False), (st.any_chair, "wall", False)] + _clutter(rng, 0, 2),
        "living room": [(ob.sofa_with_table, "wall", True), (ob.tv_stand, "wall", True), (ob.bookshelf, "wall", True),
                        (st.any_chair, "wall", False), (ob.bookshelf, "wall", False), (ob.plant, "corner", False),
                        (lambda r: ob.cabinet(r, r.uniform(0.6, 1.2), 0.45, r.uniform(0.7, 1.0)), "wall", False)]
                       + _clutter(rng, 0, 2),
        "office": [(tb.desk_setup, "wall", True), (ob.bookshelf, "wall", True),
                   (lambda r: ob.cabinet(r, 0.5, 0.6, r.uniform(0.7, 1.3), drawers=True), "wall", True),
                   office_table, (tb.desk_setup, "wall", False), (fx.whiteboard, "wall", False),
                   (ob.bookshelf, "wall", False), (ob.plant, "corner", False)] + _clutter(rng, 1, 3),
        "kitchen": [(lambda r: ob.counter_run(r, r.uniform(1.8, 3.0)), "corner", True), (ob.refrigerator, "wall", True),
                    kitchen_table,
                    (lambda r: ob.cabinet(r, r.uniform(0.6, 1.0), 0.45, r.uniform(0.8, 1.9)), "wall", False),
                    (ob.plant, "corner", False), (cl.waste_bin, "wall", False)],
        "bathroom": [(ob.bathtub, "corner", True), (ob.toilet, "wall", True), (ob.vanity, "wall", True),
                     (lambda r: ob.cabinet(r, 0.45, 0.35, r.uniform(0.8, 1.6)), "wall", False),
                     (ob.plant, "corner", False), (cl.waste_bin, "wall", False)],
        "classroom": [(fx.whiteboard, "wall", True), (tb.desk_setup, "wall", True), (fx.whiteboard, "wall", False),
                      (ob.bookshelf, "wall", False),
                      (lambda r: ob.cabinet(r, r.uniform(0.8, 1.6), 0.45, r.uniform(0.8, 2.0)), "wall", False),
                      (fx.radiator, "wall", False), (ob.plant, "corner", False)] + _clutter(rng, 1, 4),
        "conference room": [(fx.whiteboard, "wall", True), (fx.tv_on_wall, "wall", False),
                            (lambda r: ob.cabinet(r, r.uniform(1.2, 2.0), 0.45, r.uniform(0.7, 0.9)), "wall", False),
                            (st.any_chair, "wall", False), (st.any_chair, "wall", False),
                            (ob.plant, "corner", False)] + _clutter(rng, 0, 2),
        "corridor": [(lambda r: fx.door(r, open_prob=0.4), "wall", False) for _ in range(int(rng.integers(1, 4)))]
                    + [(fx.radiator, "wall", False),
                       (lambda r: ob.cabinet(r, r.uniform(0.8, 2.0), 0.45, r.uniform(1.7, 2.0)), "wall", False),
                       (st.any_chair, "wall", False)] + _clutter(rng, 1, 3),
        "storage room": [(fx.shelf_rack, "wall", True), (fx.shelf_rack, "wall", False),
                         (lambda r: ob.cabinet(r, 0.5, 0.6, r.uniform(0.7, 1.3), drawers=True), "wall", False),
                         (ob.bookshelf, "wall", False), (st.any_chair, "wall", False)] + _clutter(rng, 2, 5),
    }
    return plans[room_type]


def plan(room_type: str, rng: np.random.Generator, size) -> list:
    """(builder, how, required) in placement order for a room of `size` (W, D, H)."""
    H = float(size[2])
    radiators = 0.0 if room_type == "bathroom" else 0.4
    curtains = 1.0 if room_type in HOMELY else 0.5
    head = _lead(room_type, rng, size) + [(_window(H, radiators, curtains), "wall", True)]
    n_pics = int(rng.integers(1, 4))
    tail = [(_window(H, radiators, curtains), "wall", False)] + [(ob.picture, "wall", i == 0) for i in range(n_pics)]
    return head + _body(room_type, rng, size) + tail
