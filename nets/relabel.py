"""Owns headless relabeling (`main.py relabel SESSION --corrections FILE.json --out DIR`): apply a file of
corrections to a saved session, learn from them (`nets.adapt`, the app's code), relabel the scene and write
`mesh.ply` (+ the other mesh exports and `labels.json`), `session` (labels, corrections and adapted weights)
and `weights.pt` (the adapted weights, usable with `reconstruct --weights`).

Everything the user gave is checked before anything is written: the corrections file (every entry),
the output folder, the session, and every correction's point (applied in order, in memory). Each output
file is written atomically. Runs on the calling thread.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusion.errors import UserError
from nets.adapt import AdaptConfig, CorrectionLearner, relabel, scene_region
from nets.corrections_file import apply_corrections, read_corrections
from nets.turns import FINAL_TURNS
from nets.labels import LabelStore, has_label_arrays
from nets.session_weights import EXTRA_NAME, weights_array, write_weights_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelabelRequest:
    session: Path
    corrections: Path
    out_dir: Path
    weights: Path | None = None       #: base (anchor) weights; None: the shipped ones
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    progress: bool = True


def check_out_dir(out: Path) -> Path:
    """An output folder that exists and is writable, or whose parent is (it is created later)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    folder = out if out.is_dir() else out.parent
    if not folder.is_dir():
        raise UserError(f"--out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: folder {folder} is not writable")
    return out


def _surface_near(positions_m: np.ndarray):
    from scipy.spatial import cKDTree

    tree = cKDTree(positions_m)

    def near(center, radius_m):
        return positions_m[tree.query_ball_point(np.asarray(center, float), radius_m)]
    return near


def _progress(enabled: bool, budget_s: float):
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=round(budget_s), desc="learning", unit="s", leave=False)

    def update(steps: int, elapsed_s: float) -> None:
        bar.n = min(round(elapsed_s), bar.total)
        bar.set_postfix(steps=steps, refresh=True)
    return bar, update


def run_relabel(req: RelabelRequest) -> dict:
    """The whole command; returns a summary. UserError (one line) for anything wrong in the input."""
    from nets.infer import ChunkModel
    from storage.session import load_session

    name = str(req.corrections)
    specs = read_corrections(req.corrections)
    out = check_out_dir(req.out_dir)
    base = ChunkModel.load(req.weights)
    session = load_session(req.session)
    pipeline = session.pipeline
    try:
        region = scene_region(pipeline.volume, base.grid)
        mesh = pipeline.final_mesh()
        store = _store(session.extras, base, region)
        apply_corrections(store, specs, name, _surface_near(np.asarray(mesh.positions_m, np.float64)))
        learner = CorrectionLearner(base, req.adapt)
        bar, update = _progress(req.progress, req.adapt.budget_s)
        try:
            result = learner.learn(region, store, progress=update)
        finally:
            if bar is not None:
                bar.close()
        summary = _write(out, req, session, mesh, store, learner)
    finally:
        pipeline.close()
    return summary | {"corrections": len(specs), "steps": result.steps, "learn_s": round(result.learn_s, 2),
                      "relabel_s": round(result.relabel_s, 2), "corrected_cells": result.corrected_cells,
                      "adapted": result.adapted}


def _store(extras: dict, base, region) -> LabelStore:
    """The session's labels (with its corrections); a session saved without labels is labeled first."""
    if has_label_arrays(extras):
        try:
            return LabelStore.from_arrays(extras, base.grid)
        except ValueError as exc:
            raise UserError(f"the session's labels cannot be read: {exc}") from None
    log.info("the session holds no labels: labeling it with the base weights first")
    store = LabelStore(base.grid)
    relabel(base.with_turns(FINAL_TURNS), region, store)
    return store


def _write(out: Path, req: RelabelRequest, session, mesh, store: LabelStore, learner: CorrectionLearner) -> dict:
    from storage.export import LabeledMesh, export_mesh
    from storage.session import save_session

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    labels = store.mesh_labels(mesh)
    written = export_mesh(out / "mesh.ply", LabeledMesh.from_mesh(mesh, labels), session.timestamps_s, session.poses)
    meta = {"adapted_from": str(req.weights or "shipped"), "corrected_cells": learner.last.corrected_cells,
            "steps": learner.last.steps}
    blob = weights_array(learner.model, meta)
    written.append(write_weights_file(out / "weights.pt", blob))
    extras = {k: v for k, v in session.extras.items() if not k.startswith("labels_") and k != EXTRA_NAME}
    extras |= store.to_arrays() | ({EXTRA_NAME: blob} if learner.adapted else {})
    settings = dict(session.settings) | {"relabel": {"corrections": str(req.corrections)}}
    save_session(out / "session", session.pipeline, session.timestamps_s, session.poses, session.source, settings,
                 extras)
    written.append(out / "session")
    log.info("wrote %s in %.1f s", ", ".join(p.name for p in written), time.perf_counter() - t0)
    return {"written": [str(p) for p in written], "vertices": int(len(labels))}
