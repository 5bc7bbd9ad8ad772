"""Owns thin-legged tables and the table groups built from them: desks with office chairs and clutter,
conference tables ringed by chairs, and rows of classroom tables with stacking chairs.

Builders follow `synth.primitives` (front faces -y, floor at z = 0) and are pure functions of a seeded
generator; any thread may call them.
"""
from __future__ import annotations

import numpy as np

from synth import clutter as cl
from synth import objects as ob
from synth import seating as st
from synth.objects import DARK, METAL, L, u
from synth.primitives import WHITES, WOOD, WOODS, Piece, box, jitter, merge, pick, rod, transform, turned

LAMINATES = WHITES + ((180, 180, 175), (120, 120, 118)) + WOODS[1:4:2]


def thin_table(rng, w: float, d: float, label: int = L["table"], h: float | None = None) -> Piece:
    """A thin top on slim legs: round or square metal tubes at the corners, or a T-frame at each end."""
    h = h if h is not None else u(rng, 0.72, 0.76)
    top_t, top = u(rng, 0.018, 0.03), jitter(rng, pick(rng, LAMINATES), 8)
    frame = jitter(rng, pick(rng, (METAL, DARK, (200, 200, 200))), 6)
    p = Piece("table").add(box((-w / 2, -d / 2, h - top_t), (w / 2, d / 2, h), label, top, WOOD))
    style, inset = int(rng.integers(3)), u(rng, 0.03, 0.07)
    leg_h = h - top_t
    for sx in (-1, 1):
        x = sx * (w / 2 - inset)
        if style == 2:  # T-frame: a post at each end on a foot across the depth
            p.add(rod((x, 0.0, 0.03), (x, 0.0, leg_h), 0.025, label, frame))
            p.add(box((x - 0.03, -d / 2 + 0.02, 0.0), (x + 0.03, d / 2 - 0.02, 0.03), label, frame))
            continue
        for sy in (-1, 1):
            y = sy * (d / 2 - inset)
            if style == 0:
                p.add(rod((x, y, 0.0), (x, y, leg_h), u(rng, 0.011, 0.018), label, frame, segments=8))
            else:
                p.add(box((x - 0.0125, y - 0.0125, 0.0), (x + 0.0125, y + 0.0125, leg_h), label, frame))
    if rng.random() < 0.5:  # a slim apron under the long sides
        for sy in (-1, 1):
            y = sy * (d / 2 - inset)
            p.add(box((-w / 2 + inset, y - 0.008, leg_h - 0.05), (w / 2 - inset, y + 0.008, leg_h), label, frame))
    return p


def any_table(rng, w: float, d: float, label: int = L["table"], h: float | None = None) -> Piece:
    """The wooden table of `synth.objects` or a thin-legged one, with clutter on top half of the time."""
    p = (thin_table if rng.random() < 0.6 else ob.table)(rng, w, d, label, h)
    top = p.bounds()[1][2]
    if rng.random() < 0.5:
        p.extend(cl.on_surface(rng, -w / 2 + 0.05, w / 2 - 0.05, -d / 2 + 0.05, d / 2 - 0.05, top, screens=False))
    return p


def desk_setup(rng) -> Piece:
    """A desk with an office chair and clutter on its top beside the monitor."""
    p = ob.desk_with_chair(rng, st.office_seat)
    lo, hi = Piece("desk", [q for q in p.parts if q.label == L["desk"]]).bounds()
    (x0, y0, _), (x1, y1, z) = lo, hi
    for a, b in ((x0 + 0.04, -0.3), (0.3, x1 - 0.04)):
        p.extend(cl.on_surface(rng, a, b, y0 + 0.04, y1 - 0.04, z, screens=False))
    p.extend(cl.keyboard(rng, 0.0, y0 + 0.14, z))
    p.name = "desk_with_chair"
    return p


def conference_set(rng, w: float, d: float) -> Piece:
    """A long table with chairs along both long sides (and sometimes its ends), all facing the table."""
    pieces = [any_table(rng, w, d)]
    pitch = u(rng, 0.65, 0.85)
    n = max(1, int((w - 0.3) / pitch))
    xs = (np.arange(n) - (n - 1) / 2) * pitch
    same = rng.random() < 0.7  # meeting rooms mostly have one chair design
    first = st.meeting_seat(rng)
    for side, yaw in ((-1, 180.0), (1, 0.0)):
        for x in xs:
            if rng.random() < 0.1:
                continue
            c = first if same else st.meeting_seat(rng)
            clo, chi = c.bounds()
            y = side * (d / 2 + (chi[1] - clo[1]) / 2 + u(rng, 0.02, 0.2))
            pieces.append(transform(c, yaw, (x + u(rng, -0.05, 0.05), y, 0.0)))
    return merge("conference_table", pieces)


def classroom_rows(rng, width_m: float, depth_m: float) -> Piece:
    """Rows of small tables, each with stacking chairs behind it, facing -y, filling width x depth."""
    single = rng.random() < 0.5
    tw, td = (u(rng, 0.6, 0.75), u(rng, 0.5, 0.6)) if single else (u(rng, 1.2, 1.4), u(rng, 0.5, 0.6))
    seats = 1 if single else 2
    aisle, pitch = u(rng, 0.45, 0.8), td + u(rng, 0.75, 0.95)
    n_cols = max(1, int((width_m + aisle) / (tw + aisle)))
    n_rows = max(1, int((depth_m - td - 0.6) / pitch) + 1)
    desk = thin_table(rng, tw, td)
    chair = st.any_chair(rng, {"stacking": 0.8, "wooden": 0.2})
    pieces = []
    for r in range(n_rows):
        for k in range(n_cols):
            x = (k - (n_cols - 1) / 2) * (tw + aisle)
            y = -depth_m / 2 + td / 2 + r * pitch
            pieces.append(transform(desk, 0.0, (x, y, 0.0)))
            for s in range(seats):
                if rng.random() < 0.15:
                    continue
                sx = x + (s - (seats - 1) / 2) * tw / 2
                pieces.append(_pulled_chair(rng, chair, sx, y + td / 2 + 0.3))
    return merge("classroom_rows", pieces)


def _pulled_chair(rng, chair: Piece, x: float, y: float) -> Piece:
    """`chair` facing -y at (x, y), pulled out a little and turned a few degrees."""
    yaw = u(rng, -10.0, 10.0)
    parts = [turned(part, yaw) for part in chair.parts]
    return transform(Piece(chair.name, parts), 0.0, (x + u(rng, -0.04, 0.04), y + u(rng, -0.06, 0.06), 0.0))
