"""Owns the chair designs: office chairs (star base, swivel seat), stacking chairs, and a weighted pick among
them and the wooden chair of `synth.objects`.

Chairs are the most common furniture of real rooms, so the world draws several designs; every part of
every design is labeled chair. Builders follow `synth.primitives` (front faces -y, floor at z = 0) and
are pure functions of a seeded generator; any thread may call them.
"""
from __future__ import annotations

import numpy as np

from synth import objects as ob
from synth.objects import DARK, METAL, L, u
from synth.primitives import FABRIC, FABRICS, PLAIN, Piece, box, frustum, jitter, pick, rod, turned

PLASTICS = ((200, 60, 50), (60, 90, 160), (230, 230, 225), (50, 50, 55), (90, 140, 90), (220, 170, 60),
            (150, 150, 150))


def office_chair(rng) -> Piece:
    """Five-spoke star base on casters, a gas column and a seat with back (and maybe arms) swivelled."""
    c, frame = L["chair"], pick(rng, (DARK, METAL, (25, 25, 28)))
    seat_z, reach = u(rng, 0.44, 0.52), u(rng, 0.27, 0.33)
    p = Piece("office_chair")
    spin = u(rng, 0.0, 72.0)
    for k in range(5):
        a = np.radians(spin + 72.0 * k)
        end = (reach * np.cos(a), reach * np.sin(a), 0.07)
        p.add(rod((0.0, 0.0, 0.1), end, 0.02, c, frame, PLAIN, segments=6))
        p.add(frustum(end[:2], 0.0, 0.06, 0.025, 0.025, c, DARK, PLAIN, segments=8))
    p.add(frustum((0.0, 0.0), 0.1, seat_z - 0.09, 0.025, 0.025, c, frame, PLAIN, segments=10))
    p.extend(_office_top(rng, seat_z, c, frame))
    return on_floor(p)


def _office_top(rng, seat_z: float, c: int, frame) -> list:
    """Seat, back and arms, turned about the column by a random swivel angle."""
    w, d = u(rng, 0.46, 0.54), u(rng, 0.44, 0.5)
    cover = jitter(rng, pick(rng, FABRICS + ((35, 35, 40), (30, 30, 34))), 10)
    parts = [box((-0.09, -0.09, seat_z - 0.1), (0.09, 0.09, seat_z - 0.07), c, DARK),
             box((-w / 2, -d / 2, seat_z - 0.07), (w / 2, d / 2, seat_z), c, cover, FABRIC),
             rod((0.0, d / 2 - 0.08, seat_z - 0.08), (0.0, d / 2 + 0.03, seat_z + 0.12), 0.02, c, frame)]
    bw, bh = w - u(rng, 0.0, 0.06), u(rng, 0.4, 0.68)
    back = box((-bw / 2, -0.03, 0.0), (bw / 2, 0.03, bh), c, cover, FABRIC)
    back.vertices = back.vertices + [0.0, d / 2 + 0.03, seat_z + 0.08]
    parts.append(turned(back, 0.0, (0.0, d / 2, seat_z + 0.08), tilt_deg=-u(rng, 4.0, 14.0)))
    if rng.random() < 0.6:
        for sx in (-1, 1):
            x = sx * (w / 2 + 0.02)
            parts.append(rod((x, 0.05, seat_z - 0.04), (x, 0.02, seat_z + 0.2), 0.015, c, frame))
            parts.append(box((x - 0.035, -0.14, seat_z + 0.2), (x + 0.035, 0.12, seat_z + 0.23), c, DARK))
    swivel = u(rng, -35.0, 35.0)
    return [turned(part, swivel) for part in parts]


def stacking_chair(rng) -> Piece:
    """Thin metal tube frame (four legs or two floor runners) with a moulded seat and back shell."""
    c = L["chair"]
    w, d, seat_z, top = u(rng, 0.44, 0.5), u(rng, 0.44, 0.5), u(rng, 0.44, 0.47), u(rng, 0.8, 0.88)
    tube, r = jitter(rng, pick(rng, (METAL, DARK, (180, 180, 185))), 8), u(rng, 0.009, 0.013)
    shell = jitter(rng, pick(rng, PLASTICS), 12)
    p = Piece("stacking_chair")
    xs, ys = w / 2 - 0.03, d / 2 - 0.03
    splay = u(rng, 0.0, 0.03)
    for sx in (-1, 1):
        for sy in (-1, 1):
            p.add(rod((sx * (xs + splay), sy * (ys + splay), 0.0), (sx * xs, sy * ys, seat_z - 0.015), r, c, tube))
        if rng.random() < 0.5:  # a runner joining the front and back legs on the floor
            x = sx * (xs + splay)
            p.add(box((x - r, -ys - splay - r, 0.0), (x + r, ys + splay + r, 2 * r), c, tube))
        p.add(rod((sx * xs, ys, seat_z - 0.015), (sx * xs, ys + 0.05, top), r, c, tube))
    p.add(box((-w / 2, -d / 2, seat_z - 0.015), (w / 2, d / 2, seat_z), c, shell, PLAIN))
    panel = box((-w / 2 + 0.01, -0.006, 0.0), (w / 2 - 0.01, 0.006, u(rng, 0.2, 0.3)), c, shell, PLAIN)
    panel.vertices = panel.vertices + [0.0, ys + 0.05, top - 0.3]
    p.add(turned(panel, 0.0, (0.0, ys + 0.05, top - 0.3), tilt_deg=-6.0))
    return on_floor(p)


def on_floor(p: Piece) -> Piece:
    """`p` lifted so that its lowest point is on the floor (slanted tube ends dip below it)."""
    z0 = min(float(part.vertices[:, 2].min()) for part in p.parts)
    for part in p.parts:
        part.vertices = part.vertices - [0.0, 0.0, z0]
    return p


CHAIRS = {"wooden": ob.chair, "office": office_chair, "stacking": stacking_chair}


def any_chair(rng, weights: dict | None = None) -> Piece:
    """One chair of a design drawn with `weights` (design name -> weight; default: all equally likely)."""
    weights = weights or {name: 1.0 for name in CHAIRS}
    names = sorted(weights)
    w = np.array([weights[n] for n in names], float)
    return CHAIRS[names[int(rng.choice(len(names), p=w / w.sum()))]](rng)


def office_seat(rng) -> Piece:
    """A chair for a desk: mostly office chairs."""
    return any_chair(rng, {"office": 0.75, "wooden": 0.1, "stacking": 0.15})


def meeting_seat(rng) -> Piece:
    """A chair for a meeting or dining table: all designs."""
    return any_chair(rng, {"office": 0.4, "wooden": 0.3, "stacking": 0.3})


def dining_seat(rng) -> Piece:
    """A chair for a kitchen or dining table: wooden or stacking."""
    return any_chair(rng, {"wooden": 0.6, "stacking": 0.4})
