"""Owns the viewport's orbit camera: view/projection matrices, orbit, pan, zoom, fit, follow, unproject.

Pure numpy (no Qt, no GL) so it can be tested alone. Matrices are 4x4 float32, column vectors,
OpenGL clip conventions (right-handed view space looking down -z).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraConfig:
    """How the orbit camera moves and projects."""

    fov_y_deg: float = 50.0            #: vertical field of view
    near_m: float = 0.02               #: near clip plane
    far_m: float = 100.0               #: far clip plane
    orbit_deg_per_px: float = 0.4      #: rotation per pixel dragged
    zoom_per_step: float = 1.15        #: distance factor per wheel step (120 units)
    min_distance_m: float = 0.05       #: closest the eye gets to the target
    fit_margin: float = 1.1            #: fit-to-scene: the bounds span 1/fit_margin of the view
    follow_back_m: float = 1.2         #: follow mode: eye this far behind the live camera
    follow_up_m: float = 0.5           #: follow mode: and this far above it
    follow_ahead_m: float = 1.5        #: follow mode: looks at this point ahead of the live camera


def perspective(fov_y_deg: float, aspect: float, near: float, far: float) -> np.ndarray:
    f = 1.0 / math.tan(math.radians(fov_y_deg) / 2)
    m = np.zeros((4, 4), np.float32)
    m[0, 0], m[1, 1] = f / max(aspect, 1e-6), f
    m[2, 2], m[2, 3] = (far + near) / (near - far), 2 * far * near / (near - far)
    m[3, 2] = -1.0
    return m


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-view matrix (OpenGL view space: x right, y up, looking down -z)."""
    f = target - eye
    f = f / max(np.linalg.norm(f), 1e-12)
    s = np.cross(f, up)
    if np.linalg.norm(s) < 1e-9:  # looking along up: pick any side vector
        s = np.cross(f, np.array([1.0, 0.0, 0.0]) if abs(f[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
    s /= np.linalg.norm(s)
    u = np.cross(s, f)
    m = np.eye(4, dtype=np.float32)
    m[0, :3], m[1, :3], m[2, :3] = s, u, -f
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def up_from_pose(T_world_cam: np.ndarray) -> np.ndarray:
    """World 'up' as the first camera saw it (OpenCV cameras: y points down in the image)."""
    up = -np.asarray(T_world_cam, float)[:3, 1]
    return up / max(np.linalg.norm(up), 1e-12)


class OrbitCamera:
    """Target, distance and two angles about a world up axis. Thread: the GUI thread."""

    def __init__(self, config: CameraConfig = CameraConfig()):
        self.config = config
        self.up = np.array([0.0, 0.0, 1.0])
        self.target = np.zeros(3)
        self.distance_m = 4.0
        self.yaw_deg, self.pitch_deg = -60.0, 35.0

    def set_up(self, up: np.ndarray) -> None:
        u = np.asarray(up, float)
        self.up = u / max(np.linalg.norm(u), 1e-12)

    def _basis(self) -> tuple[np.ndarray, np.ndarray]:
        """Two unit vectors spanning the plane normal to up (right-handed with up)."""
        ref = np.array([1.0, 0.0, 0.0]) if abs(self.up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        a = np.cross(self.up, ref)
        a /= np.linalg.norm(a)
        return a, np.cross(self.up, a)

    def eye(self) -> np.ndarray:
        a, b = self._basis()
        yaw, pitch = math.radians(self.yaw_deg), math.radians(self.pitch_deg)
        horiz = math.cos(yaw) * a + math.sin(yaw) * b
        direction = math.cos(pitch) * horiz + math.sin(pitch) * self.up
        return self.target + self.distance_m * direction

    def view(self) -> np.ndarray:
        return look_at(self.eye(), self.target, self.up)

    def projection(self, aspect: float) -> np.ndarray:
        c = self.config
        return perspective(c.fov_y_deg, aspect, c.near_m, c.far_m)

    def orbit(self, dx_px: float, dy_px: float) -> None:
        k = self.config.orbit_deg_per_px
        self.yaw_deg = (self.yaw_deg - dx_px * k) % 360.0
        self.pitch_deg = float(np.clip(self.pitch_deg + dy_px * k, -89.0, 89.0))

    def pan(self, dx_px: float, dy_px: float, height_px: int) -> None:
        """Move the target in the view plane so the scene follows the mouse."""
        view = self.view()
        right, upv = view[0, :3], view[1, :3]
        m_per_px = 2 * self.distance_m * math.tan(math.radians(self.config.fov_y_deg) / 2) / max(height_px, 1)
        self.target = self.target + (-dx_px * right + dy_px * upv) * m_per_px

    def zoom(self, wheel_steps: float) -> None:
        d = self.distance_m * self.config.zoom_per_step ** (-wheel_steps)
        self.distance_m = max(self.config.min_distance_m, d)

    def fit(self, lo_m: np.ndarray, hi_m: np.ndarray, aspect: float = 1.0) -> None:
        """Frame the axis-aligned box lo..hi from the current direction: the eye moves along its line
        of sight until every corner of the box lies inside the view (`aspect` = width / height), with
        `fit_margin` to spare. A bounding sphere would leave a room at about a third of the view."""
        lo, hi = np.asarray(lo_m, float), np.asarray(hi_m, float)
        self.target = (lo + hi) / 2
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        view = look_at(self.eye(), self.target, self.up).astype(np.float64)
        right, up, forward = view[0, :3], view[1, :3], -view[2, :3]
        offset = corners - self.target
        tan_v = math.tan(math.radians(self.config.fov_y_deg) / 2)
        tan_h = tan_v * max(aspect, 1e-6)
        depth = offset @ forward  # beyond the target (+) or before it (-)
        m = self.config.fit_margin
        needed = np.maximum(np.abs(offset @ right) * m / tan_h, np.abs(offset @ up) * m / tan_v) - depth
        nearest = float(np.max(-depth)) + self.config.near_m  # every corner in front of the eye
        self.distance_m = max(float(np.max(needed)), nearest, self.config.min_distance_m)

    def face_like(self, T_world_cam: np.ndarray) -> None:
        """Turn (keeping target, distance and pitch) so the view looks the way the camera T_world_cam looks."""
        fwd = np.asarray(T_world_cam, float)[:3, 2]
        fwd = fwd - np.dot(fwd, self.up) * self.up
        if np.linalg.norm(fwd) < 1e-6:
            return
        a, b = self._basis()
        back = -fwd / np.linalg.norm(fwd)  # the eye sits behind the target, as the camera does
        self.yaw_deg = math.degrees(math.atan2(float(np.dot(back, b)), float(np.dot(back, a))))

    def follow(self, T_world_cam: np.ndarray) -> None:
        """Put the eye behind and above the live camera, looking ahead of it."""
        c = self.config
        T = np.asarray(T_world_cam, float)
        fwd = T[:3, 2] - np.dot(T[:3, 2], self.up) * self.up  # forward, levelled
        if np.linalg.norm(fwd) < 1e-6:
            fwd = -T[:3, 1]
        fwd /= np.linalg.norm(fwd)
        eye = T[:3, 3] - c.follow_back_m * fwd + c.follow_up_m * self.up
        self.look_from(eye, T[:3, 3] + c.follow_ahead_m * T[:3, 2])

    def look_from(self, eye: np.ndarray, target: np.ndarray) -> None:
        """Set target, distance and angles so the eye sits at `eye` looking at `target`."""
        self.target = np.asarray(target, float)
        d = np.asarray(eye, float) - self.target
        self.distance_m = max(float(np.linalg.norm(d)), self.config.min_distance_m)
        d /= max(np.linalg.norm(d), 1e-12)
        a, b = self._basis()
        self.pitch_deg = math.degrees(math.asin(float(np.clip(np.dot(d, self.up), -1, 1))))
        self.yaw_deg = math.degrees(math.atan2(float(np.dot(d, b)), float(np.dot(d, a))))

    def unproject(self, x_px: float, y_px: float, depth01: float, width_px: int, height_px: int) -> np.ndarray:
        """World point under window pixel (x, y from the top-left) at GL depth-buffer value depth01."""
        ndc = np.array([2 * (x_px + 0.5) / width_px - 1, 1 - 2 * (y_px + 0.5) / height_px, 2 * depth01 - 1, 1.0])
        inv = np.linalg.inv(self.projection(width_px / max(height_px, 1)).astype(np.float64) @ self.view())
        p = inv @ ndc
        return p[:3] / p[3]
