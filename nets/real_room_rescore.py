"""Owns rescoring the saved reconstructions of one real-room run (`nets.real_room`, `python -m nets.eval
--real-room --real-room-out DIR`) with other weights or turns: the final label pass is rerun on each
variant's saved session, so the geometry is the same and only the labels differ
(`python -m nets.eval --real-room-rescore DIR --weights W --turns N`). Seconds instead of minutes, and a
side-by-side comparison that frame rendering and tracking cannot blur. The frames and sessions stay in
DIR, outside the repository. Functions keep no state; call them from one thread.

The nets' scores move with where the scan falls on their pooling grid (the weights shipped on 2026-12-02
score the real room's ground-truth-pose scan 0.325-0.352 across four sideways shifts), so `phases` > 1 also relabels the scan
shifted sideways by whole cells (`PHASE_SHIFTS_CELLS`, the labels read back where the mesh was shifted
to) and reports each shift's mIoU and their mean: weights compared on the mean are compared on the
net, not on one grid phase.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fusion.errors import UserError
from fusion.trajectory import read_tum
from nets.real_room import (VARIANTS, RealRoomConfig, output_to_gt, points_path, read_points, score_vertices,
                            trajectory_scores)


#: sideways shifts (whole cells) of the extra grid phases, in order; the first is the scan as it is
PHASE_SHIFTS_CELLS = ((0, 0, 0), (1, 2, 0), (2, 1, 0), (3, 3, 0))


def relabelled_vertices(session_dir: Path, model, phases: int = 1) -> tuple[np.ndarray, list]:
    """(final mesh vertices (N,3), [their NYU40 labels for each of the first `phases` shifts]) of a saved
    session labelled afresh by `model`."""
    from nets.adapt import relabel, scene_region
    from nets.labels import LabelStore
    from storage.session import load_session

    pipeline = load_session(session_dir).pipeline
    try:
        mesh = pipeline.final_mesh()
        region = scene_region(pipeline.volume, model.grid)
        labels = []
        for shift in np.asarray(PHASE_SHIFTS_CELLS[:phases], np.int32):
            store = LabelStore(model.grid)
            relabel(model, replace(region, coords=region.coords + shift), store)
            moved = replace(mesh, positions_m=mesh.positions_m + (shift * model.grid.voxel_size_m).astype(np.float32))
            labels.append(store.mesh_labels(moved))
        return np.asarray(mesh.positions_m, np.float64), labels
    finally:
        pipeline.close()


def rescore_real_room(out_dir: Path, model, cfg: RealRoomConfig = RealRoomConfig(),
                      data: Path | None = None, phases: int = 1) -> dict:
    """Scores per poses mode of the reconstructions saved in `out_dir`, relabelled by `model`; with
    `phases` > 1, each variant also has `phase_miou` (one per shift) and `phase_miou_mean`."""
    if not 1 <= phases <= len(PHASE_SHIFTS_CELLS):
        raise UserError(f"phases {phases}: expected 1..{len(PHASE_SHIFTS_CELLS)}")
    out_dir = Path(out_dir)
    truth = out_dir / VARIANTS["gt"] / "groundtruth.txt"
    if not truth.is_file():
        raise UserError(f"{out_dir}: not the output folder of a real-room run (no {VARIANTS['gt']}/groundtruth.txt)")
    points = read_points(points_path(data))
    _, poses_gt = read_tum(truth)
    result = {"rescored": str(out_dir), "turns": model.turns, "phases": phases, "variants": {}}
    for mode, folder in VARIANTS.items():
        rec = out_dir / f"reconstruct_{folder}"
        if not (rec / "session").exists():
            continue
        xyz, labels = relabelled_vertices(rec / "session", model, phases)
        T_gt_out = output_to_gt(rec / "trajectory.txt", poses_gt[0])
        scores = [score_vertices(xyz, one, points, T_gt_out, cfg) for one in labels]
        result["variants"][mode] = (scores[0] | trajectory_scores(rec / "trajectory.txt", poses_gt, T_gt_out)
                                    | {"out": str(rec)})
        if phases > 1:
            result["variants"][mode] |= {"phase_miou": [s["miou"] for s in scores],
                                         "phase_miou_mean": float(np.mean([s["miou"] for s in scores]))}
    if not result["variants"]:
        raise UserError(f"{out_dir}: holds no saved reconstruction (reconstruct_*/session)")
    return result
