"""Owns the accuracy benchmark: model-depth error of our raycaster vs Open3D's ray_cast, the effect of
the half-pixel integration correction, and the synthetic renderer's time per frame.

Prints a table and writes bench/results/accuracy.json. Run: `.venv/bin/python -m bench.accuracy_bench`.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402
import open3d.core as o3c  # noqa: E402

import fusion.volume as volume_module  # noqa: E402
from bench.fusion_bench import SEVEN_SCENES, load  # noqa: E402
from fusion.pipeline import FusionPipeline, PipelineConfig  # noqa: E402
from fusion.sources.synthetic import SyntheticConfig, SyntheticSource  # noqa: E402
from synth.render import RenderConfig  # noqa: E402
from fusion.trajectory import ate_rmse_m  # noqa: E402
from fusion.volume import TsdfVolume, VolumeConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOXEL_M = 0.01


@contextmanager
def integration_correction(enabled: bool):
    """Run with or without the half-pixel principal-point correction of fusion.volume."""
    original = volume_module.integration_matrix
    if not enabled:
        volume_module.integration_matrix = lambda intrinsics: intrinsics.matrix()
    try:
        yield
    finally:
        volume_module.integration_matrix = original


def percentiles_mm(err_m: np.ndarray) -> dict:
    return {f"p{p}": round(float(np.percentile(err_m, p)) * 1000, 2) for p in (10, 50, 90)}


def open3d_depth(vol: TsdfVolume, T_world_cam, intr) -> np.ndarray:
    cfg = vol.config
    out = vol.grid.ray_cast(
        block_coords=o3c.Tensor(vol.active_keys()), intrinsic=o3c.Tensor(intr.matrix()),
        extrinsic=o3c.Tensor(np.linalg.inv(T_world_cam)), width=intr.width, height=intr.height,
        render_attributes=["depth"], depth_scale=1.0, depth_min=cfg.depth_min_m, depth_max=cfg.depth_max_m,
        weight_threshold=1.0, trunc_voxel_multiplier=float(cfg.trunc_voxels), range_map_down_factor=8)
    return out["depth"].numpy()[..., 0]


def depth_errors(source: SyntheticSource) -> dict:
    """Rendered model depth minus exact depth, after fusing the first frame seen from its own pose."""
    frame = source.frame(0)
    truth = source.renderer().clean_depth(frame.T_world_cam_gt)
    rows = {}
    for corrected in (True, False):
        with integration_correction(corrected):
            vol = TsdfVolume(VolumeConfig(voxel_size_m=VOXEL_M, device="cpu"))
            vol.integrate(frame, frame.T_world_cam_gt)
        for name, depth in (("ours", vol.render_depth(frame.T_world_cam_gt, frame.intrinsics)),
                            ("open3d ray_cast", open3d_depth(vol, frame.T_world_cam_gt, frame.intrinsics))):
            valid = (depth > 0) & (truth > 0)
            rows[f"{name}, correction {'on' if corrected else 'off'}"] = percentiles_mm((depth - truth)[valid])
    return rows


def tracking_ate_mm(frames, corrected: bool) -> float:
    with integration_correction(corrected):
        pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=VOXEL_M, device="cpu"),
                                             incremental_mesh=False))
        gt = np.array([f.T_world_cam_gt for f in frames])
        poses = [pipe.process(f, T_start=gt[0]).T_world_cam for f in frames]
        pipe.close()
    poses = [p if p is not None else gt[0] for p in poses]
    return round(1000 * ate_rmse_m(np.array(poses), gt), 2)


def render_ms(source: SyntheticSource, n: int = 30) -> dict:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        source.frame(i)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50": round(float(np.median(times[1:])), 1), "p95": round(float(np.percentile(times[1:], 95)), 1)}


def main() -> int:
    exact = SyntheticSource(7, n_frames=30, config=SyntheticConfig(render=RenderConfig(noise=False)))
    result = {"voxel_m": VOXEL_M, "model_depth_error_mm": depth_errors(exact), "ate_mm": {}}
    sequences = {"synthetic:7 exact, 30 frames": list(exact)}
    if SEVEN_SCENES.exists():
        sequences["7scenes-50"] = load(str(SEVEN_SCENES), None)
    for name, frames in sequences.items():
        result["ate_mm"][name] = {f"correction {'on' if c else 'off'}": tracking_ate_mm(frames, c) for c in (True, False)}
    result["synthetic_render_ms"] = render_ms(SyntheticSource(7, n_frames=31))
    print(f"model depth minus exact depth, mm, one exact frame fused at {VOXEL_M} m:")
    for name, p in result["model_depth_error_mm"].items():
        print(f"  {name:<34} p10 {p['p10']:>7.2f}  p50 {p['p50']:>6.2f}  p90 {p['p90']:>6.2f}")
    print("tracking ATE (mm):")
    for name, row in result["ate_mm"].items():
        print(f"  {name:<34} " + "  ".join(f"{k}: {v}" for k, v in row.items()))
    print(f"synthetic render, 640x480 with noise: {result['synthetic_render_ms']} ms")
    out = ROOT / "bench" / "results" / "accuracy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
