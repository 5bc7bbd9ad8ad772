"""Owns training data: partial, noisy scans of synthetic rooms fused by the project's own fusion, paired
with the complete labeled room on the nets' grid.

One sample = one seeded room scanned along part of its camera path (a random window of frames), fused
with ground-truth poses at 1 or 2 cm, summarised by `fusion.coarse` into input sites; the target is a
dense box of cells around them holding the signed distance to the complete ground-truth mesh (sign
from the closest triangle's outward normal) and the ScanNet class of the closest triangle.
Augmentation that must happen before voxelisation is done here: any rotation about gravity, a scale,
and a random sub-cell offset of the world. Samples are deterministic given (seed, variant).
"""
from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open3d as o3d
import open3d.core as o3c
from tqdm import tqdm

from storage.atomic import atomic_path
from fusion.coarse import CoarseGridConfig, all_chunk_keys, coarse_region
from fusion.frame import Frame
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.sources.synthetic import SyntheticSource
from fusion.volume import VolumeConfig
from synth.trajectory import NoCameraPath
from nets.cells import CLASS_IDS  # noqa: F401 (class index -> NYU40 id; re-exported for training and scoring)

log = logging.getLogger(__name__)

IGNORE = 255  # target class of surface the app does not label (clutter: books, lamps, boxes)


def nyu40_to_class_index(nyu40: np.ndarray) -> np.ndarray:
    """NYU40 ids -> class index (CLASS_IDS order), IGNORE for anything else."""
    lut = np.full(256, IGNORE, np.uint8)
    lut[CLASS_IDS] = np.arange(len(CLASS_IDS))
    return lut[np.clip(np.asarray(nyu40, np.int64), 0, 255)]


@dataclass(frozen=True)
class SampleConfig:
    """How one training sample is scanned and voxelised."""

    grid: CoarseGridConfig = field(default_factory=CoarseGridConfig)
    path_frames: int = 300                #: length of the room's whole camera path
    window_frames: tuple = (40, 200)      #: a sample fuses a random window of this many frames
    frame_step: int = 2                   #: fuse every n-th frame of the window
    voxel_sizes_m: tuple = (0.01, 0.02)   #: fusion voxel size, drawn per sample
    scale_range: tuple = (0.9, 1.1)       #: world scale, drawn per sample
    target_margin_cells: int = 10         #: target box reaches this far past the input sites
    sdf_clip_cells: float = 3.0           #: stored signed distances are clipped to this


@dataclass(frozen=True)
class Sample:
    """Input sites and the dense target box (immutable once built)."""

    coords: np.ndarray      # (N,3) int32 cells
    features: np.ndarray    # (N,7) float32
    box_lo: np.ndarray      # (3,) int32 first cell of the target box
    sdf_cells: np.ndarray   # (X,Y,Z) float16 signed distance to the ground truth, in cells
    label: np.ndarray       # (X,Y,Z) uint8 class index of the closest ground-truth triangle

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, coords=self.coords, features=self.features, box_lo=self.box_lo,
                                    sdf_cells=self.sdf_cells, label=self.label)

    @staticmethod
    def load(path: Path) -> "Sample":
        with np.load(path) as z:
            return Sample(z["coords"], z["features"], z["box_lo"], z["sdf_cells"], z["label"])


def _world_transform(rng: np.random.Generator, cfg: SampleConfig) -> tuple[np.ndarray, float]:
    """Random rigid yaw + sub-cell shift (4x4) and a scale."""
    yaw = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(yaw), np.sin(yaw)
    A = np.eye(4)
    A[:2, :2] = [[c, -s], [s, c]]
    A[:3, 3] = rng.uniform(0, cfg.grid.voxel_size_m, 3)
    return A, float(rng.uniform(*cfg.scale_range))


def _scaled_frame(frame: Frame, A: np.ndarray, scale: float) -> Frame:
    T = np.asarray(frame.T_world_cam_gt, np.float64).copy()
    T[:3, 3] *= scale
    return Frame(frame.color, (frame.depth_m * scale).astype(np.float32), frame.intrinsics,
                 frame.timestamp_s, frame.index, A @ T)


def fuse_partial_scan(seed: int, variant: int, cfg: SampleConfig):
    """(pipeline, world vertices transformed, world) for one partial scan."""
    rng = np.random.default_rng([int(seed), int(variant), 0xDA7A])
    src = SyntheticSource(seed, n_frames=cfg.path_frames)
    n = int(rng.integers(cfg.window_frames[0], cfg.window_frames[1] + 1))
    start = int(rng.integers(0, cfg.path_frames - n + 1))
    A, scale = _world_transform(rng, cfg)
    vs = float(rng.choice(cfg.voxel_sizes_m))
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=vs), poses="gt",
                                         incremental_mesh=False))
    for i in range(start, start + n, cfg.frame_step):
        pipe.process(_scaled_frame(src.frame(i), A, scale))
    src.close()
    verts = (src.world.vertices.astype(np.float64) * scale) @ A[:3, :3].T + A[:3, 3]
    return pipe, verts.astype(np.float32), src.world


def closest_surface(verts: np.ndarray, tris: np.ndarray, tri_class: np.ndarray, points_m: np.ndarray):
    """(signed distance m, class index) of each point to the mesh; sign from the closest face normal."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3c.Tensor(verts), o3c.Tensor(tris.astype(np.uint32)))
    q = scene.compute_closest_points(o3c.Tensor(points_m.astype(np.float32)))
    closest = q["points"].numpy()
    normal = q["primitive_normals"].numpy()
    tri = q["primitive_ids"].numpy().astype(np.int64)
    d = points_m - closest
    dist = np.linalg.norm(d, axis=1)
    sign = np.where(np.einsum("ij,ij->i", d, normal) < 0, -1.0, 1.0)
    return (sign * dist).astype(np.float32), tri_class[tri]


def make_sample(seed: int, variant: int, cfg: SampleConfig = SampleConfig()) -> Sample:
    """Scan, fuse and voxelise room `seed` (variant picks the window and augmentation)."""
    pipe, verts, world = fuse_partial_scan(seed, variant, cfg)
    grid = cfg.grid
    region = coarse_region(pipe.volume, all_chunk_keys(pipe.volume, grid), grid, halo_voxels=0)
    pipe.close()
    m = cfg.target_margin_cells
    lo = region.coords.min(0) - m
    hi = region.coords.max(0) + m + 1
    axes = [np.arange(a, b) for a, b in zip(lo, hi)]
    cells = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    centres = (cells + 0.5) * grid.voxel_size_m
    tri_class = nyu40_to_class_index(world.tri_labels)
    sdf_m, label = closest_surface(verts, world.triangles, tri_class, centres)
    shape = tuple(hi - lo)
    sdf = np.clip(sdf_m / grid.voxel_size_m, -cfg.sdf_clip_cells, cfg.sdf_clip_cells)
    return Sample(region.coords, region.features, lo.astype(np.int32), sdf.reshape(shape).astype(np.float16),
                  label.reshape(shape).astype(np.uint8))


def build_dataset(out_dir: Path, seeds, variants: int, cfg: SampleConfig = SampleConfig(),
                  workers: int = 1, progress: bool = True) -> list[Path]:
    """Write `seed_variant.npz` for each pair not already there (resumable); returns the paths written
    now or before. A room that cannot be scanned (no camera path fits it) is left out with a warning."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(s, v) for s in seeds for v in range(variants)]
    todo = [(s, v) for s, v in jobs if not (out_dir / f"{s}_{v}.npz").exists()]
    if todo:
        bar = tqdm(total=len(todo), desc="scanning rooms", unit="scan", disable=not progress)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_write_one, (out_dir, s, v, cfg)): (s, v) for s, v in todo}
            for done in as_completed(futures):
                try:
                    done.result()
                except NoCameraPath as exc:
                    log.warning("room %d variant %d left out: %s", *futures[done], exc)
                bar.update()
        bar.close()
    return [p for p in (out_dir / f"{s}_{v}.npz" for s, v in jobs) if p.exists()]


def _write_one(job) -> None:
    out_dir, seed, variant, cfg = job
    make_sample(seed, variant, cfg).save(out_dir / f"{seed}_{variant}.npz")
