"""Labels after loop closure: how well stored label cells (user corrections) follow a map correction.

A looping synthetic scan (room SEED, every STRIDE-th of FRAMES frames, fused with `--poses gt` from odometry
that turns `--yaw-deg-per-m`, loop closure on) is labelled by the (untrained) nets at frame `--paint-at`,
before the loop closes, and every labelled cell is corrected by the user. When the scan ends and every
map correction has landed, the corrected cells are compared with the corrected map's surface (the coarse
sites of its volume): the share of cells within one cell of it, as the label store moved them (through
the incremental labeler: each cell with the keyframe whose view centre is nearest, resampled), left
unmoved, and moved with the keyframe whose camera is nearest. Also the cells kept and how long the
store took to follow. Prints a table and writes bench/results/loop_labels.json.

    python -m bench.loop_labels_bench [--seed 0] [--frames 180] [--stride 2] [--paint-at 50]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from bench.drift import drifted_poses
from fusion.coarse import CoarseGridConfig, all_chunk_keys, coarse_region
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.sources.synthetic import SyntheticSource
from fusion.volume import VolumeConfig
from loopclosure.config import LoopClosureConfig
from loopclosure.detect import LoopDetectConfig
from nets.incremental import IncrementalLabeler
from nets.infer import ChunkModel
from nets.labels import LabelStore

OUT = Path(__file__).resolve().parent / "results" / "loop_labels.json"
GRID = CoarseGridConfig()
CHAIR = 5


def _frames(seed: int, n: int, stride: int, yaw_deg_per_m: float) -> list:
    src = SyntheticSource(seed, n_frames=n)
    idx = np.arange(0, n, stride)
    odo = drifted_poses(src.poses[idx], yaw_deg_per_m, 0.0)
    return [dataclasses.replace(src.frame(int(i)), index=k, timestamp_s=k / 15.0, T_world_cam_gt=odo[k])
            for k, i in enumerate(idx)]


def _surface(pipeline: FusionPipeline) -> cKDTree:
    region = coarse_region(pipeline.volume, sorted(all_chunk_keys(pipeline.volume, GRID)), GRID, halo_voxels=0)
    return cKDTree(region.coords)


def _row(name: str, store: LabelStore, surface: cKDTree, painted: int, follow_s: float | None = None) -> dict:
    a = store.to_arrays()
    cells = a["labels_coords"][a["labels_corrected"] == CHAIR]
    dist, _ = surface.query(cells)
    return {"cells": name, "kept": round(len(cells) / max(painted, 1), 3),
            "on_surface": round(float(np.mean(dist <= np.sqrt(3) + 1e-6)), 3),
            "mean_cells": round(float(dist.mean()), 2), "follow_ms": None if follow_s is None else round(follow_s * 1e3)}


def _camera_moves(events) -> list:
    return [e.camera_transforms for e in events]


def run(args) -> dict:
    frames = _frames(args.seed, args.frames, args.stride, args.yaw_deg_per_m)
    loop = LoopClosureConfig(enabled=True, worker_duty=1.0, detect=LoopDetectConfig(min_age_keyframes=6, min_walk_m=2.5))
    p = FusionPipeline(PipelineConfig(poses="gt", volume=VolumeConfig(voxel_size_m=0.02, initial_blocks=1000), loop=loop))
    try:
        labeler = IncrementalLabeler(p, ChunkModel.untrained(seed=0))
        for k, f in enumerate(frames):
            p.process(f)
            if k == args.paint_at:
                labeler.step()
                before = LabelStore.from_arrays(labeler.labels.to_arrays())
                labeler.labels.correct(labeler.labels.cells()[0], CHAIR)
                before.correct(before.cells()[0], CHAIR)
        assert p.finish_loops(600.0), "loop closure did not finish"
        events = list(p.loops.events)
        labeler.step()
        painted, surface = len(before), _surface(p)
        timed = LabelStore.from_arrays(before.to_arrays())
        t0 = time.perf_counter()
        timed.follow([e.surface_transforms for e in events])
        follow_s = time.perf_counter() - t0
        by_camera = LabelStore.from_arrays(before.to_arrays())
        by_camera.follow(_camera_moves(events))
        rows = [_row("moved by the store (view centres)", labeler.labels, surface, painted, follow_s),
                _row("left unmoved", before, surface, painted),
                _row("moved with the nearest camera", by_camera, surface, painted)]
    finally:
        p.close()
    return {"seed": args.seed, "frames": len(frames), "corrections": len(events), "painted_cells": painted,
            "max_shift_m": round(max((e.max_shift_m for e in events), default=0.0), 3), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=180)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--yaw-deg-per-m", type=float, default=3.0)
    ap.add_argument("--paint-at", type=int, default=50, help="frame (of the strided scan) when every cell is corrected")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = run(args)
    print(f"synthetic:{out['seed']}, {out['frames']} frames, {out['corrections']} map corrections "
          f"(largest keyframe move {out['max_shift_m'] * 100:.1f} cm), {out['painted_cells']} corrected cells")
    print(f"{'corrected cells':36s} {'kept':>6s} {'within 1 cell of the surface':>29s} {'mean dist (cells)':>18s} {'follow ms':>10s}")
    for r in out["rows"]:
        print(f"{r['cells']:36s} {r['kept']:6.3f} {r['on_surface']:29.3f} {r['mean_cells']:18.2f} "
              f"{'' if r['follow_ms'] is None else r['follow_ms']:>10}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
