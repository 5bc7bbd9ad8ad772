"""Owns the real-room check of the labeling nets: a ScanNet room's labeled points -> surface -> rendered RGB-D -> reconstruct -> per-vertex mIoU.

The room (`scene0451_01_nyu40.ply` in `../shared/data/scannet-scene0451_01-points/`: coloured points,
z up, floor at z = 0, NYU40 `label`, `instance`) is turned into a surface (Poisson, trimmed where it
strays from the points; vertex colours kept, labels by nearest point) and rendered along a hand-held
path (`synth.trajectory`, obstacles from the instances) with the project's rasterizer and depth
sensor model. The frames are written twice: in the synthetic layout with the ground-truth poses
(`posed/`, reconstructed with `--poses gt`) and as an Open3D/Redwood folder with no poses (`unposed/`,
sharing `posed/`'s images; tracking starts from the identity, the first camera's tilted frame, as with
a RealSense). Both are reconstructed with `--labels final` and every `mesh.ply` vertex is scored against
the label of its nearest point (ignored: label 0, or no point within `match_distance_m`). Output
vertices map to the points' frame by T_gt_first_cam @ inv(T_out_first_cam) (first line of
`trajectory.txt`), so the score stays right whatever world frame reconstruct chooses.
The data may not be redistributed: everything generated goes to the caller's output folder, never the
repository. Functions keep no state; call them from one thread.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from fusion.classes import SCANNET20
from fusion.errors import UserError
from fusion.frame import Frame
from fusion.sources.base import PosedSequenceSource
from synth.primitives import PLAIN
from synth.render import DEFAULT_INTRINSICS, RenderConfig, Renderer
from synth.trajectory import TrajectoryConfig, plan_trajectory
from synth.world import Obstacle, World
from fusion.trajectory import ate_rmse_m, read_tum

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "scannet-scene0451_01-points"
POINTS_FILE = "scene0451_01_nyu40.ply"
STRUCTURE = (1, 2, 22)  # wall, floor, ceiling: never obstacles for the camera path
VARIANTS = {"gt": "posed", "track": "unposed"}  # --poses mode -> folder it reads
CLASS_IDS = np.array(sorted(SCANNET20), np.int64)


@dataclass(frozen=True)
class RealRoomConfig:
    """How the real room is meshed, rendered, reconstructed and scored."""

    frames: int = 300                     #: frames rendered along the camera path (30 per second)
    image_scale: float = 1.0              #: render size relative to 640x480
    path_seed: int = 451                  #: seed of the camera path and the sensor noise
    camera_height_m: tuple = (1.3, 1.6)   #: hand-held camera height range
    pitch_deg: tuple = (-35.0, -15.0)     #: camera pitch range (negative: looking down)
    planning_cell_m: float = 0.06         #: the path planner probes a surface simplified to this cell size
    normal_radius_m: float = 0.1          #: neighbourhood radius of the point normals
    normal_max_nn: int = 30               #: at most this many neighbours per normal
    poisson_depth: int = 9                #: octree depth of the Poisson surface (9: about 1 cm cells here)
    trim_density_quantile: float = 0.02   #: drop Poisson vertices with the lowest density (this share)
    trim_distance_m: float = 0.05         #: drop Poisson vertices farther than this from every point
    max_obstacle_share: float = 0.4       #: an instance covering more of the floor is structure, not furniture
    ambient: float = 1.0                  #: render light: 1 with no lamps keeps the scanned colours as they are
    voxel_size_m: float = 0.01            #: reconstruct's voxel size
    match_distance_m: float = 0.05        #: a vertex farther than this from every point is not scored
    progress: bool = True                 #: show progress bars


@dataclass(frozen=True)
class RoomPoints:
    """The labeled points (immutable): xyz_m (N,3) float32, rgb (N,3) uint8, labels (N,) uint16 NYU40
    (0 = outside ScanNet-20), instances (N,) int32."""

    xyz_m: np.ndarray
    rgb: np.ndarray
    labels: np.ndarray
    instances: np.ndarray


def points_path(data: Path | str | None = None) -> Path:
    """The points file: `data` itself, or POINTS_FILE inside the folder `data` (default DATA_DIR)."""
    path = Path(data) if data is not None else DATA_DIR
    path = path / POINTS_FILE if path.is_dir() or path.suffix != ".ply" else path
    if not path.is_file():
        raise UserError(f"{path}: ScanNet room points are missing (the real-room check needs "
                        f"../shared/data/scannet-scene0451_01-points/{POINTS_FILE} beside the checkout)")
    return path


def read_points(path: Path) -> RoomPoints:
    """The labeled points of `path` (binary PLY with x,y,z, red,green,blue, label and optional instance)."""
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"].data
        xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
        rgb = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.uint8)
        labels = v["label"].astype(np.uint16)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot read the room points ({type(exc).__name__}: {exc})") from None
    inst = v["instance"].astype(np.int32) if "instance" in v.dtype.names else np.zeros(len(v), np.int32)
    labels = np.where(np.isin(labels, CLASS_IDS), labels, 0).astype(np.uint16)
    return RoomPoints(xyz, rgb, labels, inst)


def _poisson(points: RoomPoints, cfg: RealRoomConfig):
    """Open3D Poisson mesh of the points (normals toward the room's middle at camera height) and densities."""
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.xyz_m.astype(np.float64)))
    pc.colors = o3d.utility.Vector3dVector(points.rgb / 255.0)
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(cfg.normal_radius_m, cfg.normal_max_nn))
    lo, hi = points.xyz_m.min(0), points.xyz_m.max(0)
    inside = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, np.mean(cfg.camera_height_m)])
    pc.orient_normals_towards_camera_location(inside)
    mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(
        pc, depth=cfg.poisson_depth, n_threads=os.cpu_count() or 1)
    return mesh, np.asarray(density)


def build_surface(points: RoomPoints, cfg: RealRoomConfig) -> World:
    """The room as a renderable World: trimmed Poisson surface, scanned colours, nearest-point labels."""
    mesh, density = _poisson(points, cfg)
    tree = cKDTree(points.xyz_m)
    dist, _ = tree.query(np.asarray(mesh.vertices))
    keep = (dist <= cfg.trim_distance_m) & (density > np.quantile(density, cfg.trim_density_quantile))
    mesh.remove_vertices_by_mask(~keep)
    mesh.remove_unreferenced_vertices()
    verts = np.asarray(mesh.vertices, np.float32)
    tris = np.asarray(mesh.triangles, np.int32)
    _, nearest = tree.query(verts)
    colors = np.clip(np.round(np.asarray(mesh.vertex_colors) * 255), 0, 255).astype(np.uint8)
    log.info("real room surface: %d vertices, %d triangles (%.0f%% of the Poisson vertices kept)",
             len(verts), len(tris), 100 * keep.mean())
    return World(cfg.path_seed, "scannet-room", points.xyz_m.max(0).astype(float), verts, tris,
                 points.labels[nearest], colors, np.full(len(tris), PLAIN, np.uint8),
                 np.zeros((len(tris), 2), np.float32), _obstacles(points, cfg))


def _obstacles(points: RoomPoints, cfg: RealRoomConfig) -> tuple:
    """Bounds of every instance that is furniture (not wall/floor/ceiling, not spanning the room)."""
    span = points.xyz_m.max(0) - points.xyz_m.min(0)
    out = []
    for inst in np.unique(points.instances):
        sel = points.instances == inst
        label = int(np.bincount(points.labels[sel]).argmax())
        lo, hi = points.xyz_m[sel].min(0), points.xyz_m[sel].max(0)
        if label in STRUCTURE or np.prod((hi - lo)[:2]) > cfg.max_obstacle_share * np.prod(span[:2]):
            continue
        out.append(Obstacle(SCANNET20.get(label, ("object",))[0], lo, hi))
    return tuple(out)


def _planning_world(world: World, shift_m: np.ndarray, cell_m: float) -> World:
    """`world` moved by -shift_m and simplified (vertex clustering at cell_m) for the path's probe renders."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(world.vertices.astype(np.float64)),
                                     o3d.utility.Vector3iVector(world.triangles))
    mesh = mesh.simplify_vertex_clustering(cell_m)
    verts = (np.asarray(mesh.vertices) - shift_m).astype(np.float32)
    tris = np.asarray(mesh.triangles, np.int32)
    return dataclasses.replace(
        world, size_m=world.size_m - shift_m, vertices=verts, triangles=tris,
        vertex_labels=np.zeros(len(verts), np.uint16), vertex_colors=np.zeros((len(verts), 3), np.uint8),
        tri_materials=np.full(len(tris), PLAIN, np.uint8), tri_tex_offset=np.zeros((len(tris), 2), np.float32),
        obstacles=tuple(Obstacle(o.name, o.lo - shift_m, o.hi - shift_m) for o in world.obstacles))


def plan_path(world: World, cfg: RealRoomConfig) -> np.ndarray:
    """(frames, 4, 4) T_world_cam along the synthetic rooms' hand-held path planner, run with the
    room's corner moved to the origin (as the planner expects) on a simplified copy of the surface."""
    shift = np.append(world.vertices.min(0)[:2], 0.0)
    traj = TrajectoryConfig(height_m=cfg.camera_height_m, pitch_deg=cfg.pitch_deg,
                            horizon_frames=cfg.frames)
    log.info("planning %d frames of camera path; real scans have holes, so the planner's count of frames "
             "'outside its bounds' (views with missing depth) is expected here", cfg.frames)
    poses = plan_trajectory(_planning_world(world, shift, cfg.planning_cell_m), cfg.frames, traj)
    poses[:, :3, 3] += shift
    return poses


class RoomSource(PosedSequenceSource):
    """The room rendered along `poses` with the project's sensor model. Used by one thread at a time."""

    kind = "real-room"

    def __init__(self, world: World, poses: np.ndarray, cfg: RealRoomConfig):
        self.world, self.poses, self.n_frames = world, poses, len(poses)
        self.intrinsics = DEFAULT_INTRINSICS.scaled(cfg.image_scale)
        self.fps, self.seed = TrajectoryConfig().fps, cfg.path_seed
        self._renderer = Renderer(world, RenderConfig(intrinsics=self.intrinsics, ambient=cfg.ambient,
                                                      light_power=0.0))

    def describe(self) -> dict:
        return {"kind": self.kind, "frames": self.n_frames}

    def frame(self, index: int) -> Frame:
        res = self._renderer.render(self.poses[index], self.seed, index)
        return Frame(res.color, res.depth_m, self.intrinsics, index / self.fps, index, self.poses[index].copy())


def write_variants(source: RoomSource, out_dir: Path, progress: bool = True) -> dict:
    """Write `posed/` (synthetic layout, ground-truth poses) and `unposed/` (Open3D layout, no poses,
    the same images); returns {poses mode: folder}."""
    from tqdm import tqdm

    from synth.writer import write_frames

    posed, unposed = out_dir / VARIANTS["gt"], out_dir / VARIANTS["track"]
    with tqdm(total=len(source), desc="render", unit="frame", disable=not progress) as bar:
        write_frames(source, posed, {"seed": source.seed, "room_type": source.world.room_type},
                     lambda i, n: bar.update(1))
    unposed.mkdir(parents=True, exist_ok=True)
    for name in ("color", "depth"):
        link = unposed / name
        if link.is_symlink() or link.exists():
            shutil.rmtree(link) if link.is_dir() and not link.is_symlink() else link.unlink()
        try:
            link.symlink_to(Path("..") / posed.name / name, target_is_directory=True)
        except OSError:  # no symlinks here (e.g. Windows without the privilege): copy
            shutil.copytree(posed / name, link)
    K = source.intrinsics
    matrix = [K.fx, 0.0, 0.0, 0.0, K.fy, 0.0, K.cx, K.cy, 1.0]  # column-major, Open3D's convention
    (unposed / "intrinsic.json").write_text(json.dumps(
        {"width": K.width, "height": K.height, "intrinsic_matrix": matrix}) + "\n")
    return {mode: out_dir / folder for mode, folder in VARIANTS.items()}


def reconstruct_variant(src_dir: Path, out_dir: Path, poses: str, model, cfg: RealRoomConfig) -> dict:
    """`main.py reconstruct SRC --poses POSES --labels final` in this process; returns its stats."""
    from fusion.pipeline import PipelineConfig
    from fusion.reconstruct import ReconstructRequest, reconstruct
    from fusion.volume import VolumeConfig
    from nets.reconstruct_labels import label_hook_factory

    pipeline = PipelineConfig(volume=VolumeConfig(voxel_size_m=cfg.voxel_size_m), poses=poses)
    return reconstruct(ReconstructRequest(str(src_dir), out_dir, pipeline, labels="final", progress=cfg.progress,
                                          label_hook=label_hook_factory("final", model)))


def output_to_gt(trajectory_txt: Path, T_gt_first_cam: np.ndarray) -> np.ndarray:
    """4x4 taking reconstruct's world to the points' frame: T_gt_first_cam @ inv(T_out_first_cam)."""
    _, poses = read_tum(trajectory_txt)
    if len(poses) == 0:
        raise UserError(f"{trajectory_txt}: holds no pose")
    return np.asarray(T_gt_first_cam, np.float64) @ np.linalg.inv(poses[0])


def vertex_scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    """ScanNet-20 IoU per class present in `gt` (NYU40 ids; ground truth outside the 20 classes is left
    out), mIoU and accuracy; a prediction outside the 20 classes (unlabeled, ceiling) only counts as a miss."""
    k = len(CLASS_IDS)
    lut = np.full(65536, k, np.int64)
    lut[CLASS_IDS] = np.arange(k)
    g, p = lut[np.asarray(gt, np.int64)], lut[np.asarray(pred, np.int64)]
    scored = g < k  # ground truth outside the 20 classes (the ceiling, unlabeled) is not scored, as ScanNet's
    g, p = g[scored], p[scored]
    conf = np.zeros((k, k + 1), np.int64)
    np.add.at(conf, (g, p), 1)
    tp = np.diag(conf[:, :k]).astype(float)
    union = conf.sum(1) + conf[:, :k].sum(0) - tp
    present = np.flatnonzero(conf.sum(1) > 0)
    iou = {int(CLASS_IDS[i]): float(tp[i] / union[i]) for i in present}
    return {"miou": float(np.mean(list(iou.values()))) if iou else float("nan"), "class_iou": iou,
            "accuracy": float(tp.sum() / max(1, conf.sum())), "vertices_scored": int(conf.sum()),
            "confusion": {int(CLASS_IDS[i]): {int(CLASS_IDS[j]) if j < k else 0: int(conf[i, j])
                                              for j in np.flatnonzero(conf[i])} for i in present}}


def score_mesh(mesh_ply: Path, points: RoomPoints, T_gt_out: np.ndarray, cfg: RealRoomConfig) -> dict:
    """Scores of mesh.ply's vertex labels (mapped by T_gt_out) against their nearest point's label."""
    from storage.plyio import read_labeled_ply

    mesh = read_labeled_ply(mesh_ply)
    return score_vertices(mesh["xyz_m"], mesh["labels"], points, T_gt_out, cfg)


def score_vertices(xyz_m: np.ndarray, labels: np.ndarray, points: RoomPoints, T_gt_out: np.ndarray,
                   cfg: RealRoomConfig) -> dict:
    """Scores of vertex labels (vertices mapped by T_gt_out) against their nearest point's label."""
    xyz = np.asarray(xyz_m, np.float64).reshape(-1, 3) @ T_gt_out[:3, :3].T + T_gt_out[:3, 3]
    dist, idx = cKDTree(points.xyz_m).query(xyz, distance_upper_bound=cfg.match_distance_m)
    matched = np.isfinite(dist)
    gt = points.labels[idx[matched]]
    keep = gt > 0
    scores = vertex_scores(np.asarray(labels)[matched][keep], gt[keep])
    scores["vertices"] = int(len(xyz))
    scores["matched_share"] = float(matched.mean()) if len(xyz) else 0.0
    scores["unlabeled_share"] = float(np.mean(np.asarray(labels) == 0)) if len(xyz) else 0.0
    return scores


def trajectory_scores(trajectory_txt: Path, poses_gt: np.ndarray, T_gt_out: np.ndarray) -> dict:
    """ATE (rigidly aligned) and the position error after the first-pose mapping alone, in metres."""
    _, poses = read_tum(trajectory_txt)
    n = min(len(poses), len(poses_gt))
    mapped = np.einsum("ij,njk->nik", T_gt_out, poses[:n])
    drift = np.linalg.norm(mapped[:, :3, 3] - poses_gt[:n, :3, 3], axis=1)
    return {"ate_rmse_m": ate_rmse_m(poses[:n], poses_gt[:n]) if n >= 3 else float("nan"),
            "mapped_position_error_m": {"median": float(np.median(drift)), "max": float(drift.max())}}


def run_real_room(out_dir: Path, model, cfg: RealRoomConfig = RealRoomConfig(), data: Path | None = None) -> dict:
    """The whole check into `out_dir` (outside the repository); returns scores per poses mode."""
    out_dir = Path(out_dir).resolve()
    if out_dir == ROOT or ROOT in out_dir.parents:
        raise UserError(f"{out_dir}: keep the real-room frames outside the repository (ScanNet's terms "
                        "forbid redistributing them); give a temporary folder")
    points = read_points(points_path(data))
    world = build_surface(points, cfg)
    source = RoomSource(world, plan_path(world, cfg), cfg)
    folders = write_variants(source, out_dir, cfg.progress)
    result = {"frames": cfg.frames, "image_size": [source.intrinsics.width, source.intrinsics.height],
              "surface": {"vertices": len(world.vertices), "triangles": len(world.triangles)}, "variants": {}}
    for mode, src in folders.items():
        rec = out_dir / f"reconstruct_{VARIANTS[mode]}"
        stats = reconstruct_variant(src, rec, mode, model, cfg)
        T_gt_out = output_to_gt(rec / "trajectory.txt", source.poses[0])
        result["variants"][mode] = (score_mesh(rec / "mesh.ply", points, T_gt_out, cfg)
                                    | trajectory_scores(rec / "trajectory.txt", source.poses, T_gt_out)
                                    | {"out": str(rec), "T_gt_out": T_gt_out.round(6).tolist(),
                                       "frames_dropped": stats["frames_dropped"]})
    return result


def table(result: dict) -> str:
    """Per-class IoU, mIoU and accuracy of both variants side by side."""
    modes = list(result["variants"])
    v = result["variants"]
    heads = {"gt": "GT poses", "track": "tracked"}
    rows = [f"{'class':<16}" + "".join(f"{heads.get(m, m):>12}" for m in modes)]
    classes = sorted({c for m in modes for c in v[m]["class_iou"]})
    for c in classes:
        rows.append(f"{SCANNET20[c][0]:<16}" + "".join(
            f"{v[m]['class_iou'][c]:>12.3f}" if c in v[m]["class_iou"] else f"{'-':>12}" for m in modes))
    for key, name, fmt in (("miou", "mIoU", ".3f"), ("accuracy", "accuracy", ".3f"),
                           ("vertices_scored", "vertices scored", "d"), ("unlabeled_share", "unlabeled", ".3f"),
                           ("ate_rmse_m", "ATE (m)", ".3f")):
        rows.append(f"{name:<16}" + "".join(f"{v[m][key]:>12{fmt}}" for m in modes))
    if all("phase_miou" in v[m] for m in modes):
        for i in range(len(v[modes[0]]["phase_miou"])):
            rows.append(f"{f'mIoU, phase {i}':<16}" + "".join(f"{v[m]['phase_miou'][i]:>12.3f}" for m in modes))
        rows.append(f"{'mIoU, mean':<16}" + "".join(f"{v[m]['phase_miou_mean']:>12.3f}" for m in modes))
    return "\n".join(rows)
