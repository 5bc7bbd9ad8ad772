"""Owns the headless `reconstruct` command: run a source through the pipeline, write mesh, trajectory, stats, session.

Whatever was fused is written even when the source fails or the user interrupts mid-sequence.
Labels come from a `LabelHook` the caller builds (main.py, from nets/; fusion never imports nets):
it sees every frame on this (the fusion) thread, finishes after the last one, then labels the mesh
vertices, gives the completion layer (`completed.ply`, always written, empty without labels), its
statistics and the arrays the session keeps.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from storage.atomic import write_text_atomic
from fusion.errors import SourceError, UserError
from fusion.meshing import MeshArrays
from fusion.pipeline import FrameResult, FusionPipeline, PipelineConfig
from storage.plyio import write_labeled_ply
from storage.session import save_session
from fusion.sources import open_source
from fusion.sources.stall import StallGuardConfig, guarded_frames
from fusion.trajectory import ate_rmse_m, write_tum

log = logging.getLogger(__name__)
STAGES = ("read", "track", "track_render", "track_icp", "integrate", "mesh", "gravity", "snapshot", "loops")
LABEL_MODES = ("none", "incremental", "final")


class LabelHook(Protocol):
    """The labeler `reconstruct` drives. Thread: the reconstruct (fusion) thread calls every method."""

    def on_frame(self, result: FrameResult) -> None: ...          # after each processed frame
    def finish(self, interrupted: bool) -> None: ...              # after the last frame (drain)
    def vertex_labels(self, mesh: MeshArrays) -> np.ndarray: ...  # (N,) uint16 NYU40 per vertex of the whole mesh
    def completed_mesh(self) -> tuple[MeshArrays, np.ndarray]: ...      # mesh, (V,) uint16 labels
    def extras(self) -> dict: ...                                  # arrays for the session
    def stats(self) -> dict: ...                                   # goes into stats.json["label_work"]
    def close(self) -> None: ...                                   # stop any thread it runs


@dataclass(frozen=True)
class ReconstructRequest:
    source: str
    out_dir: Path
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    max_frames: int | None = None
    labels: str = "none"            #: none | incremental | final
    progress: bool = True
    label_hook: Callable[[FusionPipeline], LabelHook] | None = None  #: builds the labeler (labels != none)
    stall: StallGuardConfig = field(default_factory=StallGuardConfig)  #: when a silent source has stalled


@dataclass
class _Run:
    results: list = field(default_factory=list)
    gt: list = field(default_factory=list)
    read_ms: list = field(default_factory=list)
    error: Exception | None = None
    interrupted: bool = False
    wall_s: float = 0.0


def percentiles_ms(values) -> dict:
    v = np.asarray(values, float)
    if len(v) == 0:
        return {}
    return {f"p{p}": round(float(np.percentile(v, p)), 2) for p in (50, 90, 95, 99)} | {
        "mean": round(float(v.mean()), 2), "max": round(float(v.max()), 2)}


def _progress(total):
    """A progress bar; `total` 0 (live sources, recordings) shows a count and rate without a total."""
    from tqdm import tqdm

    return tqdm(total=total or None, unit="frame", desc="reconstruct", dynamic_ncols=True, leave=True)


def _fuse(source, pipeline: FusionPipeline, show_progress: bool, hook: LabelHook | None,
          stall: StallGuardConfig = StallGuardConfig()) -> _Run:
    run = _Run()
    bar = _progress(len(source)) if show_progress else None
    T_start = source.first_gt_pose()
    t_start = time.perf_counter()
    it = guarded_frames(source, stall)
    try:
        while True:
            t0 = time.perf_counter()
            frame = next(it, None)
            if frame is None:
                break
            run.read_ms.append((time.perf_counter() - t0) * 1e3)
            res = pipeline.process(frame, T_start=None if T_start is None else np.asarray(T_start))
            run.results.append(res)
            run.gt.append(frame.T_world_cam_gt)
            if hook is not None:
                hook.on_frame(res)
            if bar is not None:
                bar.set_postfix(track=res.state, blocks=res.n_blocks, refresh=False)
                bar.update(1)
    except SourceError as exc:
        run.error = exc
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        it.close()
        run.wall_s = time.perf_counter() - t_start
        if bar is not None:
            bar.close()
    return run


def _frame_poses(run: _Run) -> list:
    """One pose per frame: the integrated pose, else the last good one (frames before the first
    integrated one take its pose); empty when no frame was integrated."""
    first = next((r.T_world_cam for r in run.results if r.T_world_cam is not None), None)
    if first is None:
        return []
    poses, last = [], first
    for r in run.results:
        last = r.T_world_cam if r.T_world_cam is not None else last
        poses.append(last)
    return poses


def _trajectory(run: _Run) -> tuple[list, list]:
    """(timestamps, poses) of the written trajectory: one line per frame (see `_frame_poses`)."""
    poses = _frame_poses(run)
    return [r.timestamp_s for r in run.results][:len(poses)], poses


def _stats(req: ReconstructRequest, source, pipeline: FusionPipeline, run: _Run, mesh, poses: list) -> dict:
    """The statistics of stats.json; `poses` are the written trajectory's (one per frame)."""
    import open3d

    res = run.results
    n = len(res)
    integrated = [r for r in res if r.integrated]
    stages = {"read": run.read_ms} | {s: [r.timings_ms[s] for r in res if s in r.timings_ms] for s in STAGES[1:]}
    stats = {
        "source": source.describe(),
        "frames": n,
        "frames_integrated": len(integrated),
        "frames_dropped": n - len(integrated),
        "fps": round(n / run.wall_s, 3) if run.wall_s > 0 else 0.0,
        "wall_s": round(run.wall_s, 3),
        "timing_ms": {k: percentiles_ms(v) for k, v in stages.items() if v},
        "tracking_failures": pipeline.tracker.failures,
        "tracking_losses": pipeline.tracker.losses,
        "relocalisations": pipeline.tracker.relocalisations,
        "fast_motion_recoveries": pipeline.tracker.fast_recoveries,
        "poses": req.pipeline.poses,
        "labels": req.labels,
        "label_latency_s": None,
        "label_work": None,
        "voxel_size_m": req.pipeline.volume.voxel_size_m,
        "blocks": pipeline.volume.n_blocks,
        "volume_memory_mb": round(pipeline.volume.memory_bytes() / 2**20, 1),
        "volume_full": pipeline.volume.is_full,
        "mesh": {"vertices": int(len(mesh.positions_m)), "faces": int(len(mesh.faces))},
        "device": str(pipeline.volume.device),
        "versions": {"python": platform.python_version(), "open3d": open3d.__version__,
                     "numpy": np.__version__},
        "completed": run.error is None and not run.interrupted,
    }
    stats.update(_ate_stats(run, poses))
    if pipeline.loops is not None:
        lc = pipeline.loops
        stats["loop_closure"] = lc.stats.to_dict() | {
            "keyframe_store_mb": round(lc.memory_bytes() / 2**20, 1),
            "spare_volume_mb": round(lc.spare.memory_bytes() / 2**20, 1),
            "largest_correction_m": round(max((e.max_shift_m for e in lc.events), default=0.0), 4)}
    if run.error is not None:
        stats["error"] = str(run.error)
    return stats


def _ate_stats(run: _Run, poses: list) -> dict:
    """ATE over every frame of the written trajectory `poses` that has ground truth (a rejected frame
    counts with the pose the trajectory holds for it), and over the integrated frames alone."""
    pairs = [(T, g, r.integrated) for T, g, r in zip(poses, run.gt, run.results) if g is not None]
    if len(pairs) < 3:
        return {}
    out = {"ate_rmse_m": round(ate_rmse_m(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])), 6),
           "ate_frames": len(pairs)}
    fused = [p for p in pairs if p[2]]
    if len(fused) >= 3:
        out["ate_integrated_rmse_m"] = round(ate_rmse_m(np.array([p[0] for p in fused]),
                                                        np.array([p[1] for p in fused])), 6)
    return out


def _label_stats(hook: LabelHook | None, frames: int) -> dict:
    """label_latency_s percentiles and label_work (with per-frame work) from the hook's statistics."""
    if hook is None:
        return {}
    work = dict(hook.stats())
    latency = work.pop("latency_s", None)
    per_frame = {f"{k}_per_frame": round(work[k] / frames, 2) for k in ("chunks_inferred", "sites_inferred")
                 if isinstance(work.get(k), (int, float)) and frames}
    return {"label_latency_s": latency, "label_work": work | per_frame}


def _write_completed(path: Path, hook: LabelHook | None) -> int:
    mesh, labels = hook.completed_mesh() if hook is not None else (MeshArrays.empty(), np.zeros(0, np.uint16))
    write_labeled_ply(path, mesh.positions_m, mesh.colors, labels, mesh.faces)
    return int(len(mesh.positions_m))


def write_outputs(req: ReconstructRequest, source, pipeline: FusionPipeline, run: _Run,
                  hook: LabelHook | None = None) -> dict:
    """Write mesh.ply, completed.ply, trajectory.txt, stats.json and the session file `session` into
    req.out_dir (atomically); labels and completion come from `hook` (none: all 0, empty)."""
    mesh = pipeline.final_mesh()
    labels = (hook.vertex_labels(mesh) if hook is not None
              else np.zeros(len(mesh.positions_m), np.uint16))
    write_labeled_ply(req.out_dir / "mesh.ply", mesh.positions_m, mesh.colors, labels, mesh.faces)
    completed_vertices = _write_completed(req.out_dir / "completed.ply", hook)
    stamps, poses = _trajectory(run)
    write_tum(req.out_dir / "trajectory.txt", stamps, poses)
    stats = _stats(req, source, pipeline, run, mesh, poses) | _label_stats(hook, len(run.results))
    stats["completed_mesh"] = {"vertices": completed_vertices}
    stats["gravity"] = pipeline.gravity.report().to_dict()
    write_text_atomic(req.out_dir / "stats.json", json.dumps(stats, indent=2) + "\n")
    settings = {"command": "reconstruct", "source": req.source, "max_frames": req.max_frames, "labels": req.labels,
                "completed": stats["completed"]}
    extras = hook.extras() if hook is not None else None
    save_session(req.out_dir / "session", pipeline, stamps, poses, stats["source"], settings, extras)
    return stats


def _settle_gravity(pipeline: FusionPipeline, run: _Run) -> None:
    """Gravity settles at the latest when the scan ends (before the labels drain), loop closure finishes
    its last keyframes; poses returned before a rebuild or a correction of the world are moved into the
    final one."""
    if not pipeline.finish_loops():
        log.warning("loop closure did not finish its last keyframes in time; the map is written as it is")
    pipeline.settle_gravity()
    loops = pipeline.loops

    def restate(index, T):
        T = pipeline.gravity.restate(index, T)
        return T if loops is None else loops.restate(index, T)
    run.results = [r if r.T_world_cam is None else dataclasses.replace(r, T_world_cam=restate(r.index, r.T_world_cam))
                   for r in run.results]


def _finish(hook: LabelHook, run: _Run) -> None:
    """Let the labeler drain; an interrupt there skips the rest of the drain, outputs are still written."""
    try:
        hook.finish(run.interrupted)
    except KeyboardInterrupt:
        run.interrupted = True
        hook.finish(True)


def reconstruct(req: ReconstructRequest) -> dict:
    """Run the whole command; raises UserError (after writing partial outputs) when the source fails."""
    if req.labels not in LABEL_MODES:
        raise UserError(f"--labels {req.labels}: expected one of {', '.join(LABEL_MODES)}")
    if req.labels != "none" and req.label_hook is None:
        raise UserError(f"--labels {req.labels}: no labeling model was given; use --labels none")
    if req.max_frames is not None and req.max_frames < 1:
        raise UserError("--max-frames must be at least 1")
    source = open_source(req.source, max_frames=req.max_frames)
    if req.pipeline.poses == "gt" and not source.has_gt_poses:
        raise UserError(f"{req.source}: --poses gt needs ground-truth poses, and this source has none")
    try:
        req.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {req.out_dir}: {exc.strerror}") from None
    pipeline = FusionPipeline(req.pipeline)
    hook = None
    try:
        hook = req.label_hook(pipeline) if req.labels != "none" else None
        run = _fuse(source, pipeline, req.progress, hook, req.stall)
        _settle_gravity(pipeline, run)
        if pipeline.frames_with_depth == 0 and run.error is None:
            run.error = SourceError(f"{req.source}: no frame has valid depth")
        if hook is not None:
            _finish(hook, run)
        stats = write_outputs(req, source, pipeline, run, hook)
    finally:
        if hook is not None:
            hook.close()
        pipeline.close()
        source.close()
    if run.error is not None:
        raise UserError(f"{run.error} (the {len(run.results)} frames before it were written to {req.out_dir})")
    if run.interrupted:
        raise KeyboardInterrupt
    return stats
