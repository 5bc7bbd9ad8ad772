"""Owns what is built into or hung on walls: doors (closed or open in their frames, plain or panelled like
cabinet fronts), whiteboards, radiators, windows with a radiator under the sill, cabinets spanning a whole
wall, and pilasters that make walls uneven.

Labels: door leaf, frame and handle are door; whiteboards are unlabeled (NYU40 30 is outside the
ScanNet-20); radiators are otherfurniture; a window sill belongs to its window (see `objects.window`);
pilasters are wall. Builders follow `synth.primitives` (back at y = 0 against the wall, front towards
-y) and are pure functions of a seeded generator; any thread may call them.
"""
from __future__ import annotations

from synth import objects as ob
from synth.objects import DARK, METAL, OTHER, L, u
from synth.primitives import PLAIN, WHITES, WOOD, WOODS, Piece, box, jitter, merge, pick, rod, turned

FRAME_M = 0.06  # door frame width


def door(rng, open_prob: float = 0.5, col=None, panels: bool | None = None) -> Piece:
    """A door in its frame; open (swung into the room, the wall cut away behind it) with `open_prob`;
    `panels` (default: a coin toss) gives the leaf raised panels like a cabinet front."""
    w, h, dr = u(rng, 0.8, 0.92), u(rng, 2.0, 2.1), L["door"]
    col = col or jitter(rng, pick(rng, WOODS + WHITES))
    p = Piece("door")
    fc = jitter(rng, pick(rng, (WHITES[0], col)), 6)
    for lo, hi in (((-w / 2, -0.02, 0), (-w / 2 + FRAME_M, 0.0, h)), ((w / 2 - FRAME_M, -0.02, 0), (w / 2, 0.0, h)),
                   ((-w / 2 + FRAME_M, -0.02, h - FRAME_M), (w / 2 - FRAME_M, 0.0, h))):
        p.add(box(lo, hi, dr, fc, PLAIN))
    panels = rng.random() < 0.5 if panels is None else panels
    leaf = _leaf(rng, w - 2 * FRAME_M, h - FRAME_M, col, panels)
    p.keepout.append(((-w / 2, -w - 0.1, 0.0), (w / 2, 0.0, h)))
    if rng.random() < open_prob:
        angle = u(rng, 20.0, 100.0)
        hinge = (-w / 2 + FRAME_M, 0.0, 0.0)
        leaf = [turned(part, -angle, hinge) for part in leaf]
        p.openings.append(((-w / 2 + FRAME_M, -0.01, 0.0), (w / 2 - FRAME_M, 0.01, h - FRAME_M)))
    return p.extend(leaf)


def _leaf(rng, w: float, h: float, col, panels: bool) -> list:
    """A door leaf from x = -w/2 to w/2, y in [-0.04, 0] with its handle (and raised panels)."""
    dr = L["door"]
    parts = [box((-w / 2, -0.04, 0.0), (w / 2, 0.0, h), dr, col, WOOD)]
    if panels:  # two or four raised panels, as on cabinet fronts
        rows = 2 if rng.random() < 0.5 else 3
        ph, m = (h - 0.12 * (rows + 1)) / rows, 0.1
        for k in range(rows):
            z0 = 0.12 + k * (ph + 0.12)
            parts.append(box((-w / 2 + m, -0.05, z0), (w / 2 - m, -0.04, z0 + ph), dr, col, WOOD))
    x = w / 2 - 0.08
    parts.append(rod((x, -0.04, 1.0), (x, -0.1, 1.0), 0.012, dr, METAL))
    parts.append(rod((x, -0.1, 1.0), (x - 0.12, -0.1, 1.0), 0.011, dr, METAL))
    return parts


def whiteboard(rng) -> Piece:
    """A white board in an aluminium frame with a marker tray (unlabeled)."""
    w, h, z0 = u(rng, 1.2, 2.4), u(rng, 0.9, 1.2), u(rng, 0.85, 1.0)
    p = Piece("whiteboard").add(box((-w / 2, -0.02, z0), (w / 2, 0.0, z0 + h), OTHER,
                                    jitter(rng, (242, 242, 240), 5), PLAIN))
    for lo, hi in (((-w / 2 - 0.02, -0.03, z0 - 0.02), (-w / 2, 0.0, z0 + h + 0.02)),
                   ((w / 2, -0.03, z0 - 0.02), (w / 2 + 0.02, 0.0, z0 + h + 0.02)),
                   ((-w / 2, -0.03, z0 + h), (w / 2, 0.0, z0 + h + 0.02)),
                   ((-w / 2, -0.08, z0 - 0.04), (w / 2, 0.0, z0))):
        p.add(box(lo, hi, OTHER, METAL, PLAIN))
    return p


def radiator(rng, w: float | None = None, top_m: float | None = None) -> Piece:
    """A column radiator on the wall a little above the floor, with two feet (otherfurniture)."""
    w = w if w is not None else u(rng, 0.6, 1.6)
    z0, top = u(rng, 0.1, 0.18), top_m if top_m is not None else u(rng, 0.5, 0.8)
    depth, rd = u(rng, 0.06, 0.11), L["otherfurniture"]
    col = jitter(rng, pick(rng, WHITES + ((200, 200, 195),)), 5)
    y0, y1 = -0.04 - depth, -0.04
    p = Piece("radiator")
    n = max(3, int(w / 0.06))
    pitch = w / n
    for k in range(n):
        x = -w / 2 + k * pitch
        p.add(box((x + 0.004, y0, z0), (x + pitch - 0.004, y1, top), rd, col, PLAIN))
    p.add(box((-w / 2, y0 + 0.01, top - 0.04), (w / 2, y1 - 0.01, top), rd, col, PLAIN))
    for sx in (-1, 1):
        x = sx * (w / 2 - 0.08)
        p.add(box((x - 0.02, y0 + 0.01, 0.0), (x + 0.02, y1 - 0.01, z0), rd, col, PLAIN))
        p.add(rod((x, y1, top - 0.1), (x, 0.0, top - 0.1), 0.01, rd, METAL))
    return p


def window_with_radiator(rng, height_m: float, curtains: bool = True) -> Piece:
    """A window (its sill included) with a radiator centred under the sill."""
    win = ob.window(rng, height_m, curtains)
    sill_z = min(float(part.vertices[:, 2].min()) for part in win.parts if part.label == L["window"])
    lo, hi = win.bounds()
    rad = radiator(rng, min(hi[0] - lo[0] - 0.1, u(rng, 0.6, 1.4)), top_m=sill_z - u(rng, 0.08, 0.2))
    return merge("window", [win, rad])


def wall_cabinets(rng, length_m: float, height_m: float, col=None) -> Piece:
    """Built-in cabinets along a whole wall: a tall row of doors and a row of small top doors."""
    d = u(rng, 0.4, 0.62)
    h = min(height_m - 0.02, u(rng, 2.0, 2.5))
    col = col or jitter(rng, pick(rng, WOODS + WHITES))
    low_h = h * u(rng, 0.75, 0.85)
    p = ob.cabinet(rng, length_m, d, low_h, col=col)
    p.extend(ob.cabinet(rng, length_m, d, h - low_h, z0=low_h, col=col).parts)
    p.name = "wall_cabinets"
    return p


def pilaster(rng, height_m: float, wide: bool = False) -> Piece:
    """A column or a thicker stretch of wall, floor to ceiling (wall)."""
    w, d = (u(rng, 0.8, 2.0), u(rng, 0.05, 0.15)) if wide else (u(rng, 0.2, 0.6), u(rng, 0.1, 0.4))
    return Piece("pilaster").add(box((-w / 2, -d, 0.0), (w / 2, 0.0, height_m), L["wall"],
                                     (200, 200, 200), PLAIN))


def tv_on_wall(rng) -> Piece:
    w = u(rng, 0.9, 1.6)
    z0 = u(rng, 1.0, 1.4)
    return Piece("tv").add(box((-w / 2, -0.06, z0), (w / 2, 0.0, z0 + w * 0.56), OTHER, DARK, PLAIN))


def shelf_rack(rng) -> Piece:
    """A metal storage rack with boxes on its shelves (NYU40 'shelves' is outside the ScanNet-20: unlabeled)."""
    w, d, h = u(rng, 0.9, 1.5), u(rng, 0.4, 0.6), u(rng, 1.6, 2.2)
    tube = jitter(rng, pick(rng, (METAL, DARK, (90, 110, 150))), 8)
    p = Piece("rack")
    for x in (-w / 2, w / 2 - 0.03):
        for y in (-d / 2, d / 2 - 0.03):
            p.add(box((x, y, 0.0), (x + 0.03, y + 0.03, h), OTHER, tube))
    n = int(rng.integers(3, 6))
    for k in range(n):
        z = 0.08 + k * (h - 0.1) / (n - 1 if n > 1 else 1)
        p.add(box((-w / 2, -d / 2, z - 0.02), (w / 2, d / 2, z), OTHER, tube, PLAIN))
        x = -w / 2 + 0.05
        while k < n - 1 and x < w / 2 - 0.3 and rng.random() < 0.85:
            bw = u(rng, 0.2, 0.45)
            bh = min(u(rng, 0.15, 0.35), (h - 0.1) / (n - 1 if n > 1 else 1) - 0.06)
            if x + bw > w / 2 - 0.04:
                break
            p.add(box((x, -d / 2 + 0.04, z), (x + bw, d / 2 - 0.04, z + bh), OTHER,
                      jitter(rng, pick(rng, ((175, 140, 95), (60, 60, 70), (200, 60, 50), (230, 230, 225))), 15)))
            x += bw + u(rng, 0.02, 0.15)
    return p
