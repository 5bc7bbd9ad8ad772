"""Owns corrections as data: reading a corrections file (`relabel --corrections FILE.json`), checking
every entry, and turning one correction (a point, a class, region or brush) into label-store cells, the
same way for the command line and the app.

A file is a JSON list, applied in order; each entry is
    {"point_m": [x, y, z], "label": NYU40 id, "mode": "region" | "brush", "radius_m": 0.15}
(`radius_m` is optional and used by `brush` only). A bad file is refused with one line naming the entry.
Pure functions; the store they correct is thread-safe.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fusion.classes import CLASSES
from fusion.errors import UserError
from nets.cells import pack_cells

MODES = ("region", "brush")
KEYS = ("point_m", "label", "mode", "radius_m")


@dataclass(frozen=True)
class CorrectionSpec:
    """One correction of a file (immutable). `entry` is its 1-based position in the file."""

    point_m: tuple
    label: int
    mode: str = "region"
    radius_m: float = 0.15
    entry: int = 0


def _entry(i: int, n: int, item) -> CorrectionSpec:
    where = f"entry {i} of {n}"
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object with point_m, label and mode")
    unknown = sorted(set(item) - set(KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(KEYS)})")
    for key in ("point_m", "label", "mode"):
        if key not in item:
            raise ValueError(f"{where}: {key} is missing")
    p = item["point_m"]
    if not (isinstance(p, list) and len(p) == 3 and all(_number(v) for v in p)):
        raise ValueError(f"{where}: point_m must be [x, y, z] in metres, got {json.dumps(p)}")
    label = item["label"]
    if isinstance(label, bool) or not isinstance(label, int) or label not in CLASSES:
        raise ValueError(f"{where}: label {json.dumps(label)} is not a ScanNet-20 NYU40 id "
                         f"({', '.join(str(c) for c in CLASSES)})")
    mode = item["mode"]
    if mode not in MODES:
        raise ValueError(f"{where}: mode {json.dumps(mode)} is not \"region\" or \"brush\"")
    radius = item.get("radius_m", CorrectionSpec.radius_m)
    if not _number(radius) or not 0 < radius <= 5:
        raise ValueError(f"{where}: radius_m must be metres in (0, 5], got {json.dumps(radius)}")
    return CorrectionSpec(tuple(float(v) for v in p), int(label), mode, float(radius), i)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_corrections(text: str, name: str = "corrections") -> list[CorrectionSpec]:
    """The corrections of a file's text; UserError (one line naming the entry) when anything is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(doc, list):
        raise UserError(f"{name}: expected a JSON list of corrections, got {type(doc).__name__}")
    if not doc:
        raise UserError(f"{name}: the list of corrections is empty")
    try:
        return [_entry(i + 1, len(doc), item) for i, item in enumerate(doc)]
    except ValueError as exc:
        raise UserError(f"{name}, {exc}") from None


def read_corrections(path: Path | str) -> list[CorrectionSpec]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such corrections file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({type(exc).__name__})") from None
    return parse_corrections(text, str(path))


def region_cells(store, point_m, max_cells: int, label: int | None = None) -> np.ndarray:
    """The region tool: the connected cells of the label under `point_m` (empty: nothing labelled there); with the
    `label` they are being set to, only those the nets find about as likely to be it as the clicked cell
    (`LabelView.connected_region`)."""
    return store.connected_region(np.asarray(point_m, np.float64), max_cells=max_cells, toward=label)


def brush_cells(store, center_m, radius_m: float, surface_near: Callable | None = None) -> np.ndarray:
    """The brush: stored cells within `radius_m` plus the cells of surface points within it
    (`surface_near(center, radius)` -> (N,3) points; unlabelled surface gets painted too), each once."""
    center = np.asarray(center_m, np.float64)
    stored = store.brush(center, radius_m).reshape(-1, 3)
    surface = np.zeros((0, 3))
    if surface_near is not None:
        surface = np.asarray(surface_near(center, radius_m), np.float64).reshape(-1, 3)
    cells = np.concatenate([stored, store.cells_at(surface).reshape(-1, 3)]).astype(np.int32)
    if not len(cells):
        return cells
    _, first = np.unique(pack_cells(cells), return_index=True)
    return cells[np.sort(first)]


def apply_corrections(store, specs: list[CorrectionSpec], name: str, surface_near: Callable | None = None,
                      max_region_cells: int = 100_000) -> list:
    """Apply the corrections in order (a later one wins on cells it shares with an earlier one); returns
    the store's Correction records. UserError naming the entry whose point is not on the scan."""
    done = []
    for spec in specs:
        if spec.mode == "region":
            cells = region_cells(store, spec.point_m, max_region_cells, spec.label)
            why = "no labelled surface there"
        else:
            cells = brush_cells(store, spec.point_m, spec.radius_m, surface_near)
            why = f"no scanned surface within radius_m {spec.radius_m:g}"
        if not len(cells):
            raise UserError(f"{name}, entry {spec.entry} of {len(specs)}: point_m {list(spec.point_m)} is outside "
                            f"the scan ({why})")
        done.append(store.correct(cells, spec.label))
    return done
