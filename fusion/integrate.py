"""Owns the CPU TSDF integration kernel: one depth/colour frame into the voxel blocks it touches.

It computes what Open3D's `VoxelBlockGrid.integrate` computes on the CPU (same projection: pixel
coordinates truncated, same truncation, running averages of TSDF and colour, weight + 1 per
observation; tests/test_kernels.py checks it against Open3D), walking each block's voxels row by row
so the camera coordinates advance by one column of the rotation per voxel instead of a full
transform, reading the colour frame as it comes (uint8, no conversion), and releasing the GIL.
Pure functions; call them on the thread that owns the volume's buffers.
"""
from __future__ import annotations

import numba as nb


@nb.njit(cache=True, parallel=True, nogil=True, fastmath=True)
def integrate_blocks(tsdf, weight, color, keys, bufs, depth, rgb, fx, fy, cx, cy, T_cam_world,
                     voxel_m, trunc_m, depth_max_m):
    """Fuse `depth` (H,W) float32 metres (0 = none) and `rgb` (H,W,3) uint8 seen with camera matrix
    (fx, fy, cx, cy) from T_cam_world into blocks `keys` (N,3) at buffer rows `bufs` (N,).

    tsdf/weight (B,r,r,r) and color (B,r,r,r,3) float32 are indexed [b, z, y, x]; colour is stored 0..255.
    """
    r = tsdf.shape[1]
    h, w = depth.shape
    R = T_cam_world[:3, :3] * voxel_m      # camera metres per voxel step along each world axis
    t = T_cam_world[:3, 3]
    for j in nb.prange(len(bufs)):
        b = bufs[j]
        bx, by, bz = keys[j, 0] * r, keys[j, 1] * r, keys[j, 2] * r
        for zv in range(r):
            for yv in range(r):
                # camera coordinates of voxel (0, yv, zv) of this block; x advances by column 0 of R
                gx, gy, gz = bx, by + yv, bz + zv
                xc0 = R[0, 0] * gx + R[0, 1] * gy + R[0, 2] * gz + t[0]
                yc0 = R[1, 0] * gx + R[1, 1] * gy + R[1, 2] * gz + t[1]
                zc0 = R[2, 0] * gx + R[2, 1] * gy + R[2, 2] * gz + t[2]
                for xv in range(r):
                    zc = zc0 + R[2, 0] * xv
                    if zc <= 0:
                        continue
                    u = fx * (xc0 + R[0, 0] * xv) / zc + cx
                    v = fy * (yc0 + R[1, 0] * xv) / zc + cy
                    if not (u >= 0 and v >= 0 and u <= w - 1 and v <= h - 1):
                        continue
                    ui, vi = int(u), int(v)
                    d = depth[vi, ui]
                    sdf = d - zc
                    if d <= 0 or d > depth_max_m or sdf < -trunc_m:
                        continue
                    s = min(sdf, trunc_m) / trunc_m
                    wt = weight[b, zv, yv, xv]
                    inv = 1.0 / (wt + 1.0)
                    tsdf[b, zv, yv, xv] = (wt * tsdf[b, zv, yv, xv] + s) * inv
                    for c in range(3):
                        color[b, zv, yv, xv, c] = (wt * color[b, zv, yv, xv, c] + rgb[vi, ui, c]) * inv
                    weight[b, zv, yv, xv] = wt + 1.0
