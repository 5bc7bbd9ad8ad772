"""Owns the reference: Open3D's own t.pipelines.slam.Model loop (track, integrate, synthesize).

`Open3DSlam` takes one frame at a time (the live benchmark feeds it from the camera's newest-only
slot); `run_open3d_slam` runs it over a list of frames. Thread: whoever created it.
"""
from __future__ import annotations

import time

import numpy as np
import open3d as o3d
import open3d.core as o3c


class Open3DSlam:
    """Open3D's frame-to-model loop, one `step(frame) -> T_world_cam` at a time (CPU)."""

    def __init__(self, intrinsics, voxel_size_m: float, T0: np.ndarray, depth_max_m: float = 4.0,
                 trunc_voxels: float = 5.0, block_count: int = 40000):
        self.device = o3c.Device("CPU:0")
        self.depth_max_m, self.trunc_voxels = depth_max_m, trunc_voxels
        K = o3c.Tensor(intrinsics.matrix(), o3c.float64)
        h, w = intrinsics.height, intrinsics.width
        self.model = o3d.t.pipelines.slam.Model(voxel_size_m, 16, block_count, o3c.Tensor(np.asarray(T0, float)),
                                                self.device)
        self.inp = o3d.t.pipelines.slam.Frame(h, w, K, self.device)
        self.ray = o3d.t.pipelines.slam.Frame(h, w, K, self.device)
        self.T = o3c.Tensor(np.asarray(T0, float))
        self.count = 0
        self.failures = 0

    def step(self, frame) -> np.ndarray:
        """Track (after the first frame), integrate, render the model; returns the pose used."""
        self.inp.set_data_from_image("depth", o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(frame.depth_m))))
        self.inp.set_data_from_image("color", o3d.t.geometry.Image(o3c.Tensor(frame.color.astype(np.float32) / 255)))
        if self.count > 0:
            try:
                res = self.model.track_frame_to_model(self.inp, self.ray, 1.0, self.depth_max_m, 0.07)
                self.T = self.T @ res.transformation
            except RuntimeError:
                self.failures += 1
        self.model.update_frame_pose(self.count, self.T)
        self.model.integrate(self.inp, 1.0, self.depth_max_m, self.trunc_voxels)
        self.model.synthesize_model_frame(self.ray, 1.0, 0.1, self.depth_max_m, self.trunc_voxels, False)
        self.count += 1
        return self.T.cpu().numpy().copy()


def run_open3d_slam(frames, voxel_size_m: float, T0: np.ndarray, depth_max_m: float = 4.0,
                    trunc_voxels: float = 5.0) -> dict:
    """Run Open3D's frame-to-model loop on `frames`; returns poses (N,4,4) and seconds per frame."""
    slam = Open3DSlam(frames[0].intrinsics, voxel_size_m, T0, depth_max_m, trunc_voxels)
    poses, times = [], []
    for f in frames:
        t0 = time.perf_counter()
        poses.append(slam.step(f))
        times.append(time.perf_counter() - t0)
    return {"poses": np.array(poses), "seconds_per_frame": np.array(times)}
