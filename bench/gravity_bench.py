"""Owns the gravity benchmark: synthetic rooms scanned from a tilted start without ground truth or IMU.

Each room's camera path is turned so that its first camera has a random pitch (within +-pitch_deg) and
roll (within +-roll_deg); the frames are fused with tracking from scratch (no poses, so gravity comes
from the scene) and the aligned world is compared with the room's (z up, floor at z = 0): gravity
error (deg) between the true and the estimated up seen from the first camera, after the first frame
and after all frames, and the error of the floor height. Prints a table and writes
bench/results/gravity.json. Run: `.venv/bin/python -m bench.gravity_bench [--rooms 10] [--frames 60]`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402

from fusion.frame import Frame  # noqa: E402
from fusion.gravity import angle_deg  # noqa: E402
from fusion.pipeline import FusionPipeline, PipelineConfig  # noqa: E402
from fusion.sources.synthetic import SyntheticConfig, SyntheticSource  # noqa: E402
from synth.render import RenderConfig  # noqa: E402
from synth.trajectory import tilted_start  # noqa: E402
from fusion.volume import VolumeConfig  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchConfig:
    """Which rooms, how tilted, how fused."""

    rooms: int = 10                 #: synthetic rooms (seeds first_seed ...)
    first_seed: int = 0
    frames: int = 60                #: frames fused per room
    pitch_deg: float = 25.0         #: first camera pitch drawn from +-this
    roll_deg: float = 10.0          #: first camera roll drawn from +-this
    scale: float = 1.0              #: image scale of the synthetic camera (1: 640x480)
    voxel_size_m: float = 0.02      #: fusion voxel edge
    tilt_seed: int = 13             #: seed of the random tilts


def tilted_frames(seed: int, pitch_deg: float, roll_deg: float, cfg: BenchConfig) -> tuple[list, np.ndarray]:
    """(frames without poses, true poses) of room `seed` with a tilted start."""
    synth = SyntheticConfig(render=RenderConfig(intrinsics=RenderConfig().intrinsics.scaled(cfg.scale)))
    src = SyntheticSource(seed, n_frames=cfg.frames, config=synth)
    poses = tilted_start(src.poses, pitch_deg, roll_deg)
    frames = []
    for i, T in enumerate(poses):
        r = src.renderer().render(T, seed, i)
        frames.append(Frame(r.color, r.depth_m, src.intrinsics, i / src.fps, i))
    src.close()
    return frames, poses


def up_in_camera(T_world_cam: np.ndarray) -> np.ndarray:
    return T_world_cam[:3, :3].T @ np.array([0.0, 0, 1])


def run_room(seed: int, pitch_deg: float, roll_deg: float, cfg: BenchConfig) -> dict:
    frames, gt = tilted_frames(seed, pitch_deg, roll_deg, cfg)
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=cfg.voxel_size_m, device="cpu")))
    t0 = time.perf_counter()
    try:
        results = [pipe.process(f) for f in frames]
        pipe.settle_gravity()
    finally:
        pipe.close()
    wall_s = time.perf_counter() - t0
    T_first = pipe.gravity.restate(0, results[0].T_world_cam)
    rep = pipe.gravity.report()
    true_up = up_in_camera(gt[0])
    gms = [r.timings_ms.get("gravity", 0.0) for r in results]
    return {"seed": seed, "pitch_deg": round(pitch_deg, 2), "roll_deg": round(roll_deg, 2),
            "prior_error_deg": round(angle_deg(true_up, np.array([0.0, -1, 0])), 2),
            "first_frame_error_deg": round(angle_deg(true_up, up_in_camera(results[0].T_world_cam)), 3),
            "gravity_error_deg": round(angle_deg(true_up, up_in_camera(T_first)), 3),
            "floor_error_m": round(float(T_first[2, 3] - gt[0][2, 3]), 4),
            "integrated": int(sum(r.integrated for r in results)), "wall_s": round(wall_s, 1),
            "gravity_ms_max": round(max(gms), 1), "gravity_ms_total": round(sum(gms), 1)} | rep.to_dict()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in ("rooms", "first_seed", "frames", "pitch_deg", "roll_deg", "scale", "voxel_size_m"):
        default = getattr(BenchConfig, f)
        ap.add_argument("--" + f.replace("_", "-"), type=type(default), default=default)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = BenchConfig(**{k: v for k, v in vars(args).items()})
    rng = np.random.default_rng(cfg.tilt_seed)
    rows = []
    print(f"{'seed':>4} {'pitch':>6} {'roll':>6} {'prior':>6} {'first':>6} {'final':>6} {'floor_m':>8} "
          f"{'method':>7} {'conf':>5} {'settled':>7} {'rebuilds':>8} {'gravity ms':>10}")
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.rooms):
        pitch, roll = rng.uniform(-cfg.pitch_deg, cfg.pitch_deg), rng.uniform(-cfg.roll_deg, cfg.roll_deg)
        r = run_room(seed, pitch, roll, cfg)
        rows.append(r)
        print(f"{seed:>4} {pitch:>6.1f} {roll:>6.1f} {r['prior_error_deg']:>6.1f} {r['first_frame_error_deg']:>6.2f} "
              f"{r['gravity_error_deg']:>6.2f} {r['floor_error_m']:>8.3f} {r['method']:>7} {r['confidence']:>5.2f} "
              f"{str(r['settled_frame']):>7} {r['rebuilds']:>8} {r['gravity_ms_total']:>10.0f}", flush=True)
    err = np.array([r["gravity_error_deg"] for r in rows])
    floor = np.abs([r["floor_error_m"] for r in rows])
    summary = {"gravity_error_deg": {"mean": round(float(err.mean()), 3), "median": round(float(np.median(err)), 3),
                                     "max": round(float(err.max()), 3)},
               "floor_error_m": {"median": round(float(np.median(floor)), 4), "max": round(float(floor.max()), 4)},
               "within_2deg": int((err <= 2.0).sum()), "rooms": len(rows)}
    print(f"gravity error: mean {err.mean():.2f} deg, median {np.median(err):.2f}, max {err.max():.2f} "
          f"({summary['within_2deg']}/{len(rows)} rooms within 2 deg); floor error median {np.median(floor):.3f} m, "
          f"max {floor.max():.3f} m")
    out = ROOT / "bench" / "results" / "gravity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": asdict(cfg), "summary": summary, "rooms": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
