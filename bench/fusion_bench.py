"""Owns the fusion benchmark: this pipeline vs Open3D's slam.Model loop on the same frames, side by side.

The loops take turns frame by frame (ours, ours with still frames not integrated, Open3D's), each
timed on its own, so a machine whose load changes during the run slows them alike: the ratios are
what to read. Frames are preloaded in memory. The environment is the app's (main.py): OpenMP threads
wait passively. Prints a table and writes bench/results/fusion.json.
Run: `.venv/bin/python -m bench.fusion_bench [--sequences ...] [--voxels 0.01 0.02]`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py sets it for the app

import numpy as np  # noqa: E402

from bench.open3d_reference import Open3DSlam  # noqa: E402
from fusion.pipeline import FusionPipeline, PipelineConfig  # noqa: E402
from fusion.sources import open_source  # noqa: E402
from fusion.trajectory import ate_rmse_m  # noqa: E402
from fusion.volume import VolumeConfig  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SEVEN_SCENES = SHARED / "7scenes-redkitchen-50"
REAL_SEQUENCES = ("7scenes-redkitchen-50", "7scenes-redkitchen-8-57")


def load(spec: str, max_frames: int | None):
    source = open_source(spec, max_frames=max_frames)
    frames = list(source)
    source.close()
    return frames


class _Ours:
    """Our pipeline as one of the loops taking turns."""

    def __init__(self, frames, voxel_m: float, still_voxels: float = 0.0):
        cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=voxel_m, device="cpu"), still_voxels=still_voxels)
        self.pipe, self.T0 = FusionPipeline(cfg), frames[0].T_world_cam_gt
        self.poses, self.stages, self.integrated = [], {}, 0

    def step(self, frame) -> None:
        r = self.pipe.process(frame, T_start=self.T0)
        self.poses.append(r.T_world_cam if r.T_world_cam is not None else (self.poses[-1] if self.poses else self.T0))
        self.integrated += r.integrated
        for k, v in r.timings_ms.items():
            self.stages.setdefault(k, []).append(v)

    def close(self) -> None:
        self.pipe.close()


class _Theirs:
    def __init__(self, frames, voxel_m: float):
        self.slam = Open3DSlam(frames[0].intrinsics, voxel_m, frames[0].T_world_cam_gt)
        self.poses = []

    def step(self, frame) -> None:
        self.poses.append(self.slam.step(frame))

    def close(self) -> None:
        pass


def warm_up(frames, voxel_m: float) -> None:
    """Compile the numba kernels before anything is timed."""
    ours = _Ours(frames, voxel_m)
    for f in frames[:3]:
        ours.step(f)
    ours.close()


def side_by_side(frames, voxel_m: float) -> dict:
    """Run the loops taking turns per frame; seconds per frame of each."""
    loops = {"ours": _Ours(frames, voxel_m), "still": _Ours(frames, voxel_m, still_voxels=1.0),
             "open3d": _Theirs(frames, voxel_m)}
    secs = {k: [] for k in loops}
    for f in frames:
        for name, loop in loops.items():
            t0 = time.perf_counter()
            loop.step(f)
            secs[name].append(time.perf_counter() - t0)
    for loop in loops.values():
        loop.close()
    return {"loops": loops, "secs": secs}


def summarize(name, frames, voxel_m) -> dict:
    gt = np.array([f.T_world_cam_gt for f in frames])
    warm_up(frames, voxel_m)
    run = side_by_side(frames, voxel_m)
    loops, secs = run["loops"], run["secs"]
    fps = {k: len(frames) / float(np.sum(v)) for k, v in secs.items()}
    ate = {k: 1000 * ate_rmse_m(np.array(loop.poses), gt) for k, loop in loops.items()}
    ours = loops["ours"]
    row = {"sequence": name, "frames": len(frames), "voxel_m": voxel_m,
           "ours_ate_mm": ate["ours"], "open3d_ate_mm": ate["open3d"], "still_ate_mm": ate["still"],
           "ours_fps": fps["ours"], "still_fps": fps["still"], "open3d_fps": fps["open3d"],
           "still_integrated": loops["still"].integrated,
           "stage_ms_p50": {k: round(float(np.median(v)), 1) for k, v in ours.stages.items()},
           "tracking_failures": ours.pipe.tracker.failures, "loadavg": os.getloadavg()}
    row["ate_ratio"] = row["ours_ate_mm"] / row["open3d_ate_mm"]
    row["fps_ratio"] = row["ours_fps"] / row["open3d_fps"]
    row["fps_ratio_still"] = row["still_fps"] / row["open3d_fps"]
    return row


COLUMNS = [("sequence", "{:<22}"), ("voxel_m", "{:>6.2f}"), ("frames", "{:>5d}"), ("ours_ate_mm", "{:>8.2f}"),
           ("open3d_ate_mm", "{:>8.2f}"), ("ours_fps", "{:>6.2f}"), ("open3d_fps", "{:>6.2f}"),
           ("fps_ratio", "{:>6.2f}"), ("still_ate_mm", "{:>8.2f}"), ("still_integrated", "{:>5d}"),
           ("fps_ratio_still", "{:>6.2f}")]


def print_table(rows) -> None:
    print(" | ".join(name for name, _ in COLUMNS))
    for r in rows:
        print(" | ".join(fmt.format(r[name]) for name, fmt in COLUMNS))
    for r in rows:
        print(f"{r['sequence']} {r['voxel_m']:g} m, ours per stage p50 (ms): {r['stage_ms_p50']}")


def sequences(args) -> list:
    out = [(s, load(str(SHARED / s), None)) for s in args.sequences if (SHARED / s).exists()]
    if args.synthetic_frames > 0:
        spec = f"synthetic:{args.synthetic_seed}"
        out.append((spec, load(spec, args.synthetic_frames)))
    return out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", nargs="*", default=list(REAL_SEQUENCES), help="folders under ../shared/data")
    p.add_argument("--synthetic-seed", type=int, default=7)
    p.add_argument("--synthetic-frames", type=int, default=0, help="also a synthetic room of this many frames")
    p.add_argument("--voxels", type=float, nargs="+", default=[0.01, 0.02])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fusion.json")
    args = p.parse_args(argv)
    rows = [summarize(name, frames, v) for name, frames in sequences(args) for v in args.voxels]
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
