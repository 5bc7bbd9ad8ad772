"""Owns the synthetic camera path: a smooth hand-held-like walk through a furnished room's free space.

Positions follow a closed spline loop through free floor space at a smoothly varying speed; the view
turns between walls and furniture (some stretches rotation-heavy) with small roll and hand jitter. Every
candidate path is checked with a low-resolution noise-free render (no surface nearer than the minimum
along the view) and per-frame motion bounds; the best of a few deterministic attempts wins.
Pure function of (world, frame count); any thread may call `plan_trajectory`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline, PchipInterpolator
from scipy.ndimage import distance_transform_edt, label

from synth.world import World

log = logging.getLogger(__name__)


class NoCameraPath(RuntimeError):
    """A room whose furniture leaves no free space for a camera path."""


@dataclass(frozen=True)
class TrajectoryConfig:
    """Camera path rules."""

    fps: float = 30.0  # frames per second
    horizon_frames: int = 900  # paths are planned in blocks of this many frames (shorter = prefix)
    speed_mps: tuple = (0.4, 1.1)  # speed range on ordinary stretches
    slow_speed_mps: tuple = (0.36, 0.45)  # speed range on rotation-heavy stretches
    height_m: tuple = (1.25, 1.75)  # camera height range
    knot_s: tuple = (1.5, 2.6)  # time between view/speed knots
    heavy_prob: float = 0.25  # share of knots that start a rotation-heavy stretch
    heavy_turn_deg: tuple = (70.0, 110.0)  # yaw change over a rotation-heavy stretch
    turn_deg: float = 45.0  # largest yaw change over an ordinary stretch
    pitch_deg: tuple = (-45.0, 8.0)  # allowed pitch
    roll_deg: float = 3.0  # roll amplitude
    jitter_m: float = 0.003  # hand-jitter amplitude (position)
    jitter_deg: float = 0.3  # hand-jitter amplitude (angles)
    view_m: tuple = (1.2, 4.0)  # preferred distance to the viewed target
    wall_clearance_m: float = 0.6  # camera distance from walls
    object_clearance_m: float = 0.5  # camera distance from furniture taller than low_object_m
    low_object_m: float = 0.95  # the camera may pass over furniture lower than this
    grid_m: float = 0.05  # free-space map resolution
    min_view_depth_m: float = 0.4  # nothing nearer than this along the view
    min_speed_mps: float = 0.3  # the camera never moves slower than this
    max_step_m: float = 0.05  # per-frame translation bound
    max_step_deg: float = 4.0  # per-frame rotation bound
    min_normal_spread: float = 0.02  # weakest normal direction's share of the view (see _weakest_normal_share)
    weak_share: float = 0.03  # a path is accepted at once when at most this share of views is weak
    probe_every: int = 2  # probe-render every n-th frame
    attempts: int = 6  # candidate paths tried (the best wins)
    core_attempts: int = 6  # more candidates in the free space's deepest blob when those all broke a bound
    probe_scale: float = 0.125  # probe render size relative to 640x480


def free_space(world: World, cfg: TrajectoryConfig) -> tuple[np.ndarray, float]:
    """Boolean (nx, ny) map of camera-reachable floor cells (largest connected region) and its cell size."""
    g = cfg.grid_m
    W, D, _ = world.size_m
    nx, ny = int(W / g), int(D / g)
    xs, ys = (np.arange(nx) + 0.5) * g, (np.arange(ny) + 0.5) * g
    occupied = np.zeros((nx, ny), bool)
    for ob in world.obstacles:
        if ob.hi[2] > cfg.low_object_m:
            occupied[np.ix_((xs >= ob.lo[0]) & (xs <= ob.hi[0]), (ys >= ob.lo[1]) & (ys <= ob.hi[1]))] = True
    dist_obj = distance_transform_edt(~occupied) * g if occupied.any() else np.full((nx, ny), np.inf)
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    dist_wall = np.minimum(np.minimum(X, W - X), np.minimum(Y, D - Y))
    free = (dist_obj >= cfg.object_clearance_m) & (dist_wall >= cfg.wall_clearance_m)
    lab, n = label(free)
    if n > 1:
        free = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    if not free.any():  # tiny room: keep the cells farthest from everything
        score = np.minimum(dist_obj, dist_wall)
        free = score >= score.max() - g
    return free, g


def _loop(free: np.ndarray, g: float, rng, region: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
    """Closed path (sampled by arc length every 1 cm, (n,2)) inside the free map, and its length."""
    cells = np.argwhere(free if region is None else region)
    pts = (cells + 0.5) * g
    centre = pts.mean(0)
    k = int(rng.integers(5, 9))
    chosen = pts[rng.choice(len(pts), size=min(k, len(pts)), replace=False)]
    if len(chosen) < 3:
        chosen = centre + 0.05 * np.array([[1, 0], [-0.5, 0.86], [-0.5, -0.86]])
    chosen = chosen[np.argsort(np.arctan2(*(chosen - centre).T[::-1]))]
    return _closed_loop(chosen, free, g)


def _core(free: np.ndarray, g: float) -> np.ndarray:
    """The largest blob of free cells deepest inside the free space (at least 0.4, 0.3 or 0.2 m from its
    edge, the first with room for a loop): the open end of a room beside a ring around a large table."""
    depth = distance_transform_edt(free) * g
    for edge_m in (0.4, 0.3, 0.2):
        lab, n = label(depth >= edge_m)
        if n:
            core = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
            if core.sum() * g * g >= 0.5:
                return core
    return free


def _closed_loop(chosen: np.ndarray, free: np.ndarray, g: float) -> tuple[np.ndarray, float] | None:
    """A periodic spline through `chosen` (in order), sampled every 1 cm, or None when it leaves `free`."""
    closed = np.vstack([chosen, chosen[:1]])
    chord = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    spline = CubicSpline(chord, closed, bc_type="periodic")
    dense = spline(np.linspace(0, chord[-1], 4000))
    ij = np.clip((dense / g).astype(int), 0, np.array(free.shape) - 1)
    inside = free[ij[:, 0], ij[:, 1]].mean()
    if inside < 0.999 and free.sum() > 20:
        return None
    seg = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    length = float(seg[-1])
    even = np.arange(0, length, 0.01)
    return np.stack([np.interp(even, seg, dense[:, i]) for i in range(2)], 1), length


# wall-mounted: look at them only from afar (more than a plane in view)
FLAT = ("door", "window", "picture", "whiteboard", "tv", "radiator", "pilaster")
PLANAR = FLAT + ("wall_cabinets",)  # never the first view


def _targets(world: World, rng) -> tuple[np.ndarray, np.ndarray]:
    """Points worth looking at (n, 3): furniture centres and the room's vertical corners; and the
    nearest distance (n,) each may be viewed from."""
    W, D, H = world.size_m
    pts = [np.array([(o.lo[0] + o.hi[0]) / 2, (o.lo[1] + o.hi[1]) / 2, min((o.lo[2] + o.hi[2]) / 2, 1.5)])
           for o in world.obstacles]
    near = [2.5 if o.name in FLAT else 0.0 for o in world.obstacles]
    for x, y in ((0.0, 0.0), (W, 0.0), (W, D), (0.0, D)):
        pts += [np.array([x, y, z]) for z in rng.uniform(0.5, 1.5, 2)]
        near += [0.0, 0.0]
    return np.array(pts), np.array(near)


def _view_knots(pos_at, times, targets, near, heavy, start_target, rng, cfg):
    """Yaw and pitch (radians, yaw unwrapped) at each knot time."""
    yaws, pitches = [], []
    for k, t in enumerate(times):
        p = pos_at(t)
        rel = targets - p
        dist = np.linalg.norm(rel[:, :2], axis=1)
        yaw_all = np.arctan2(rel[:, 1], rel[:, 0])
        if k == 0:
            choice = start_target
        else:
            dyaw = np.degrees(np.angle(np.exp(1j * (yaw_all - yaws[-1]))))
            lo, hi = cfg.heavy_turn_deg if heavy[k - 1] else (0.0, cfg.turn_deg)
            ok = (np.abs(dyaw) >= lo) & (np.abs(dyaw) <= hi) & (dist >= np.maximum(cfg.view_m[0], near))
            ok &= dist <= cfg.view_m[1]
            if not ok.any():
                ok = (np.abs(dyaw) <= hi) & (dist >= cfg.min_view_depth_m * 1.5)
            choice = int(rng.choice(np.flatnonzero(ok))) if ok.any() else int(np.argmax(dist))
        yaw = yaw_all[choice] if k == 0 else yaws[-1] + np.angle(np.exp(1j * (yaw_all[choice] - yaws[-1])))
        pitch = np.arctan2(targets[choice, 2] - p[2], max(dist[choice], 1e-3))
        yaws.append(yaw)
        pitches.append(np.clip(pitch, *np.radians(cfg.pitch_deg)))
    return np.array(yaws), np.array(pitches)


def _rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(n,3,3) camera-to-world rotations, OpenCV axes (x right, y down, z forward), world z up."""
    f = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], -1)
    r = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros_like(yaw)], -1)
    d = np.cross(f, r)
    c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
    r, d = c * r + s * d, -s * r + c * d
    return np.stack([r, d, f], -1)


def _smooth_noise(rng, t: np.ndarray, amp: float, freqs=(0.3, 0.7, 1.3, 2.1)) -> np.ndarray:
    out = np.zeros_like(t)
    for f in freqs:
        out += np.sin(2 * np.pi * (f * rng.uniform(0.8, 1.2) * t + rng.uniform())) / len(freqs)
    return amp * out * 2


def _start(path: np.ndarray, world: World, targets: np.ndarray) -> tuple[int, int]:
    """Loop index to start from and the target to look at first: the biggest piece, about 2 m away (not one
    whose front is a wall-like plane, which gives tracking too little to hold on to)."""
    bulky = [i for i, o in enumerate(world.obstacles) if np.min(o.hi - o.lo) > 0.2 and o.name not in PLANAR]
    if not bulky:
        return 0, len(world.obstacles)
    big = max(bulky, key=lambda i: float(np.prod(world.obstacles[i].hi - world.obstacles[i].lo)))
    dist = np.linalg.norm(path - targets[big, :2], axis=1)
    return int(np.argmin(np.abs(dist - 2.2))), big


def _candidate(world: World, free, g, targets, n: int, rng, cfg: TrajectoryConfig, core: bool = False):
    """One candidate path of n poses (n,4,4) or None when no loop fits the free space; `core` draws the
    loop's points from the deepest blob of the free space (`_core`)."""
    targets, near = targets
    region = _core(free, g) if core else None
    loop = next((lp for lp in (_loop(free, g, rng, region) for _ in range(30)) if lp is not None), None)
    if loop is None:
        return None
    path, length = loop
    t = np.arange(n) / cfg.fps
    knots = [0.0]
    while knots[-1] < t[-1]:
        knots.append(knots[-1] + rng.uniform(*cfg.knot_s))
    knots = np.array(knots)
    heavy = rng.random(len(knots)) < cfg.heavy_prob
    heavy[0] = False
    slow = heavy | np.concatenate([[False], heavy[:-1]])
    speed = np.where(slow, rng.uniform(*cfg.slow_speed_mps, len(knots)), rng.uniform(*cfg.speed_mps, len(knots)))
    start, first_target = _start(path, world, targets)
    s = start * 0.01 + np.concatenate([[0.0], np.cumsum(PchipInterpolator(knots, speed)(t[:-1]) / cfg.fps)])
    closed = np.vstack([path, path[:1]])
    arc = np.arange(len(closed)) * 0.01
    arc[-1] = length
    xy = np.stack([np.interp(s % length, arc, closed[:, i]) for i in range(2)], 1)
    z = PchipInterpolator(knots, rng.uniform(*cfg.height_m, len(knots)))(t)
    pos = np.column_stack([xy, z])

    def pos_at(tk):
        return pos[min(int(round(tk * cfg.fps)), n - 1)]

    yaw_k, pitch_k = _view_knots(pos_at, knots, targets, near, heavy, first_target, rng, cfg)
    jit = np.radians(cfg.jitter_deg)
    yaw = PchipInterpolator(knots, yaw_k)(t) + _smooth_noise(rng, t, jit, (0.9, 1.7, 2.6))
    pitch = PchipInterpolator(knots, pitch_k)(t) + _smooth_noise(rng, t, jit, (0.8, 1.9, 2.9))
    roll = _smooth_noise(rng, t, np.radians(cfg.roll_deg), (0.07, 0.13, 0.23)) + _smooth_noise(rng, t, jit)
    pos += np.stack([_smooth_noise(rng, t, cfg.jitter_m, (0.7, 1.6, 2.7)) for _ in range(3)], 1)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = _rotation(yaw, pitch, roll)
    poses[:, :3, 3] = pos
    return poses


def motion_per_frame(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (metres) and rotation (degrees) between consecutive poses."""
    step = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    rel = np.einsum("nji,njk->nik", poses[:-1, :3, :3], poses[1:, :3, :3])
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
    return step, np.degrees(np.arccos(cos))


def _bad_frames(poses: np.ndarray, probe, cfg: TrajectoryConfig) -> tuple[int, int]:
    """(frames that break the motion bounds or see a surface nearer than the minimum, probed frames
    whose geometry constrains ICP weakly). Every `probe_every`-th frame is probed."""
    step, rot = motion_per_frame(poses)
    hard = int(np.sum(step > cfg.max_step_m) + np.sum(step * cfg.fps < cfg.min_speed_mps)
               + np.sum(rot > cfg.max_step_deg))
    weak = 0
    normals = probe.world.tri_normals()
    for T in poses[::cfg.probe_every]:
        depth = probe.clean_depth(T)
        near = (depth > 0) & (depth < cfg.min_view_depth_m)
        hard += int(near.mean() > 0.002 or (depth > 0).mean() < 0.98)
        weak += int(_weakest_normal_share(normals[probe.visible_ids()]) < cfg.min_normal_spread)
    return hard, weak


def _weakest_normal_share(n: np.ndarray) -> float:
    """Smallest eigenvalue of the normals' second moment: near 0 when one or two plane directions
    dominate the view (translation along them is unconstrained for point-to-plane ICP)."""
    if len(n) == 0:
        return 0.0
    return float(np.linalg.eigvalsh(n.T @ n / len(n))[0])


def plan_trajectory(world: World, n_frames: int, config: TrajectoryConfig | None = None) -> np.ndarray:
    """(n_frames, 4, 4) T_world_cam poses; a shorter sequence is a prefix of a longer one (same block)."""
    from synth.render import DEFAULT_INTRINSICS, RenderConfig, Renderer

    cfg = config or TrajectoryConfig()
    horizon = max(1, -(-int(n_frames) // cfg.horizon_frames)) * cfg.horizon_frames
    rng = np.random.default_rng([int(world.seed), 0x7A3])
    free, g = free_space(world, cfg)
    targets, near = _targets(world, rng)
    probe = Renderer(world, RenderConfig(intrinsics=DEFAULT_INTRINSICS.scaled(cfg.probe_scale), noise=False))
    best = None
    for attempt in range(cfg.attempts + cfg.core_attempts):
        if attempt >= cfg.attempts and best is not None and best[0][0] == 0:
            break
        core = attempt >= cfg.attempts  # only when the ordinary loops all broke a bound
        poses = _candidate(world, free, g, (targets, near), horizon, rng, cfg, core)
        if poses is None:
            continue
        score = _bad_frames(poses, probe, cfg)
        log.debug("seed %d path attempt %d: %d bad, %d weak frames", world.seed, attempt, *score)
        if best is None or score < best[0]:
            best = (score, poses)
        if score[0] == 0 and score[1] <= cfg.weak_share * len(poses) / cfg.probe_every:
            break
    if best is None:
        raise NoCameraPath(f"synthetic room {world.seed}: no camera path fits its free space")
    if best[0][0]:
        log.warning("synthetic room %d: camera path has %d frames outside its bounds", world.seed, best[0][0])
    return best[1][:n_frames]


def tilted_start(poses: np.ndarray, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """The same path with every camera turned in its own frame by one fixed rotation chosen so that the
    first camera has exactly this pitch and roll (its heading kept): a start that is not upright."""
    R0 = poses[0, :3, :3]
    yaw = np.arctan2(R0[1, 2], R0[0, 2])
    target = _rotation(np.array([yaw]), np.radians([pitch_deg]), np.radians([roll_deg]))[0]
    out = np.array(poses, float)
    out[:, :3, :3] = out[:, :3, :3] @ (R0.T @ target)
    return out
