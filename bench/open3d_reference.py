"""Owns the reference: Open3D's own t.pipelines.slam.Model loop (track, integrate, synthesize)."""
from __future__ import annotations

import time

import numpy as np
import open3d as o3d
import open3d.core as o3c


def run_open3d_slam(frames, voxel_size_m: float, T0: np.ndarray, depth_max_m: float = 4.0,
                    trunc_voxels: float = 5.0) -> dict:
    """Run Open3D's frame-to-model loop on `frames`; returns poses (N,4,4) and seconds per frame."""
    device = o3c.Device("CPU:0")
    first = frames[0]
    K = o3c.Tensor(first.intrinsics.matrix(), o3c.float64)
    h, w = first.depth_m.shape
    model = o3d.t.pipelines.slam.Model(voxel_size_m, 16, 40000, o3c.Tensor(T0), device)
    inp = o3d.t.pipelines.slam.Frame(h, w, K, device)
    ray = o3d.t.pipelines.slam.Frame(h, w, K, device)
    T = o3c.Tensor(T0)
    poses, times = [], []
    for i, f in enumerate(frames):
        t0 = time.perf_counter()
        inp.set_data_from_image("depth", o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.depth_m))))
        inp.set_data_from_image("color", o3d.t.geometry.Image(o3c.Tensor(f.color.astype(np.float32) / 255)))
        if i > 0:
            try:
                res = model.track_frame_to_model(inp, ray, 1.0, depth_max_m, 0.07)
                T = T @ res.transformation
            except RuntimeError:
                pass
        model.update_frame_pose(i, T)
        model.integrate(inp, 1.0, depth_max_m, trunc_voxels)
        model.synthesize_model_frame(ray, 1.0, 0.1, depth_max_m, trunc_voxels, False)
        times.append(time.perf_counter() - t0)
        poses.append(T.cpu().numpy().copy())
    return {"poses": np.array(poses), "seconds_per_frame": np.array(times)}
