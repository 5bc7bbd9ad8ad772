"""Owns clutter: bins, cardboard boxes, bags on the floor and monitors, keyboards, laptops, papers and cups on
desks and tables.

Real rooms are full of small things that are none of the ScanNet-20 classes; every part built here is
labeled 0 (unlabeled) so that no clutter ever trains as furniture. Builders follow `synth.primitives`
and are pure functions of a seeded generator; any thread may call them.
"""
from __future__ import annotations

from synth.objects import DARK, METAL, OTHER, u
from synth.primitives import FABRIC, FABRICS, PLAIN, WHITES, Piece, box, frustum, jitter, pick, turned

CARDBOARD = (175, 140, 95)
BIN_COLOURS = ((60, 60, 65), (40, 90, 160), (200, 200, 200), (70, 130, 70), (150, 40, 40))


def waste_bin(rng) -> Piece:
    r, h = u(rng, 0.11, 0.18), u(rng, 0.28, 0.45)
    col = jitter(rng, pick(rng, BIN_COLOURS), 10)
    if rng.random() < 0.5:
        return Piece("bin").add(frustum((0.0, 0.0), 0.0, h, r * 0.85, r, OTHER, col, PLAIN, segments=14))
    return Piece("bin").add(box((-r, -r * 0.75, 0.0), (r, r * 0.75, h), OTHER, col, PLAIN))


def cardboard_boxes(rng) -> Piece:
    """One to three cardboard boxes stacked, each a little turned and offset."""
    p, z = Piece("boxes"), 0.0
    w, d = u(rng, 0.3, 0.6), u(rng, 0.25, 0.45)
    for _ in range(int(rng.integers(1, 4))):
        h = u(rng, 0.15, 0.4)
        part = box((-w / 2, -d / 2, z), (w / 2, d / 2, z + h), OTHER, jitter(rng, CARDBOARD, 15), PLAIN)
        p.add(turned(part, u(rng, -8.0, 8.0)))
        z += h
        w, d = w * u(rng, 0.7, 1.0), d * u(rng, 0.7, 1.0)
    return p


def bag(rng) -> Piece:
    """A backpack or holdall standing on the floor."""
    col = jitter(rng, pick(rng, FABRICS + ((30, 30, 35),)), 15)
    w, d, h = u(rng, 0.28, 0.45), u(rng, 0.15, 0.25), u(rng, 0.3, 0.48)
    p = Piece("bag").add(box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, h), OTHER, col, FABRIC))
    p.add(box((-w / 3, -d / 2 - 0.06, 0.03), (w / 3, -d / 2, h * 0.55), OTHER, col, FABRIC))
    p.add(box((-0.05, -0.01, h), (0.05, 0.01, h + 0.06), OTHER, DARK, FABRIC))
    return Piece("bag", [turned(part, u(rng, -20.0, 20.0)) for part in p.parts])


FLOOR_CLUTTER = {"bin": waste_bin, "boxes": cardboard_boxes, "bag": bag}


def floor_clutter(rng) -> Piece:
    names = sorted(FLOOR_CLUTTER)
    return FLOOR_CLUTTER[names[int(rng.integers(len(names)))]](rng)


def monitor(rng, x: float, y: float, z: float) -> list:
    """A flat screen on a foot, centred at (x, y) on a surface at height z, screen facing -y."""
    w = u(rng, 0.45, 0.65)
    h, lift = w * 0.6, u(rng, 0.08, 0.15)
    return [box((x - 0.1, y - 0.08, z), (x + 0.1, y + 0.08, z + 0.015), OTHER, DARK, PLAIN),
            box((x - 0.03, y + 0.02, z), (x + 0.03, y + 0.05, z + lift + 0.05), OTHER, DARK, PLAIN),
            box((x - w / 2, y - 0.015, z + lift), (x + w / 2, y + 0.015, z + lift + h), OTHER,
                jitter(rng, (28, 28, 32), 6), PLAIN)]


def laptop(rng, x: float, y: float, z: float) -> list:
    w, d = u(rng, 0.3, 0.38), u(rng, 0.21, 0.26)
    col = jitter(rng, pick(rng, (METAL, DARK, (200, 200, 205))), 8)
    base = box((x - w / 2, y - d / 2, z), (x + w / 2, y + d / 2, z + 0.018), OTHER, col, PLAIN)
    lid = box((x - w / 2, y + d / 2 - 0.006, z + 0.018), (x + w / 2, y + d / 2, z + 0.018 + d), OTHER, col, PLAIN)
    return [base, turned(lid, 0.0, (x, y + d / 2, z + 0.018), tilt_deg=-u(rng, 5.0, 25.0))]


def small_things(rng, x: float, y: float, z: float) -> list:
    """Papers, a book or a cup near (x, y) on a surface at height z."""
    kind = int(rng.integers(3))
    if kind == 0:
        paper = box((x - 0.105, y - 0.15, z), (x + 0.105, y + 0.15, z + u(rng, 0.002, 0.03)), OTHER,
                    jitter(rng, pick(rng, WHITES), 5), PLAIN)
        return [turned(paper, u(rng, -30.0, 30.0), (x, y, z))]
    if kind == 1:
        return [box((x - 0.09, y - 0.12, z), (x + 0.09, y + 0.12, z + u(rng, 0.02, 0.05)), OTHER,
                    jitter(rng, pick(rng, FABRICS), 30), PLAIN)]
    return [frustum((x, y), z, z + 0.1, 0.035, 0.042, OTHER, jitter(rng, pick(rng, WHITES + BIN_COLOURS), 10),
                    PLAIN, segments=10)]


def keyboard(rng, x: float, y: float, z: float) -> list:
    return [box((x - 0.22, y - 0.07, z), (x + 0.22, y + 0.07, z + 0.025), OTHER, jitter(rng, DARK, 10), PLAIN)]


def on_surface(rng, x0: float, x1: float, y0: float, y1: float, z: float, screens: bool = True) -> list:
    """Clutter spread along a surface from x0 to x1 (depth y0..y1) at height z; slots never overlap."""
    parts, x = [], x0
    while True:
        width = u(rng, 0.3, 0.8)
        if x + width > x1:
            return parts
        cx, cy = x + width / 2, (y0 + y1) / 2
        roll = rng.random()
        if roll < 0.3 and screens and width >= 0.66 and y1 - y0 >= 0.5:
            parts += monitor(rng, cx, y1 - 0.12, z) + keyboard(rng, cx, y0 + 0.1, z)
        elif roll < 0.45 and width >= 0.4 and y1 - y0 >= 0.3:
            parts += laptop(rng, cx, cy, z)
        elif roll < 0.8 and y1 - y0 >= 0.32:
            parts += small_things(rng, cx, cy, z)
        x += width + u(rng, 0.02, 0.3)
