"""Owns the parametric furniture: chairs, tables, beds, sofas, shelves, kitchen and bathroom fixtures, windows,
pictures (doors, other wall fixtures, more chairs, thin tables and clutter live in their own modules).

Every builder takes a seeded `np.random.Generator` and returns a `Piece` in its local frame (see
`synth.primitives`: front faces -y, back at +y, floor at z = 0). Pure; any thread may call them.
"""
from __future__ import annotations

import numpy as np

from fusion.classes import NAME_TO_ID
from synth.primitives import (ART, FABRIC, FABRICS, GLASS, PLAIN, WHITES, WOOD, WOODS, Piece, box,
                                     folded_sheet, frustum, jitter, legs, merge, pick, rod, transform)

L = NAME_TO_ID
OTHER = 0  # NYU40 ids outside the ScanNet-20 (books, TV, lamps) are stored as unlabeled
METAL = (150, 150, 155)
DARK = (40, 40, 45)


def u(rng, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def chair(rng) -> Piece:
    w, d, seat_z, back_z = u(rng, 0.42, 0.5), u(rng, 0.42, 0.5), u(rng, 0.43, 0.47), u(rng, 0.82, 0.95)
    col, t = jitter(rng, pick(rng, WOODS)), 0.035
    p = Piece("chair").extend(legs(w, d, seat_z - 0.04, t, L["chair"], col))
    p.add(box((-w / 2, -d / 2, seat_z - 0.04), (w / 2, d / 2, seat_z), L["chair"], col, WOOD))
    for sx in (-1, 1):
        x = sx * (w / 2 - t / 2)
        p.add(box((x - t / 2, d / 2 - t, seat_z), (x + t / 2, d / 2, back_z), L["chair"], col, WOOD))
    p.add(box((-w / 2, d / 2 - 0.025, back_z - 0.2), (w / 2, d / 2, back_z), L["chair"], col, WOOD))
    return p


def table(rng, w: float, d: float, label: int = L["table"], h: float | None = None) -> Piece:
    h = h if h is not None else u(rng, 0.72, 0.76)
    col, t = jitter(rng, pick(rng, WOODS)), u(rng, 0.045, 0.07)
    p = Piece("table").extend(legs(w, d, h - 0.03, t, label, col, inset=0.04))
    p.add(box((-w / 2, -d / 2, h - 0.03), (w / 2, d / 2, h), label, col, WOOD))
    p.add(box((-w / 2 + 0.06, -d / 2 + 0.06, h - 0.11), (w / 2 - 0.06, d / 2 - 0.06, h - 0.03), label, col, WOOD))
    return p


def desk(rng) -> Piece:
    w, d = u(rng, 1.2, 1.6), u(rng, 0.6, 0.75)
    p = table(rng, w, d, L["desk"])
    col = p.parts[-1].color
    x0 = w / 2 - 0.45
    p.add(box((x0, -d / 2 + 0.05, 0.0), (w / 2 - 0.08, d / 2 - 0.05, 0.6), L["desk"], col, WOOD))
    for k in range(3):
        z = 0.06 + k * 0.18
        p.add(box((x0 + 0.02, -d / 2 + 0.03, z), (w / 2 - 0.1, -d / 2 + 0.05, z + 0.16), L["desk"], col, WOOD))
    p.add(box((-0.25, 0.0, 0.75), (0.25, 0.03, 1.05), OTHER, DARK, PLAIN))  # monitor
    p.add(box((-0.04, 0.03, 0.75), (0.04, 0.09, 0.85), OTHER, DARK, PLAIN))
    return p


def bed(rng) -> Piece:
    w, d = (u(rng, 1.4, 1.8) if rng.random() < 0.7 else u(rng, 0.9, 1.0)), u(rng, 2.0, 2.1)
    wood, sheet = jitter(rng, pick(rng, WOODS)), jitter(rng, pick(rng, WHITES), 8)
    b = L["bed"]
    p = Piece("bed").extend(legs(w, d, 0.12, 0.06, b, wood))
    p.add(box((-w / 2, -d / 2, 0.12), (w / 2, d / 2 - 0.06, 0.32), b, wood, WOOD))
    p.add(box((-w / 2 + 0.02, -d / 2 + 0.02, 0.32), (w / 2 - 0.02, d / 2 - 0.08, 0.54), b, sheet, FABRIC))
    p.add(box((-w / 2, d / 2 - 0.06, 0.0), (w / 2, d / 2, u(rng, 0.9, 1.1)), b, wood, WOOD))
    p.add(box((-w / 2 - 0.01, -d / 2 - 0.01, 0.4), (w / 2 + 0.01, d / 2 - 0.75, 0.58), b,
              jitter(rng, pick(rng, FABRICS)), FABRIC))
    n_pillows = 2 if w > 1.2 else 1
    pw = (w - 0.2) / n_pillows
    for k in range(n_pillows):
        x0 = -w / 2 + 0.1 + k * pw
        p.add(box((x0 + 0.03, d / 2 - 0.5, 0.54), (x0 + pw - 0.03, d / 2 - 0.12, 0.66), b, sheet, FABRIC))
    return p


def sofa(rng) -> Piece:
    w, d, s = u(rng, 1.8, 2.4), u(rng, 0.85, 0.95), L["sofa"]
    col, arm = jitter(rng, pick(rng, FABRICS)), 0.18
    p = Piece("sofa").extend(legs(w, d, 0.08, 0.05, s, DARK, inset=0.03))
    p.add(box((-w / 2, -d / 2, 0.08), (w / 2, d / 2, 0.38), s, col, FABRIC))
    p.add(box((-w / 2, d / 2 - 0.22, 0.38), (w / 2, d / 2, 0.86), s, col, FABRIC))
    for sx in (-1, 1):
        p.add(box((min(sx * w / 2, sx * (w / 2 - arm)), -d / 2, 0.38),
                  (max(sx * w / 2, sx * (w / 2 - arm)), d / 2 - 0.22, 0.62), s, col, FABRIC))
    n = 2 if w < 2.1 else 3
    cw = (w - 2 * arm) / n
    for k in range(n):
        x0 = -w / 2 + arm + k * cw
        p.add(box((x0 + 0.01, -d / 2 + 0.02, 0.38), (x0 + cw - 0.01, d / 2 - 0.22, 0.48), s, col, FABRIC))
    return p


def bookshelf(rng) -> Piece:
    w, d, h, t = u(rng, 0.8, 1.2), u(rng, 0.3, 0.38), u(rng, 1.8, 2.1), 0.025
    col, bs = jitter(rng, pick(rng, WOODS)), L["bookshelf"]
    p = Piece("bookshelf")
    for sx in (-1, 1):
        p.add(box((sx * w / 2 - (t if sx > 0 else 0), -d / 2, 0), (sx * w / 2 + (t if sx < 0 else 0), d / 2, h),
                  bs, col, WOOD))
    p.add(box((-w / 2 + t, d / 2 - 0.01, 0), (w / 2 - t, d / 2, h), bs, col, WOOD))
    n = int(rng.integers(4, 6))
    levels = np.linspace(0.05, h - t, n + 1)
    for z in levels:
        p.add(box((-w / 2 + t, -d / 2, z - t), (w / 2 - t, d / 2 - 0.01, z), bs, col, WOOD))
    for z0, z1 in zip(levels[:-1], levels[1:]):
        _books(rng, p, -w / 2 + t + 0.01, w / 2 - t - 0.01, -d / 2 + 0.04, d / 2 - 0.02, z0, z1 - t - 0.02)
    return p


def _books(rng, p: Piece, x0: float, x1: float, y0: float, y1: float, z0: float, zmax: float) -> None:
    x = x0 + u(rng, 0.0, 0.15)
    while True:
        bw = u(rng, 0.02, 0.06)
        if x + bw > x1 or rng.random() < 0.04:
            return
        bh = min(zmax - z0, u(rng, 0.15, 0.3))
        p.add(box((x, y0 + u(rng, 0, 0.03), z0), (x + bw, y1, z0 + bh), OTHER,
                  jitter(rng, pick(rng, FABRICS), 40), PLAIN))
        x += bw + (u(rng, 0.05, 0.2) if rng.random() < 0.08 else 0.002)


def cabinet(rng, w: float, d: float, h: float, label: int = L["cabinet"], drawers: bool = False,
            z0: float = 0.0, col=None) -> Piece:
    col = col or jitter(rng, pick(rng, WOODS + WHITES))
    p = Piece("cabinet").add(box((-w / 2, -d / 2 + 0.02, z0), (w / 2, d / 2, z0 + h), label, col, WOOD))
    n = max(1, int(round(w / 0.5)))
    fronts = [(i, 0) for i in range(n)] if not drawers else [(0, k) for k in range(max(2, int(h / 0.25)))]
    rows = 1 if not drawers else len(fronts)
    cols = n if not drawers else 1
    fw, fh = w / cols, h / rows
    for i, k in fronts:
        lo = (-w / 2 + i * fw + 0.005, -d / 2, z0 + k * fh + 0.005)
        hi = (-w / 2 + (i + 1) * fw - 0.005, -d / 2 + 0.02, z0 + (k + 1) * fh - 0.005)
        p.add(box(lo, hi, label, col, WOOD))
        hx = (lo[0] + hi[0]) / 2 if drawers else (hi[0] - 0.05 if i % 2 == 0 else lo[0] + 0.05)
        hz = (lo[2] + hi[2]) / 2 if drawers else min(hi[2] - 0.1, z0 + 1.0)
        p.add(box((hx - 0.05 if drawers else hx - 0.01, -d / 2 - 0.025, hz - 0.01),
                  (hx + 0.05 if drawers else hx + 0.01, -d / 2, hz + (0.01 if drawers else 0.06)), label, METAL))
    return p


def refrigerator(rng) -> Piece:
    w, d, h, f = u(rng, 0.6, 0.75), u(rng, 0.65, 0.72), u(rng, 1.75, 1.95), L["refrigerator"]
    col = jitter(rng, pick(rng, WHITES + (METAL,)), 6)
    p = Piece("refrigerator").add(box((-w / 2, -d / 2 + 0.05, 0.05), (w / 2, d / 2, h), f, col, PLAIN))
    p.add(box((-w / 2 + 0.03, -d / 2 + 0.05, 0), (w / 2 - 0.03, d / 2, 0.05), f, DARK))
    split = 0.05 + (h - 0.05) * 0.62
    for z0, z1 in ((0.05, split - 0.01), (split + 0.01, h)):
        p.add(box((-w / 2, -d / 2, z0), (w / 2, -d / 2 + 0.05, z1), f, col, PLAIN))
        p.add(rod((w / 2 - 0.06, -d / 2 - 0.04, z0 + 0.1), (w / 2 - 0.06, -d / 2 - 0.04, min(z1 - 0.1, z0 + 0.6)),
                  0.012, f, METAL))
    return p


def toilet(rng) -> Piece:
    t, col = L["toilet"], jitter(rng, WHITES[0], 5)
    d = u(rng, 0.65, 0.72)
    p = Piece("toilet").add(box((-0.2, d / 2 - 0.2, 0.42), (0.2, d / 2, 0.8), t, col))
    p.add(box((-0.1, d / 2 - 0.22, 0.0), (0.1, d / 2, 0.42), t, col))
    cy = -d / 2 + 0.22
    p.add(frustum((0.0, cy), 0.0, 0.36, 0.13, 0.18, t, col, scale_y=1.25))
    p.add(frustum((0.0, cy), 0.36, 0.4, 0.19, 0.19, t, col, scale_y=1.25))
    p.add(box((-0.12, cy + 0.1, 0.36), (0.12, d / 2 - 0.2, 0.42), t, col))
    return p


def sink(rng, x: float, y: float, z: float, w: float = 0.5, d: float = 0.4) -> list:
    """A basin resting on a counter top at height z, centred at (x, y): bottom, four walls, a tap."""
    s, col, wall, h = L["sink"], jitter(rng, pick(rng, WHITES + (METAL,)), 5), 0.03, 0.14
    x0, x1, y0, y1 = x - w / 2, x + w / 2, y - d / 2, y + d / 2
    parts = [box((x0, y0, z), (x1, y1, z + 0.02), s, col)]
    for lo, hi in (((x0, y0, z), (x1, y0 + wall, z + h)), ((x0, y1 - wall, z), (x1, y1, z + h)),
                   ((x0, y0 + wall, z), (x0 + wall, y1 - wall, z + h)), ((x1 - wall, y0 + wall, z), (x1, y1 - wall, z + h))):
        parts.append(box(lo, hi, s, col))
    parts.append(rod((x, y1 + 0.04, z), (x, y1 + 0.04, z + h + 0.14), 0.015, s, METAL))
    parts.append(rod((x, y1 + 0.04, z + h + 0.12), (x, y1 - 0.12, z + h + 0.12), 0.012, s, METAL))
    return parts


def counter_run(rng, w: float, with_sink: bool = True, wall_cabinets: bool = True) -> Piece:
    d, h = 0.62, 0.88
    col = jitter(rng, pick(rng, WOODS + WHITES))
    p = cabinet(rng, w, d - 0.02, h - 0.04, col=col)
    for part in p.parts:
        part.vertices = part.vertices + [0.0, 0.01, 0.0]
    p.add(box((-w / 2, -d / 2 - 0.01, h - 0.04), (w / 2, d / 2, h), L["counter"], jitter(rng, (90, 90, 95), 30), PLAIN))
    if with_sink:
        p.extend(sink(rng, u(rng, -w / 2 + 0.4, w / 2 - 0.4), -0.03, h, 0.6, 0.42))
    if wall_cabinets:
        upper = cabinet(rng, w, 0.34, 0.7, z0=1.45, col=col)
        p.extend(transform(upper, 0, (0.0, d / 2 - 0.17, 0.0)).parts)
    p.name = "counter"
    return p


def vanity(rng) -> Piece:
    w, d = u(rng, 0.7, 1.0), 0.5
    p = cabinet(rng, w, d, 0.8)
    p.add(box((-w / 2 - 0.01, -d / 2 - 0.02, 0.8), (w / 2 + 0.01, d / 2, 0.84), L["counter"],
              jitter(rng, (200, 200, 195), 20), PLAIN))
    p.extend(sink(rng, 0.0, -0.02, 0.84, 0.45, 0.34))
    p.add(box((-w / 2 + 0.05, d / 2 - 0.02, 1.15), (w / 2 - 0.05, d / 2, 1.85), OTHER, (190, 200, 205), GLASS))
    p.name = "vanity"
    return p


def bathtub(rng) -> Piece:
    w, d, h, b = u(rng, 1.5, 1.75), u(rng, 0.72, 0.8), u(rng, 0.5, 0.58), L["bathtub"]
    col, t = jitter(rng, WHITES[1], 5), 0.07
    p = Piece("bathtub").add(box((-w / 2, -d / 2, 0), (w / 2, d / 2, 0.08), b, col))
    for lo, hi in (((-w / 2, -d / 2, 0.08), (w / 2, -d / 2 + t, h)), ((-w / 2, d / 2 - t, 0.08), (w / 2, d / 2, h)),
                   ((-w / 2, -d / 2 + t, 0.08), (-w / 2 + t, d / 2 - t, h)),
                   ((w / 2 - t, -d / 2 + t, 0.08), (w / 2, d / 2 - t, h))):
        p.add(box(lo, hi, b, col))
    y = -d / 2 + 0.05
    p.add(rod((-w / 2, y + 0.02, 2.0), (w / 2, y + 0.02, 2.0), 0.012, OTHER, METAL))
    x_end = -w / 2 + w * u(rng, 0.35, 0.9)
    p.add(folded_sheet(-w / 2 + 0.02, x_end, y + 0.02, h + 0.12, 1.98, L["shower curtain"],
                       jitter(rng, pick(rng, WHITES + FABRICS), 10)))
    return p


def nightstand(rng) -> Piece:
    p = cabinet(rng, u(rng, 0.4, 0.5), u(rng, 0.35, 0.45), u(rng, 0.5, 0.6), L["otherfurniture"], drawers=True)
    lo, hi = p.bounds()
    p.add(frustum((0.0, 0.0), hi[2], hi[2] + 0.3, 0.06, 0.03, OTHER, METAL))
    p.add(frustum((0.0, 0.0), hi[2] + 0.3, hi[2] + 0.48, 0.16, 0.1, OTHER, (240, 225, 190), FABRIC))
    p.name = "nightstand"
    return p


def dresser(rng) -> Piece:
    p = cabinet(rng, u(rng, 0.9, 1.4), u(rng, 0.45, 0.55), u(rng, 0.75, 0.9), L["otherfurniture"], drawers=True)
    p.name = "dresser"
    return p


def tv_stand(rng) -> Piece:
    w = u(rng, 1.2, 1.6)
    p = cabinet(rng, w, 0.42, 0.5, L["otherfurniture"])
    tw = min(w - 0.1, u(rng, 0.9, 1.3))
    p.add(box((-0.15, -0.05, 0.5), (0.15, 0.1, 0.52), OTHER, DARK))
    p.add(box((-0.03, 0.05, 0.52), (0.03, 0.09, 0.62), OTHER, DARK))
    p.add(box((-tw / 2, 0.09, 0.6), (tw / 2, 0.14, 0.6 + tw * 0.56), OTHER, (25, 25, 30)))
    p.name = "tv_stand"
    return p


def plant(rng) -> Piece:
    r = u(rng, 0.15, 0.22)
    p = Piece("plant").add(frustum((0, 0), 0, 0.35, r * 0.7, r, L["otherfurniture"], jitter(rng, (170, 90, 60)), PLAIN))
    p.add(frustum((0, 0), 0.35, u(rng, 0.9, 1.3), r * 1.3, 0.05, OTHER, jitter(rng, (60, 120, 50), 20), FABRIC, 7))
    return p


def window(rng, height_m: float, curtains: bool = True) -> Piece:
    w, z0 = u(rng, 0.8, 1.6), u(rng, 0.85, 1.0)
    z1, wn = min(height_m - 0.25, z0 + u(rng, 1.0, 1.3)), L["window"]
    frame, col = 0.06, jitter(rng, WHITES[0], 6)
    sill_m = u(rng, 0.05, 0.14) if curtains else u(rng, 0.1, 0.3)  # the sill is part of the window
    p = Piece("window").add(box((-w / 2, -0.01, z0), (w / 2, 0.0, z1), wn, (150, 185, 215), GLASS))
    for lo, hi in (((-w / 2, -0.05, z0), (-w / 2 + frame, 0, z1)), ((w / 2 - frame, -0.05, z0), (w / 2, 0, z1)),
                   ((-w / 2, -0.05, z1 - frame), (w / 2, 0, z1)), ((-0.02, -0.04, z0), (0.02, 0, z1)),
                   ((-w / 2 - 0.04, -sill_m, z0 - 0.04), (w / 2 + 0.04, 0, z0 + 0.01))):
        p.add(box(lo, hi, wn, col, PLAIN))
    if curtains:
        ccol, cw = jitter(rng, pick(rng, FABRICS + WHITES), 15), u(rng, 0.3, 0.5)
        top = min(height_m - 0.08, z1 + 0.15)
        p.add(rod((-w / 2 - cw - 0.1, -0.17, top), (w / 2 + cw + 0.1, -0.17, top), 0.015, OTHER, METAL))
        for sx in (-1, 1):
            xa, xb = sorted((sx * (w / 2 + cw), sx * (w / 2 - 0.12)))
            p.add(folded_sheet(xa, xb, -0.16, z0 - 0.1, top - 0.02, L["curtain"], ccol))
    return p


def picture(rng) -> Piece:
    w, h = u(rng, 0.35, 1.0), u(rng, 0.3, 0.75)
    zc, pic, t = u(rng, 1.45, 1.7), L["picture"], 0.035
    col = jitter(rng, pick(rng, WOODS + ((30, 30, 30), (220, 200, 120))))
    p = Piece("picture").add(box((-w / 2 + t, -0.015, zc - h / 2 + t), (w / 2 - t, 0, zc + h / 2 - t), pic,
                                 jitter(rng, (200, 180, 150), 50), ART))
    for lo, hi in (((-w / 2, -0.03, zc - h / 2), (-w / 2 + t, 0, zc + h / 2)),
                   ((w / 2 - t, -0.03, zc - h / 2), (w / 2, 0, zc + h / 2)),
                   ((-w / 2 + t, -0.03, zc - h / 2), (w / 2 - t, 0, zc - h / 2 + t)),
                   ((-w / 2 + t, -0.03, zc + h / 2 - t), (w / 2 - t, 0, zc + h / 2))):
        p.add(box(lo, hi, pic, col, WOOD))
    return p


def table_with_chairs(rng, w: float, d: float, n_chairs: int, chair_fn=chair, table_fn=table) -> Piece:
    """A table with chairs around it (chairs face the table, pulled out by a few centimetres)."""
    pieces = [table_fn(rng, w, d)]
    sides = [(0, -d / 2), (180, d / 2), (-90, w / 2), (90, -w / 2)][:n_chairs]
    for yaw, off in sides:
        c = chair_fn(rng)
        lo, hi = c.bounds()
        gap = (hi[1] - lo[1]) / 2 + 0.06
        pos = {0: (0, off - gap), 180: (0, off + gap), -90: (off + gap, 0), 90: (off - gap, 0)}[yaw]
        pieces.append(transform(c, yaw + 180, (*pos, 0.0)))
    return merge("table_with_chairs", pieces)


def desk_with_chair(rng, chair_fn=chair) -> Piece:
    dk = desk(rng)
    lo, hi = dk.bounds()
    c = chair_fn(rng)
    clo, chi = c.bounds()
    y = lo[1] - (chi[1] - clo[1]) / 2 - u(rng, 0.08, 0.2)
    return merge("desk_with_chair", [dk, transform(c, 0, (u(rng, -0.2, 0.0), y, 0.0))])


def bed_with_nightstands(rng) -> Piece:
    b = bed(rng)
    lo, hi = b.bounds()
    pieces = [b]
    for sx in (-1, 1):
        n = nightstand(rng)
        nlo, nhi = n.bounds()
        x = sx * (hi[0] + 0.05 + (nhi[0] - nlo[0]) / 2)
        pieces.append(transform(n, 0, (x, hi[1] - nhi[1], 0.0)))
    return merge("bed_with_nightstands", pieces)


def sofa_with_table(rng) -> Piece:
    s = sofa(rng)
    lo, hi = s.bounds()
    tw = min(hi[0] - lo[0] - 0.4, u(rng, 0.9, 1.3))
    t = table(rng, tw, u(rng, 0.5, 0.7), h=u(rng, 0.4, 0.48))
    thi = t.bounds()[1]
    return merge("sofa_with_table", [s, transform(t, 0, (0.0, lo[1] - u(rng, 0.35, 0.5) - thi[1], 0.0))])
