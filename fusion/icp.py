"""Owns the frame-to-model ICP solver: weighted point-to-plane Gauss-Newton over a depth pyramid.

The frame's depth (source) is registered to the model's depth rendered from the initial guess
(target) by projective data association. Each correspondence is weighted by the sensor's depth noise
(structured-light and stereo depth noise grows with the square of the distance, so a far point says
less than a near one), by a Huber loss on the point-to-plane residual, and is dropped when its
normals disagree by more than a gate angle or its points lie farther apart than `outlier_m`.
Pure functions and a frozen config; any thread may call them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class IcpConfig:
    iterations: tuple = (6, 8, 12)    #: Gauss-Newton iterations per pyramid level, fine to coarse
    refine_iterations: int = 6        #: then at the finest level with noise weights and the normal gate
    outlier_m: float = 0.07           #: correspondences farther apart (point to point) are ignored
    huber_m: float = 0.05             #: Huber threshold of the point-to-plane residual
    normal_gate_deg: float = 20.0     #: refining, correspondences whose normals differ more are ignored
    noise_base_m: float = 0.0012      #: depth noise: sigma(z) = base + quad * (z - offset)^2 ...
    noise_quad_per_m: float = 0.0019  #: ... (Nguyen et al. 2012, Kinect-class sensors)
    noise_offset_m: float = 0.4       #: ...
    model_sigma_m: float = 0.003      #: noise of the model's surface, added in quadrature to sigma(z)
    depth_weighting: bool = True      #: refining, weight residuals by 1 / sigma^2 (False: all alike)
    normal_edge_ratio: float = 0.05   #: no normal where neighbours differ by more than this share of the depth
    min_step: float = 1e-5            #: an update smaller than this (rad / m) ends a level


@dataclass
class IcpResult:
    """Source-to-target transform and the quality of the finest level's correspondences."""

    transformation: np.ndarray  #: 4x4, maps source camera points into the target camera
    fitness: float              #: inliers / pixels of the finest level
    inlier_rmse: float          #: RMS point-to-plane residual of the inliers (m)


@nb.njit(cache=True)
def _vertex_map(depth, fx, fy, cx, cy):
    h, w = depth.shape
    out = np.zeros((h, w, 3), np.float32)
    for v in range(h):
        for u in range(w):
            z = depth[v, u]
            if z > 0:
                out[v, u, 0] = (u - cx) / fx * z
                out[v, u, 1] = (v - cy) / fy * z
                out[v, u, 2] = z
    return out


@nb.njit(cache=True)
def _normal_map(vmap, max_jump_ratio):
    """Unit normals from central differences (zero where a neighbour is missing or across a depth edge)."""
    h, w = vmap.shape[:2]
    out = np.zeros((h, w, 3), np.float32)
    for v in range(1, h - 1):
        for u in range(1, w - 1):
            z = vmap[v, u, 2]
            zl, zr, zu, zd = vmap[v, u - 1, 2], vmap[v, u + 1, 2], vmap[v - 1, u, 2], vmap[v + 1, u, 2]
            if z <= 0 or zl <= 0 or zr <= 0 or zu <= 0 or zd <= 0:
                continue
            if abs(zr - zl) > max_jump_ratio * z or abs(zd - zu) > max_jump_ratio * z:
                continue
            ax, ay, az = vmap[v, u + 1, 0] - vmap[v, u - 1, 0], vmap[v, u + 1, 1] - vmap[v, u - 1, 1], zr - zl
            bx, by, bz = vmap[v + 1, u, 0] - vmap[v - 1, u, 0], vmap[v + 1, u, 1] - vmap[v - 1, u, 1], zd - zu
            nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
            n = np.sqrt(nx * nx + ny * ny + nz * nz)
            if n > 0:
                s = -1.0 / n if nz > 0 else 1.0 / n  # face the camera
                out[v, u, 0], out[v, u, 1], out[v, u, 2] = nx * s, ny * s, nz * s
    return out


@nb.njit(cache=True, fastmath=True)
def _normal_equations(svmap, snmap, tvmap, tnmap, T, fx, fy, cx, cy, outlier_m, huber_m, cos_gate,
                      noise, weighting):
    """Per-row sums of the 6x6 system (21 upper entries), its right side (6), pairs within outlier_m,
    their squared residuals and the pairs that passed the normal gate."""
    h, w = svmap.shape[:2]
    th, tw = tvmap.shape[:2]
    rows = np.zeros((h, 30))
    for v in range(h):
        acc = np.zeros(30)
        j = np.empty(6)
        for u in range(w):
            if svmap[v, u, 2] == 0:
                continue
            px, py, pz = svmap[v, u, 0], svmap[v, u, 1], svmap[v, u, 2]
            qx = T[0, 0] * px + T[0, 1] * py + T[0, 2] * pz + T[0, 3]
            qy = T[1, 0] * px + T[1, 1] * py + T[1, 2] * pz + T[1, 3]
            qz = T[2, 0] * px + T[2, 1] * py + T[2, 2] * pz + T[2, 3]
            if qz <= 0:
                continue
            ut = int(np.floor(fx * qx / qz + cx + 0.5))
            vt = int(np.floor(fy * qy / qz + cy + 0.5))
            if ut < 0 or vt < 0 or ut >= tw or vt >= th:
                continue
            nx, ny, nz = tnmap[vt, ut, 0], tnmap[vt, ut, 1], tnmap[vt, ut, 2]
            if nz == 0:
                continue
            dx, dy, dz = qx - tvmap[vt, ut, 0], qy - tvmap[vt, ut, 1], qz - tvmap[vt, ut, 2]
            if dx * dx + dy * dy + dz * dz > outlier_m * outlier_m:
                continue
            r = dx * nx + dy * ny + dz * nz
            acc[27] += 1.0  # fitness and RMSE count every pair within outlier_m, as Open3D's solver does
            acc[28] += r * r
            sx, sy, sz = snmap[v, u, 0], snmap[v, u, 1], snmap[v, u, 2]
            rn = (T[0, 0] * sx + T[0, 1] * sy + T[0, 2] * sz) * nx + \
                 (T[1, 0] * sx + T[1, 1] * sy + T[1, 2] * sz) * ny + \
                 (T[2, 0] * sx + T[2, 1] * sy + T[2, 2] * sz) * nz
            if rn < cos_gate or (sz == 0 and cos_gate > -1.0):
                continue
            wt = 1.0 if abs(r) <= huber_m else huber_m / abs(r)
            if weighting:
                sig = noise[0] + noise[1] * (pz - noise[2]) ** 2
                wt *= noise[3] / (sig * sig + noise[4])
            j[0], j[1], j[2] = qy * nz - qz * ny, qz * nx - qx * nz, qx * ny - qy * nx
            j[3], j[4], j[5] = nx, ny, nz
            k = 0
            for a in range(6):
                for b in range(a, 6):
                    acc[k] += wt * j[a] * j[b]
                    k += 1
                acc[21 + a] += wt * j[a] * r
            acc[29] += 1.0
        rows[v] = acc
    return rows


def _twist_matrix(xi: np.ndarray) -> np.ndarray:
    """4x4 rigid transform of a small twist (rotation vector, translation)."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(xi[:3]).as_matrix()
    T[:3, 3] = xi[3:]
    return T


def _solve(rows: np.ndarray) -> tuple[np.ndarray | None, float, float]:
    s = rows.sum(0)
    A = np.zeros((6, 6))
    A[np.triu_indices(6)] = s[:21]
    A = A + A.T - np.diag(np.diag(A))
    if s[29] < 10:
        return None, s[27], s[28]
    try:
        return -np.linalg.solve(A, s[21:27]), s[27], s[28]
    except np.linalg.LinAlgError:
        return None, s[27], s[28]


def _pyramid(depth: np.ndarray, K: tuple, levels: int, downsample) -> list:
    """[(depth, (fx, fy, cx, cy))] fine to coarse; each level halves with the pixel-centre convention."""
    out = [(depth, K)]
    for _ in range(levels - 1):
        d, (fx, fy, cx, cy) = out[-1]
        out.append((downsample(d), (fx / 2, fy / 2, (cx + 0.5) / 2 - 0.5, (cy + 0.5) / 2 - 0.5)))
    return out


def _maps(src_depth, tgt_depth, K, edge_ratio):
    """(source vertices, source normals, target vertices, target normals) of one pyramid level."""
    sv, tv = _vertex_map(src_depth, *K), _vertex_map(tgt_depth, *K)
    return sv, _normal_map(sv, edge_ratio), tv, _normal_map(tv, edge_ratio)


def _noise_vector(cfg: IcpConfig) -> np.ndarray:
    """(base, quad, offset, variance at 1 m, model variance): weights are 1 at 1 m."""
    sigma_1m = cfg.noise_base_m + cfg.noise_quad_per_m * (1.0 - cfg.noise_offset_m) ** 2
    model_var = cfg.model_sigma_m ** 2
    return np.array([cfg.noise_base_m, cfg.noise_quad_per_m, cfg.noise_offset_m, sigma_1m ** 2 + model_var, model_var])


def register(src_depth: np.ndarray, tgt_depth: np.ndarray, K: tuple, config: IcpConfig, downsample,
             T_init: np.ndarray | None = None) -> IcpResult:
    """Register depth `src_depth` to `tgt_depth` (same camera K = (fx, fy, cx, cy), same size).

    `downsample` halves a depth image (the tracker's pyramid filter). Raises RuntimeError when a level
    has too few correspondences to solve."""
    cfg = config
    T = np.eye(4) if T_init is None else np.array(T_init, float)
    noise = _noise_vector(cfg)
    levels = len(cfg.iterations)
    src_pyr = _pyramid(src_depth, K, levels, downsample)
    tgt_pyr = _pyramid(tgt_depth, K, levels, downsample)
    # the pyramid finds the basin with every pair alike and no gate (right pairs' normals may still
    # differ a lot while the pose is far off); then the finest level refines with noise weights and the gate
    stages = [(level, n, False) for level, n in reversed(list(enumerate(cfg.iterations)))]
    stages.append((0, cfg.refine_iterations, True))
    fitness = rmse = 0.0
    for level, iterations, refine in stages:
        (sd, k), (td, _) = src_pyr[level], tgt_pyr[level]
        maps = _maps(sd, td, k, cfg.normal_edge_ratio)
        cos_gate = float(np.cos(np.radians(cfg.normal_gate_deg))) if refine else -1.0
        for _ in range(iterations):
            rows = _normal_equations(*maps, T, *k, cfg.outlier_m, cfg.huber_m, cos_gate, noise,
                                     cfg.depth_weighting and refine)
            xi, n, r2 = _solve(rows)
            if xi is None and level > 0:
                break  # a coarse level too sparse to solve: the finer levels go on from here
            if xi is None:
                raise RuntimeError("ICP: too few correspondences")
            T = _twist_matrix(xi) @ T
            fitness, rmse = n / sd.size, float(np.sqrt(r2 / max(n, 1)))
            if np.abs(xi).max() < cfg.min_step:
                break
    return IcpResult(T, fitness, rmse)
