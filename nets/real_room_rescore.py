"""Owns rescoring the saved reconstructions of one real-room run (`nets.real_room`, `python -m nets.eval
--real-room --real-room-out DIR`) with other weights or turns: the final label pass is rerun on each
variant's saved session, so the geometry is the same and only the labels differ
(`python -m nets.eval --real-room-rescore DIR --weights W --turns N`). Seconds instead of minutes, and a
side-by-side comparison that frame rendering and tracking cannot blur. The frames and sessions stay in
DIR, outside the repository. Functions keep no state; call them from one thread.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fusion.errors import UserError
from fusion.trajectory import read_tum
from nets.real_room import (VARIANTS, RealRoomConfig, output_to_gt, points_path, read_points, score_vertices,
                            trajectory_scores)


def relabelled_vertices(session_dir: Path, model) -> tuple[np.ndarray, np.ndarray]:
    """(final mesh vertices (N,3), their NYU40 labels) of a saved session labelled afresh by `model`."""
    from nets.adapt import relabel, scene_region
    from nets.labels import LabelStore
    from storage.session import load_session

    pipeline = load_session(session_dir).pipeline
    try:
        mesh = pipeline.final_mesh()
        store = LabelStore(model.grid)
        relabel(model, scene_region(pipeline.volume, model.grid), store)
        return np.asarray(mesh.positions_m, np.float64), store.mesh_labels(mesh)
    finally:
        pipeline.close()


def rescore_real_room(out_dir: Path, model, cfg: RealRoomConfig = RealRoomConfig(),
                      data: Path | None = None) -> dict:
    """Scores per poses mode of the reconstructions saved in `out_dir`, relabelled by `model`."""
    out_dir = Path(out_dir)
    truth = out_dir / VARIANTS["gt"] / "groundtruth.txt"
    if not truth.is_file():
        raise UserError(f"{out_dir}: not the output folder of a real-room run (no {VARIANTS['gt']}/groundtruth.txt)")
    points = read_points(points_path(data))
    _, poses_gt = read_tum(truth)
    result = {"rescored": str(out_dir), "turns": model.turns, "variants": {}}
    for mode, folder in VARIANTS.items():
        rec = out_dir / f"reconstruct_{folder}"
        if not (rec / "session").exists():
            continue
        xyz, labels = relabelled_vertices(rec / "session", model)
        T_gt_out = output_to_gt(rec / "trajectory.txt", poses_gt[0])
        result["variants"][mode] = (score_vertices(xyz, labels, points, T_gt_out, cfg)
                                    | trajectory_scores(rec / "trajectory.txt", poses_gt, T_gt_out) | {"out": str(rec)})
    if not result["variants"]:
        raise UserError(f"{out_dir}: holds no saved reconstruction (reconstruct_*/session)")
    return result
