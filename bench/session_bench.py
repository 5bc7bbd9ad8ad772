"""Owns the session/export benchmark: time and size of every export format and of session save/load
for a whole synthetic room.

The room is fused from the synthetic source with ground-truth poses (the room, not tracking, is what
is measured); vertex labels are the synthetic world's own (nearest world triangle), so every class
group, material and legend entry is real. Prints a table and writes bench/results/session.json.
Run: `.venv/bin/python -m bench.session_bench [--frames 300] [--voxel-size 0.01]`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402

from storage.export import (LabeledMesh, face_labels, label_colors, write_legend, write_obj,  # noqa: E402
                           write_point_cloud)
from storage.export_gltf import write_glb  # noqa: E402
from fusion.pipeline import FusionPipeline, PipelineConfig  # noqa: E402
from storage.plyio import write_labeled_ply  # noqa: E402
from storage.session import capture_session, load_session, save_session  # noqa: E402
from fusion.sources.synthetic import SyntheticSource  # noqa: E402
from fusion.trajectory import write_tum  # noqa: E402
from fusion.volume import VolumeConfig  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SessionBenchConfig:
    seed: int = 7                 #: synthetic room
    frames: int = 300             #: frames fused (the default path covers the whole room)
    voxel_size_m: float = 0.01    #: voxel edge
    repeats: int = 3              #: timings are the median of this many runs


def fuse_room(cfg: SessionBenchConfig):
    """(pipeline, stamps, poses, world) after fusing the room with ground-truth poses."""
    source = SyntheticSource(cfg.seed, n_frames=cfg.frames)
    pipeline = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=cfg.voxel_size_m, device="cpu"),
                                             poses="gt"))
    stamps, poses = [], []
    t0 = time.perf_counter()
    for frame in source:
        r = pipeline.process(frame)
        stamps.append(r.timestamp_s)
        poses.append(r.T_world_cam)
    log.warning("fused %d frames in %.1f s", cfg.frames, time.perf_counter() - t0)
    world = source.world
    source.close()
    return pipeline, np.array(stamps), np.array(poses), world


def world_labels(world, positions_m: np.ndarray) -> np.ndarray:
    """NYU40 label of the nearest world triangle of every vertex."""
    import open3d as o3d
    import open3d.core as o3c

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3c.Tensor(world.vertices.astype(np.float32)), o3c.Tensor(world.triangles.astype(np.uint32)))
    ids = scene.compute_closest_points(o3c.Tensor(positions_m.astype(np.float32)))["primitive_ids"].numpy()
    return world.tri_labels[ids].astype(np.uint16)


def _writers(mesh: LabeledMesh, stamps, poses) -> dict:
    """Format name -> (file name, function writing it to a path)."""
    fl = face_labels(mesh.faces, mesh.labels)
    return {
        "PLY (ScanNet)": ("room.ply", lambda p: write_labeled_ply(
            p, mesh.positions_m, mesh.colors, mesh.labels, mesh.faces)),
        "PLY (label colours)": ("room_labels.ply", lambda p: write_labeled_ply(
            p, mesh.positions_m, label_colors(mesh.labels), mesh.labels, mesh.faces)),
        "GLB": ("room.glb", lambda p: write_glb(p, mesh.positions_m, mesh.colors, mesh.labels, mesh.faces, fl,
                                                mesh.normals, False)),
        "GLB (mesh per class)": ("room_split.glb", lambda p: write_glb(
            p, mesh.positions_m, mesh.colors, mesh.labels, mesh.faces, fl, mesh.normals, True)),
        "OBJ + MTL": ("room.obj", lambda p: write_obj(p, mesh)),
        "point cloud PLY": ("room_points.ply", lambda p: write_point_cloud(p, mesh)),
        "trajectory (TUM)": ("room_trajectory.txt", lambda p: write_tum(p, stamps, poses)),
        "labels.json": ("labels.json", lambda p: write_legend(p, mesh)),
    }


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_exports(mesh: LabeledMesh, stamps, poses, folder: Path, repeats: int) -> list[dict]:
    rows = []
    for fmt, (name, write) in _writers(mesh, stamps, poses).items():
        path = folder / name
        seconds = _median_s(lambda: write(path), repeats)
        size = path.stat().st_size + (path.with_suffix(".mtl").stat().st_size if name.endswith(".obj") else 0)
        rows.append({"item": fmt, "seconds": seconds, "bytes": size})
    return rows


def bench_session(pipeline, stamps, poses, labels: np.ndarray, folder: Path, repeats: int) -> list[dict]:
    path = folder / "room.session"
    extras = {"vertex_labels": labels}  # stands in for the label store's arrays until sessions hold it
    save_s = _median_s(lambda: save_session(path, pipeline, stamps, poses, {"kind": "synthetic"}, {}, extras), repeats)
    capture_s = _median_s(lambda: capture_session(pipeline, stamps, poses, {"kind": "synthetic"}, {}, extras), repeats)
    loaded = []

    def load():
        s = load_session(path)
        s.pipeline.close()
        loaded.append(s.manifest)

    load_s = _median_s(load, repeats)
    size = path.stat().st_size
    return [{"item": "session save", "seconds": save_s, "bytes": size},
            {"item": "autosave pause (capture only)", "seconds": capture_s, "bytes": 0},
            {"item": "session load (+ full re-mesh)", "seconds": load_s, "bytes": size}]


def print_table(rows) -> None:
    print(f"{'item':<30} | {'seconds':>8} | {'MB':>8}")
    for r in rows:
        print(f"{r['item']:<30} | {r['seconds']:>8.3f} | {r['bytes'] / 1e6:>8.2f}")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=SessionBenchConfig.seed)
    p.add_argument("--frames", type=int, default=SessionBenchConfig.frames)
    p.add_argument("--voxel-size", type=float, default=SessionBenchConfig.voxel_size_m)
    p.add_argument("--repeats", type=int, default=SessionBenchConfig.repeats)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "session.json")
    args = p.parse_args(argv)
    cfg = SessionBenchConfig(args.seed, args.frames, args.voxel_size, args.repeats)
    pipeline, stamps, poses, world = fuse_room(cfg)
    try:
        mesh = pipeline.final_mesh()
        labeled = LabeledMesh.from_mesh(mesh, world_labels(world, mesh.positions_m))
        with tempfile.TemporaryDirectory(prefix="session_bench_") as tmp:
            rows = bench_exports(labeled, stamps, poses, Path(tmp), cfg.repeats)
            rows += bench_session(pipeline, stamps, poses, labeled.labels, Path(tmp), cfg.repeats)
        scene = {"seed": cfg.seed, "room_type": world.room_type, "frames": cfg.frames, "voxel_size_m": cfg.voxel_size_m,
                 "blocks": pipeline.volume.n_blocks, "vertices": int(len(mesh.positions_m)),
                 "faces": int(len(mesh.faces)), "classes": sorted(int(c) for c in np.unique(labeled.labels))}
    finally:
        pipeline.close()
    print(f"room {scene['seed']} ({scene['room_type']}): {scene['frames']} frames, {scene['voxel_size_m'] * 100:g} cm "
          f"voxels, {scene['blocks']} blocks, {scene['vertices']} vertices, {scene['faces']} faces")
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scene": scene, "rows": rows, "cpu_count": os.cpu_count(),
                                    "python": platform.python_version()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
