"""Owns the gravity/floor estimate: which way is up and where the floor is, from surface points with normals.

The estimate starts from a prior up direction (for a first frame: the camera held roughly upright, up =
-y of the camera) and refines it in passes that narrow the angle bands around the current guess:
horizontal surfaces (normals near up, floor, table tops and ceiling alike) pull up towards their
normals; vertical walls (normals near perpendicular to up) push it to be perpendicular to theirs; a weak
pull towards the prior settles what the walls leave open (one wall fixes only one tilt axis). Up is the
smallest eigenvector of that quadratic form. The floor is then the lowest dense height cluster of
up-facing points well below the camera, unless much surface lies well below it (then it is a table or bed
seen from above, and no floor is in view); its plane, fitted to the points themselves (far less noisy
than their normals), fixes up once more together with the walls. Optionally a yaw about up turns the
dominant wall directions onto the x and y axes (the rooms the nets learned from are axis-aligned).
Without a floor and walls the prior is kept, with one warning per estimator and a low confidence.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fusion.frame import Intrinsics

log = logging.getLogger(__name__)
PRIOR_UP_CAM = np.array([0.0, -1.0, 0.0])  #: up in the camera's own frame when it is held upright
METHODS = ("gt", "imu", "floor", "walls", "assumed")


@dataclass(frozen=True)
class GravityConfig:
    """How up and the floor are found (angles in degrees, lengths in metres)."""

    bands_deg: tuple = (40.0, 20.0, 10.0)  #: refinement passes: surfaces within this of horizontal / vertical
    prior_weight: float = 0.002      #: pull towards the prior up (settles directions walls leave open)
    wall_weight: float = 1.0         #: weight of the wall-normal scatter against the horizontal one
    height_bin_m: float = 0.03       #: floor height histogram bin
    floor_tolerance_m: float = 0.06  #: up-facing points this close to the floor height are floor
    min_floor_points: int = 50       #: fewer floor points: no floor
    min_floor_share: float = 0.05    #: the floor cluster holds at least this share of the largest height cluster
    min_camera_height_m: float = 0.8  #: a floor lies at least this far below the camera (else it is a desk)
    min_floor_extent_m: float = 0.5  #: the floor points span at least this in both directions for a plane fit
    below_floor_m: float = 0.2       #: surface seen this far below a floor refutes it (a table, the floor unseen) ...
    max_below_floor_share: float = 0.1  #: ... when it holds more than this share of the floor's points
    min_wall_points: int = 200       #: fewer wall points: no walls
    min_wall_spread: float = 0.15    #: second/first eigenvalue of the wall scatter for two wall directions
    assumed_camera_height_m: float = 1.4  #: without a floor the camera is put this high above it
    full_points: int = 4000          #: floor (or wall) points for full confidence
    align_yaw: bool = True           #: turn the dominant wall directions onto the x and y axes
    min_yaw_concentration: float = 0.5  #: wall directions agree at least this much (0..1) to set the yaw
    pixel_step: int = 4              #: depth back-projection: every n-th pixel along each axis
    normal_px: int = 3               #: half-width of the depth normal stencil at 640 px image width
    max_depth_jump: float = 0.08     #: relative depth change across the stencil beyond which no normal is taken
    max_depth_m: float = 4.0         #: farther depth is not used (too noisy for normals)
    max_points: int = 60_000         #: points used at most (evenly subsampled)


@dataclass(frozen=True)
class GravityEstimate:
    """One estimate (immutable): T_aligned_world maps the input world to the aligned one (up +z, floor z = 0)."""

    T_aligned_world: np.ndarray
    up_world: np.ndarray          #: unit up in the input world
    method: str                   #: one of METHODS
    confidence: float             #: 0..1
    floor_height_m: float | None  #: floor height along up in the input world (None: assumed)
    floor_points: int = 0
    wall_points: int = 0


def depth_points(depth_m: np.ndarray, intr: Intrinsics, T_world_cam: np.ndarray,
                 cfg: GravityConfig = GravityConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(points (N,3), unit normals facing the camera (N,3)) in the world from one depth image."""
    h = max(1, int(round(cfg.normal_px * intr.width / 640)))
    H, W = depth_m.shape
    v, u = np.mgrid[h:H - h:cfg.pixel_step, h:W - h:cfg.pixel_step]
    d = depth_m.astype(np.float64)
    z, zl, zr, zu, zd = d[v, u], d[v, u - h], d[v, u + h], d[v - h, u], d[v + h, u]
    ok = (z > 0) & (z <= cfg.max_depth_m) & (zl > 0) & (zr > 0) & (zu > 0) & (zd > 0)
    ok &= (np.abs(zr - zl) < cfg.max_depth_jump * z) & (np.abs(zd - zu) < cfg.max_depth_jump * z)
    back = intr.backproject
    u, v, z, zl, zr, zu, zd = (a[ok] for a in (u, v, z, zl, zr, zu, zd))
    p = back(u, v, z)
    n = np.cross(back(u, v + h, zd) - back(u, v - h, zu), back(u + h, v, zr) - back(u - h, v, zl))
    norm = np.linalg.norm(n, axis=1)
    keep = norm > 0
    p, n = p[keep], n[keep] / norm[keep, None]
    n *= np.where(np.sum(n * p, 1) > 0, -1.0, 1.0)[:, None]  # face the camera
    R, t = np.asarray(T_world_cam, float)[:3, :3], np.asarray(T_world_cam, float)[:3, 3]
    return p @ R.T + t, n @ R.T


def subsample(points: np.ndarray, normals: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point so that at most `max_points` remain (deterministic)."""
    step = max(1, -(-len(points) // max(1, max_points)))
    return np.asarray(points[::step], np.float64), np.asarray(normals[::step], np.float64)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a to unit vector b."""
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1 + 1e-9:  # opposite: half a turn about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))))


def _scatter(n: np.ndarray) -> np.ndarray:
    return n.T @ n / max(1, len(n))


class GravityEstimator:
    """Estimates up and the floor from points with normals. Thread: one at a time (the fusion thread);
    it remembers only whether it has warned."""

    def __init__(self, config: GravityConfig = GravityConfig()):
        self.config = config
        self.warned = False

    def estimate(self, points: np.ndarray, normals: np.ndarray, prior_up: np.ndarray,
                 camera_center: np.ndarray, imu_up: np.ndarray | None = None) -> GravityEstimate:
        """Up and floor from world points/normals; `prior_up` is the starting guess, `camera_center` a
        camera position (the floor lies well below it). With `imu_up` (from an accelerometer) up is
        that; the scene gives the floor and the yaw."""
        cfg = self.config
        prior = np.asarray(prior_up, float) / np.linalg.norm(prior_up)
        P, N = subsample(points, normals, cfg.max_points)
        if imu_up is not None:
            return self._with_imu(P, N, np.asarray(imu_up, float) / np.linalg.norm(imu_up), camera_center)
        up, walls = self._refine(N, prior, prior, None)
        floor_h, floor = self._floor(P, N, up, float(np.dot(camera_center, up)))
        if floor is not None:
            plane_n = self._plane_normal(P[floor], up)
            up, walls = self._refine(N, prior, up, plane_n) if plane_n is not None else (up, walls)
            floor_h = float(np.median(P[floor] @ up))
            conf = 0.5 + 0.3 * min(1.0, floor.sum() / cfg.full_points) + 0.2 * min(1.0, walls.sum() / cfg.full_points)
            return self._result(up, floor_h, "floor", conf, N, walls, int(floor.sum()))
        wall_spread = self._wall_spread(N[walls]) if walls.sum() >= cfg.min_wall_points else -1.0
        if wall_spread < 0:
            self._warn("no floor and no walls in view")
            return self._result(prior, self._assumed_floor(P, prior, camera_center), "assumed", 0.1, N, walls, 0)
        self._warn("no floor in view: up comes from the walls")
        conf = 0.25 + 0.15 * min(1.0, wall_spread / cfg.min_wall_spread) + 0.1 * min(1.0, walls.sum() / cfg.full_points)
        return self._result(up, self._assumed_floor(P, up, camera_center), "walls", conf, N, walls, 0)

    def _with_imu(self, P, N, up, camera_center) -> GravityEstimate:
        walls = np.abs(N @ up) < np.sin(np.radians(self.config.bands_deg[-1]))
        floor_h, floor = self._floor(P, N, up, float(np.dot(camera_center, up)))
        n_floor = 0 if floor is None else int(floor.sum())
        floor_h = self._assumed_floor(P, up, camera_center) if floor_h is None else floor_h
        return self._result(up, floor_h, "imu", 0.9 + 0.1 * (floor is not None), N, walls, n_floor)

    def _warn(self, what: str) -> None:
        if not self.warned:
            log.warning("gravity: %s; assuming the camera started upright until more of the room is seen", what)
            self.warned = True

    def _refine(self, N, prior, start, plane_n) -> tuple[np.ndarray, np.ndarray]:
        """Up from horizontal and wall normals over the narrowing bands; (up, wall mask of the last band).
        With `plane_n` (a fitted floor normal) it replaces the horizontal normals."""
        cfg, u = self.config, start
        walls = np.zeros(len(N), bool)
        for band in cfg.bands_deg:
            c = N @ u
            flat, walls = np.abs(c) > np.cos(np.radians(band)), np.abs(c) < np.sin(np.radians(band))
            M = cfg.prior_weight * (np.eye(3) - np.outer(prior, prior))
            if plane_n is not None:
                M -= np.outer(plane_n, plane_n)
            elif flat.sum() >= cfg.min_floor_points:
                M -= _scatter(N[flat])
            if walls.sum() >= cfg.min_wall_points:
                M += cfg.wall_weight * _scatter(N[walls])
            u = np.linalg.eigh(M)[1][:, 0]
            u = u if np.dot(u, prior) >= 0 else -u
        return u, walls

    def _floor(self, P, N, up, cam_h) -> tuple[float | None, np.ndarray | None]:
        """(height, mask) of the lowest dense cluster of up-facing points well below the camera, unless
        surface below it refutes it (`_refuted`)."""
        cfg = self.config
        sel = self._facing_up(N, up) & (P @ up < cam_h - cfg.min_camera_height_m)
        if sel.sum() < cfg.min_floor_points:
            return None, None
        h = P[sel] @ up
        edges = np.arange(h.min(), h.max() + 2 * cfg.height_bin_m, cfg.height_bin_m)
        hist = np.convolve(np.histogram(h, edges)[0], np.ones(3), "same")
        need = max(cfg.min_floor_points, cfg.min_floor_share * hist.max())
        first = int(np.argmax(hist >= need))
        if hist[first] < need:
            return None, None
        h0 = float(np.median(h[np.abs(h - (edges[first] + edges[first + 1]) / 2) <= 1.5 * cfg.height_bin_m]))
        floor = np.zeros(len(P), bool)
        floor[np.nonzero(sel)[0]] = np.abs(h - h0) <= cfg.floor_tolerance_m
        if floor.sum() < cfg.min_floor_points or self._refuted(P, up, h0, int(floor.sum())):
            return None, None
        return h0, floor

    def floor_refuted(self, points: np.ndarray, normals: np.ndarray, up: np.ndarray, height_m: float) -> bool:
        """Whether surface seen below a floor at `height_m` along `up` says it is no floor (a table or bed
        seen from above while the floor was out of view)."""
        cfg = self.config
        P, N = subsample(points, normals, cfg.max_points)
        on = self._facing_up(N, up) & (np.abs(P @ up - height_m) <= cfg.floor_tolerance_m)
        return self._refuted(P, up, height_m, int(on.sum()))

    def _facing_up(self, N, up) -> np.ndarray:
        return N @ up > np.cos(np.radians(self.config.bands_deg[-1]))

    def _refuted(self, P, up, height_m: float, n_floor: int) -> bool:
        cfg = self.config
        below = int(np.sum(P @ up < height_m - cfg.below_floor_m))
        if below > max(cfg.min_floor_points, cfg.max_below_floor_share * n_floor):
            log.debug("gravity: %d points lie below the surface at %.2f m (%d points on it): no floor", below,
                      height_m, n_floor)
            return True
        return False

    def _plane_normal(self, Q, up) -> np.ndarray | None:
        """Normal of the plane fitted to floor points (two trimmed least-squares passes); None when they
        span too little to fix a tilt."""
        for _ in range(2):
            c = Q.mean(0)
            w, V = np.linalg.eigh((Q - c).T @ (Q - c) / len(Q))
            n = V[:, 0] if np.dot(V[:, 0], up) >= 0 else -V[:, 0]
            r = np.abs((Q - c) @ n)
            Q = Q[r <= max(3 * np.sqrt(w[0]), 1e-4)]
        return n if 4 * np.sqrt(w[1]) >= self.config.min_floor_extent_m else None

    def _wall_spread(self, Nw) -> float:
        w = np.linalg.eigvalsh(_scatter(Nw))
        return float(w[1] / max(w[2], 1e-12))

    def _assumed_floor(self, P, up, camera_center) -> float:
        """Without a floor: the camera at the assumed height, but nothing seen below the floor."""
        lowest = float(np.percentile(P @ up, 1)) if len(P) else np.inf
        return min(float(np.dot(camera_center, up)) - self.config.assumed_camera_height_m, lowest)

    def _yaw(self, R, N_walls) -> np.ndarray:
        """Rotation about z turning the dominant wall directions (after R) onto the axes (identity when
        the walls do not agree)."""
        n = N_walls @ R.T
        w = np.hypot(n[:, 0], n[:, 1])
        if len(n) < self.config.min_wall_points or w.sum() == 0:
            return np.eye(3)
        z4 = np.sum(w * np.exp(4j * np.arctan2(n[:, 1], n[:, 0]))) / w.sum()
        if abs(z4) < self.config.min_yaw_concentration:
            return np.eye(3)
        a = -np.angle(z4) / 4
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])

    def _result(self, up, floor_h, method, conf, N, walls, n_floor) -> GravityEstimate:
        R = rotation_between(up, np.array([0.0, 0, 1]))
        if self.config.align_yaw:
            R = self._yaw(R, N[walls]) @ R
        T = np.eye(4)
        T[:3, :3], T[2, 3] = R, -floor_h
        return GravityEstimate(T, up, method, float(np.clip(conf, 0, 1)),
                               floor_h if n_floor else None, n_floor, int(walls.sum()))
