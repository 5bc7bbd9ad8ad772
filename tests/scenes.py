"""Tiny analytic RGB-D scenes for tests: two spheres on a floor in front of a wall, ray cast exactly.

World frame: y points down (floor at y = FLOOR_Y_M), the wall is the plane z = WALL_Z_M.
"""
from __future__ import annotations

import numpy as np

from fusion.frame import Frame, Intrinsics

SPHERE_CENTER = np.array([0.0, 0.0, 1.5])
SPHERE_RADIUS_M = 0.3
WALL_Z_M = 2.2
FLOOR_Y_M = 0.45
SMALL_SPHERE_CENTER = np.array([0.45, 0.25, 1.8])
SMALL_SPHERE_RADIUS_M = 0.2


def look_at(eye, target=SPHERE_CENTER, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """T_world_cam for an OpenCV camera (z forward, y down) at `eye` looking at `target`."""
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], 1)
    T[:3, 3] = eye
    return T


def _ray_sphere(o, d, center, radius):
    oc = o - center
    b = d @ oc
    a = np.sum(d * d, -1)
    disc = b * b - a * (oc @ oc - radius ** 2)
    t = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    return np.where(t > 0, t, np.inf)


def render(T_world_cam: np.ndarray, intr: Intrinsics, index: int = 0) -> Frame:
    """Exact depth (z, metres) and a position-dependent colour of the scene."""
    u, v = np.meshgrid(np.arange(intr.width), np.arange(intr.height))
    rays_cam = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u, float)], -1)
    R, o = T_world_cam[:3, :3], T_world_cam[:3, 3]
    d = rays_cam @ R.T
    t = np.full(d.shape[:2], np.inf)
    for axis, level in ((2, WALL_Z_M), (1, FLOOR_Y_M)):
        with np.errstate(divide="ignore", invalid="ignore"):
            t_plane = (level - o[axis]) / d[..., axis]
        t = np.minimum(t, np.where(t_plane > 0, t_plane, np.inf))
    t_planes = t
    for center, radius in ((SPHERE_CENTER, SPHERE_RADIUS_M), (SMALL_SPHERE_CENTER, SMALL_SPHERE_RADIUS_M)):
        t = np.minimum(t, _ray_sphere(o, d, center, radius))
    t_sph = np.where(t < t_planes, t, np.inf)
    t_wall = t_planes
    depth = np.where(np.isfinite(t), t, 0).astype(np.float32)  # rays_cam has z = 1, so t is depth
    p = o + d * np.where(np.isfinite(t), t, 0)[..., None]
    color = (127 + 100 * np.sin(12 * p[..., :3])).clip(0, 255).astype(np.uint8)
    color[t_sph <= t_wall] = (200, 60, 60)
    return Frame(color, depth, intr, timestamp_s=index / 30.0, index=index, T_world_cam_gt=T_world_cam)


def orbit(n_frames: int, intr: Intrinsics, step_deg: float = 2.0, radius_m: float = 1.2) -> list[Frame]:
    """Frames from a camera orbiting the sphere at `radius_m`, `step_deg` apart."""
    frames = []
    for i in range(n_frames):
        a = np.radians(-20 + step_deg * i)
        eye = SPHERE_CENTER + radius_m * np.array([np.sin(a), 0.1, -np.cos(a)])
        frames.append(render(look_at(eye), intr, i))
    return frames


SMALL = Intrinsics(fx=160.0, fy=160.0, cx=79.5, cy=59.5, width=160, height=120)
VGA = Intrinsics(fx=525.0, fy=525.0, cx=319.5, cy=239.5, width=640, height=480)
