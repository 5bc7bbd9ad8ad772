"""Owns the fusion benchmark: this pipeline vs Open3D's slam.Model loop on the same frames, same run.

Prints a table and writes bench/results/fusion.json. Run: `.venv/bin/python -m bench.fusion_bench`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402

from bench.open3d_reference import run_open3d_slam  # noqa: E402
from fusion.pipeline import FusionPipeline, PipelineConfig  # noqa: E402
from fusion.sources import open_source  # noqa: E402
from fusion.trajectory import ate_rmse_m  # noqa: E402
from fusion.volume import VolumeConfig  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
SEVEN_SCENES = ROOT.parent / "shared" / "data" / "7scenes-redkitchen-50"


def load(spec: str, max_frames: int | None):
    source = open_source(spec, max_frames=max_frames)
    frames = list(source)
    source.close()
    return frames


def run_ours(frames, voxel_m: float, mesh: bool) -> dict:
    cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=voxel_m, device="cpu"), incremental_mesh=mesh)
    pipe = FusionPipeline(cfg)
    T0 = frames[0].T_world_cam_gt
    poses, secs, mesh_ms, blocks = [], [], [], []
    for f in frames:
        t0 = time.perf_counter()
        r = pipe.process(f, T_start=T0)
        secs.append(time.perf_counter() - t0)
        poses.append(r.T_world_cam if r.T_world_cam is not None else (poses[-1] if poses else T0))
        if "mesh" in r.timings_ms:
            mesh_ms.append(r.timings_ms["mesh"])
            blocks.append(r.n_blocks)
    pipe.close()
    return {"poses": np.array(poses), "seconds_per_frame": np.array(secs), "mesh_ms": np.array(mesh_ms),
            "blocks": np.array(blocks), "failures": pipe.tracker.failures}


def summarize(name, frames, voxel_m) -> dict:
    gt = np.array([f.T_world_cam_gt for f in frames])
    ours = run_ours(frames, voxel_m, mesh=True)
    ours_nomesh = run_ours(frames, voxel_m, mesh=False)
    ref = run_open3d_slam(frames, voxel_m, gt[0])
    fps = lambda r: len(frames) / float(np.sum(r["seconds_per_frame"]))  # noqa: E731
    third = max(1, len(ours["mesh_ms"]) // 3)
    row = {
        "sequence": name, "frames": len(frames), "voxel_m": voxel_m,
        "ours_ate_mm": 1000 * ate_rmse_m(ours["poses"], gt), "open3d_ate_mm": 1000 * ate_rmse_m(ref["poses"], gt),
        "ours_fps": fps(ours), "ours_fps_no_mesh": fps(ours_nomesh), "open3d_fps": fps(ref),
        "mesh_ms_p50": float(np.percentile(ours["mesh_ms"], 50)),
        "mesh_ms_p95": float(np.percentile(ours["mesh_ms"], 95)),
        "mesh_ms_first_third": float(np.median(ours["mesh_ms"][:third])),
        "mesh_ms_last_third": float(np.median(ours["mesh_ms"][-third:])),
        "blocks_final": int(ours["blocks"][-1]) if len(ours["blocks"]) else 0,
        "tracking_failures": ours["failures"],
    }
    row["ate_ratio"] = row["ours_ate_mm"] / row["open3d_ate_mm"]
    row["fps_ratio"] = row["ours_fps"] / row["open3d_fps"]
    row["fps_ratio_no_mesh"] = row["ours_fps_no_mesh"] / row["open3d_fps"]
    return row


COLUMNS = [("sequence", "{:<14}"), ("voxel_m", "{:>6.2f}"), ("frames", "{:>5d}"), ("ours_ate_mm", "{:>8.2f}"),
           ("open3d_ate_mm", "{:>8.2f}"), ("ate_ratio", "{:>6.2f}"), ("ours_fps", "{:>6.2f}"),
           ("ours_fps_no_mesh", "{:>7.2f}"), ("open3d_fps", "{:>6.2f}"), ("fps_ratio", "{:>6.2f}"),
           ("mesh_ms_p50", "{:>7.1f}"), ("mesh_ms_p95", "{:>7.1f}"), ("mesh_ms_first_third", "{:>7.1f}"),
           ("mesh_ms_last_third", "{:>7.1f}")]


def print_table(rows) -> None:
    print(" | ".join(name for name, _ in COLUMNS))
    for r in rows:
        print(" | ".join(fmt.format(r[name]) for name, fmt in COLUMNS))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic-seed", type=int, default=7)
    p.add_argument("--synthetic-frames", type=int, default=300)
    p.add_argument("--voxels", type=float, nargs="+", default=[0.01, 0.02])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fusion.json")
    args = p.parse_args(argv)
    sequences = [(f"synthetic:{args.synthetic_seed}", load(f"synthetic:{args.synthetic_seed}", args.synthetic_frames))]
    if SEVEN_SCENES.exists():
        sequences.insert(0, ("7scenes-50", load(str(SEVEN_SCENES), None)))
    rows = [summarize(name, frames, v) for name, frames in sequences for v in args.voxels]
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
