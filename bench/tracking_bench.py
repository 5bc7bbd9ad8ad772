"""Owns the tracking benchmark: ATE, frames integrated, losses and relocalisations of this pipeline's
tracker against Open3D's slam.Model loop on the same frames in the same run, on the real shared
sequences and a synthetic room, at full rate and at every k-th frame (fast motion).

ATE counts every frame: a frame our tracker rejects holds the last accepted pose, as in the written
trajectory. `*_length` is the size of each path relative to the ground truth's (scale-fitted; below 1:
motion shrunk). Prints a table and writes bench/results/tracking.json.
Run: `.venv/bin/python -m bench.tracking_bench [--strides 1 3 6 10] [--voxel-size 0.01] [--extra SRC ...]`.
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

from bench.fusion_bench import load  # noqa: E402
from bench.open3d_reference import run_open3d_slam  # noqa: E402
from fusion.pipeline import FusionPipeline, PipelineConfig  # noqa: E402
from fusion.trajectory import ate_rmse_m  # noqa: E402
from fusion.volume import VolumeConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
REAL = {"7scenes-150-199": SHARED / "7scenes-redkitchen-50", "7scenes-8-57": SHARED / "7scenes-redkitchen-8-57"}


def length_ratio(est_poses: np.ndarray, gt_poses: np.ndarray) -> float:
    """Size of the estimated path relative to the ground truth's: the inverse of the scale that best fits
    it onto the ground truth (Umeyama); below 1 the estimate is too short (motion shrunk)."""
    a, b = est_poses[:, :3, 3], gt_poses[:, :3, 3]
    A, B = a - a.mean(0), b - b.mean(0)
    U, S, Vt = np.linalg.svd(A.T @ B)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    scale = (S[0] + S[1] + d * S[2]) / max(float((A ** 2).sum()), 1e-12)
    return float(1.0 / scale) if scale > 0 else float("nan")


def run_ours(frames, voxel_m: float) -> dict:
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=voxel_m, device="cpu"),
                                         incremental_mesh=False))
    T0 = frames[0].T_world_cam_gt
    poses, secs, integrated = [], [], 0
    for f in frames:
        t0 = time.perf_counter()
        r = pipe.process(f, T_start=T0)
        secs.append(time.perf_counter() - t0)
        integrated += r.integrated
        poses.append(r.T_world_cam if r.T_world_cam is not None else poses[-1])
    pipe.close()
    tr = pipe.tracker
    return {"poses": np.array(poses), "s_per_frame": float(np.mean(secs)), "integrated": integrated,
            "losses": tr.losses, "relocalisations": tr.relocalisations, "keyframes": len(tr.relocaliser.keyframes)}


def row(name: str, frames, stride: int, voxel_m: float) -> dict:
    frames = frames[::stride]
    gt = np.array([f.T_world_cam_gt for f in frames])
    ours = run_ours(frames, voxel_m)
    ref = run_open3d_slam(frames, voxel_m, gt[0])
    steps = [np.linalg.norm(gt[i, :3, 3] - gt[i - 1, :3, 3]) for i in range(1, len(gt))]
    out = {"sequence": name, "stride": stride, "frames": len(frames), "voxel_m": voxel_m,
           "step_median_cm": round(100 * float(np.median(steps)), 1), "step_max_cm": round(100 * float(np.max(steps)), 1),
           "ours_ate_mm": round(1000 * ate_rmse_m(ours["poses"], gt), 2),
           "open3d_ate_mm": round(1000 * ate_rmse_m(ref["poses"], gt), 2),
           "ours_length": round(length_ratio(ours["poses"], gt), 3),
           "open3d_length": round(length_ratio(ref["poses"], gt), 3),
           "integrated": ours["integrated"], "losses": ours["losses"], "relocalisations": ours["relocalisations"],
           "ours_ms": round(1000 * ours["s_per_frame"], 1), "open3d_ms": round(1000 * float(np.mean(ref["seconds_per_frame"])), 1)}
    out["ate_ratio"] = round(out["ours_ate_mm"] / out["open3d_ate_mm"], 3)
    return out


COLUMNS = ("sequence", "stride", "frames", "step_median_cm", "step_max_cm", "ours_ate_mm", "open3d_ate_mm",
           "ate_ratio", "ours_length", "open3d_length", "integrated", "losses", "relocalisations", "ours_ms", "open3d_ms")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.ERROR)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strides", type=int, nargs="+", default=[1, 3, 6, 10])
    p.add_argument("--voxel-size", type=float, default=0.01)
    p.add_argument("--synthetic-seed", type=int, default=7)
    p.add_argument("--synthetic-frames", type=int, default=300)
    p.add_argument("--extra", nargs="*", default=[], metavar="SRC",
                   help="more sources with ground-truth poses, e.g. the real ScanNet room's hand-held frames "
                        "that `python -m nets.eval --real-room --real-room-out DIR` writes to DIR/posed")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tracking.json")
    args = p.parse_args(argv)
    sequences = {name: load(str(path), None) for name, path in REAL.items() if path.exists()}
    sequences[f"synthetic:{args.synthetic_seed}"] = load(f"synthetic:{args.synthetic_seed}", args.synthetic_frames)
    sequences |= {spec: load(spec, None) for spec in args.extra}
    rows = []
    print(" | ".join(COLUMNS))
    for name, frames in sequences.items():
        for stride in args.strides:
            rows.append(row(name, frames, stride, args.voxel_size))
            print(" | ".join(str(rows[-1][c]) for c in COLUMNS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
