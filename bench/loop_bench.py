"""Loop-closure benchmark: ATE, map consistency, loops found and false, time and live-loop slowdown, off vs on.

Synthetic rows: a looping synthetic scan fused with odometry that drifts (`bench.drift`: a turn per
metre walked and a stretched step, `--poses gt` with the drifted poses), loop closure off and on, and
once with the true poses (`_exact`: what the fused surface measures without any drift).
ATE is against the true path (the trajectory each frame got, moved by every later correction); the
fused mesh is compared with the room's ground-truth mesh: distance of its vertices to it, and the
share farther than `--doubled-m` (surface in the wrong place: a doubled wall). A loop is false when
its relative pose is off the true one by more than 5 cm or 2 deg. The live loop's slowdown compares
each frame's `process()` time while a correction was being optimised or rebuilt with the same frame's
time without loop closure, averaged over a run before and one after (the machine's load changes between
runs: the two off runs' means are reported too), the longest frame on and off (a stall: another thread held the
GIL), the fusion thread's own time in loop closure calls, and each fusion stage's time per frame while correcting
(`stage_ms_while_correcting`, off and on: time the live loop spends on a correction's aftermath, such as meshing
an adopted map, shows apart from time lost to the worker beside it).
Since that comparison spans minutes of a shared machine's load, the worker's cost is also measured within one
more on run (`held_slowdown`: the worker held in every other block of 10 frames; the blocks with it running while
a correction runs, against the held blocks beside them), and the rebuild's alone
interleaved (`rebuild_slowdown`): the live loop alone, with the on run's keyframes rebuilt beside it as the
worker rebuilds them (priority, kernel threads, duty), alternating every 10 frames; and the share of a core
the rebuild got meanwhile. The fused surface's share in two layers (a fused layer on the true surface near
a misplaced one) tells doubled walls from misplaced new ground.
Real rows: the shared 7-Scenes sequences (tracked; they hold no loop): ATE off/on and loops accepted,
also with the loop gates relaxed (`stress`: candidates from 5 cm back) to exercise verification on real
frames. Prints a table and writes bench/results/loop.json.

    python -m bench.loop_bench [--seeds 1 2] [--frames 600] [--yaw-deg-per-m 1.5] [--scale-error 0.01]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import open3d as o3d
from scipy.spatial import cKDTree

from bench.drift import DriftedFrames
from fusion.meshing import MeshConfig
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.sources import open_source
from fusion.sources.synthetic import SyntheticSource
from fusion.tracking import relative_motion
from fusion.trajectory import ate_rmse_m
from fusion.volume import VolumeConfig
from loopclosure.config import LoopClosureConfig
from loopclosure.detect import LoopDetectConfig
from loopclosure.keyframes import KeyframeStore
from loopclosure.pacing import WorkerPacer, lower_worker_priority
from loopclosure.rebuild import SpareVolume, rebuild

ROOT = Path(__file__).resolve().parents[1]
REAL = [ROOT.parent / "shared" / "data" / n for n in ("7scenes-redkitchen-50", "7scenes-redkitchen-8-57")]
FALSE_M, FALSE_DEG = 0.05, 2.0
MOVED_M, MOVED_DEG = 0.005, 0.25   # a keyframe moved less by a correction counts as unmoved
log = logging.getLogger("bench.loop")


def _fuse(pipeline: FusionPipeline, frames, T_start=None, hold_blocks: int = 0) -> tuple[list, list, list, float]:
    """Run every frame; (results, process() ms per frame, correcting flag per frame, wall s incl. the drain).
    hold_blocks > 0: the loop worker is held in every other block of that many frames (not in the drain)."""
    results, ms, busy = [], [], []
    t_start = time.perf_counter()
    for k, f in enumerate(frames):
        if hold_blocks:
            (pipeline.loops.held.set if (k // hold_blocks) % 2 else pipeline.loops.held.clear)()
        t0 = time.perf_counter()
        results.append(pipeline.process(f, T_start))
        ms.append((time.perf_counter() - t0) * 1e3)
        busy.append(pipeline.loops is not None and pipeline.loops.correcting)
    if hold_blocks:
        pipeline.loops.held.clear()
    pipeline.finish_loops(600.0)
    return results, ms, busy, time.perf_counter() - t_start


def _poses(pipeline: FusionPipeline, results) -> np.ndarray:
    """One pose per frame (a rejected frame keeps the last good one), moved by later corrections."""
    out, last = [], next(r.T_world_cam for r in results if r.T_world_cam is not None)
    for r in results:
        if r.T_world_cam is not None:
            last = r.T_world_cam if pipeline.loops is None else pipeline.loops.restate(r.index, r.T_world_cam)
        out.append(last)
    return np.array(out)


def _surface(mesh, world, doubled_m: float) -> dict:
    """Fused vertices' distance to the ground-truth mesh (mm), the share farther than doubled_m (surface in the
    wrong place), and the share of those with a second fused layer on the true surface (a fused vertex within
    2/3 doubled_m of their nearest true point that is itself within doubled_m / 2 of the truth): doubled walls,
    not merely misplaced new ground."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(world.vertices.astype(np.float32)),
                        o3d.core.Tensor(world.triangles.astype(np.uint32)))
    V = mesh.positions_m.astype(np.float32)
    q = scene.compute_closest_points(o3d.core.Tensor(V))["points"].numpy()
    d = np.linalg.norm(q - V, axis=1)
    off = d > doubled_m
    on_truth = V[d < doubled_m / 2]
    layered = np.zeros(int(off.sum()), bool)
    if len(on_truth) and off.any():
        layered = cKDTree(on_truth).query(q[off], distance_upper_bound=doubled_m * 2 / 3)[0] < doubled_m * 2 / 3
    return {"surface_mean_mm": round(float(d.mean()) * 1e3, 2), "surface_median_mm": round(float(np.median(d)) * 1e3, 2),
            "doubled_share": round(float(np.mean(off)), 4), "two_layer_share": round(float(layered.sum()) / max(1, len(d)), 4),
            "vertices": int(len(d))}


def _false(edges: list, true_poses: np.ndarray) -> int:
    """Edges whose relative pose is off the true one by more than FALSE_M or FALSE_DEG."""
    false = 0
    for e in edges:
        truth = np.linalg.inv(true_poses[e.old_frame]) @ true_poses[e.cur_frame]
        m, deg = relative_motion(truth, e.T_old_cur)
        false += m > FALSE_M or deg > FALSE_DEG
    return int(false)


def _loop_report(pipeline: FusionPipeline, true_poses: np.ndarray) -> dict:
    if pipeline.loops is None:
        return {}
    lc = pipeline.loops
    return {"loops_verified": lc.stats.candidates, "loops_accepted": lc.stats.accepted,
            "false_loops_accepted": _false(lc.accepted, true_poses),
            "map_aligned": lc.stats.map_aligned, "map_rejected": lc.stats.map_rejected,
            "false_map_edges": _false(lc.map_edges, true_poses),
            "corrections": lc.stats.corrections, "discarded": lc.stats.discarded, "pruned": lc.stats.pruned,
            "edges_dropped": lc.stats.dropped,
            "searched_late": lc.stats.searched_late,
            "optimise_s": round(sum(e.optimise_s for e in lc.events), 2),
            "rebuild_s": round(sum(e.rebuild_s for e in lc.events), 2),
            "keyframes_moved": [_moved(e) for e in lc.events],
            "keyframes": lc.stats.keyframes, "keyframe_store_mb": round(lc.memory_bytes() / 2**20, 1)}


def _moved(event, min_m: float = MOVED_M, min_deg: float = MOVED_DEG) -> str:
    """'moved/held': keyframes a correction moved by more than min_m or turned by more than min_deg (what a
    rebuild of only the blocks they see would have had to redo)."""
    C, p = event.corrections, event.keyframe_positions_m
    shift_m = np.linalg.norm(np.einsum("nij,nj->ni", C[:, :3, :3], p) + C[:, :3, 3] - p, axis=1)
    turn_deg = np.degrees(np.arccos(np.clip((np.trace(C[:, :3, :3], axis1=1, axis2=2) - 1) / 2, -1, 1)))
    return f"{int(np.sum((shift_m > min_m) | (turn_deg > min_deg)))}/{len(C)}"


def _config(poses: str, voxel_m: float, on: bool, detect: LoopDetectConfig | None = None,
            worker: LoopClosureConfig = LoopClosureConfig()) -> PipelineConfig:
    """`worker`: the loop closer's settings apart from enabled and detect (its worker's priority and duty)."""
    loop = dataclasses.replace(worker, enabled=on, detect=detect or LoopDetectConfig())
    return PipelineConfig(poses=poses, volume=VolumeConfig(voxel_size_m=voxel_m), loop=loop)


def synthetic_row(seed: int, frames: int, yaw: float, scale: float, voxel_m: float, doubled_m: float,
                  worker: LoopClosureConfig = LoopClosureConfig()) -> dict:
    src = DriftedFrames(SyntheticSource(seed, n_frames=frames), yaw, scale)
    row = {"name": f"synthetic:{seed}", "frames": frames, "drift_max_m": round(src.drift_m(), 3)}
    p = FusionPipeline(_config("gt", voxel_m, False))
    try:  # the floor: the same frames fused with the true poses
        _fuse(p, src.source)
        row |= {f"{k}_exact": v for k, v in _surface(p.final_mesh(), src.source.world, doubled_m).items()}
    finally:
        p.close()
    ms_off, stages_off, on_run, rebuild_input = [], [], None, None
    for on in (False, True, False):   # off before and after on: the live loop's times bracket the machine's load
        p = FusionPipeline(_config("gt", voxel_m, on, worker=worker))
        try:
            results, ms, busy, wall = _fuse(p, src)
            if on:
                on_run = (ms, busy, [r.timings_ms for r in results])
                rebuild_input = (KeyframeStore.from_arrays(p.loops.to_arrays()).kfs, p.loops.keyframe_poses(),
                                 p.volume.n_blocks)
            else:
                ms_off.append(ms)
                stages_off.append([r.timings_ms for r in results])
            if len(ms_off) == 2:
                break
            tag = "on" if on else "off"
            row[f"ate_{tag}_m"] = round(ate_rmse_m(_poses(p, results), src.true_poses), 4)
            row |= {f"{k}_{tag}": v for k, v in _surface(p.final_mesh(), src.source.world, doubled_m).items()}
            row[f"fps_{tag}"] = round(len(results) / wall, 2)
            if on:
                row |= _loop_report(p, src.true_poses)
        finally:
            p.close()
    return (row | _slowdown(ms_off, *on_run) | _stage_slowdown(stages_off, on_run[2], on_run[1])
            | held_slowdown(src, voxel_m, worker) | rebuild_slowdown(src, *rebuild_input, voxel_m, worker))


def _slowdown(ms_off: list, ms_on: list, busy: list, stages_on: list) -> dict:
    """process() time of the frames fused while a correction ran, against the same frames without loop closure
    (their mean over the runs before and after); the longest frame of the on run and of the off runs (a stall:
    another thread holding the GIL); and the fusion thread's own time in loop closure per frame (keyframe capture,
    swapping a corrected map in)."""
    b = np.array(busy)
    off, on = np.mean(ms_off, axis=0), np.array(ms_on)
    loop_ms = [s.get("loops", 0.0) for s in stages_on]
    out = {"frames_while_correcting": int(b.sum()), "process_ms_off": round(float(off.mean()), 1),
           "process_ms_off_runs": [round(float(np.mean(m)), 1) for m in ms_off],
           "process_ms_on": round(float(on.mean()), 1),
           "longest_frame_ms_off": round(float(np.max(ms_off)), 1), "longest_frame_ms_on": round(float(on.max()), 1),
           "fusion_loop_ms_mean": round(float(np.mean(loop_ms)), 2), "fusion_loop_ms_max": round(float(np.max(loop_ms)), 1)}
    if b.any():
        out["slowdown_while_correcting"] = round(float(on[b].mean() / off[b].mean() - 1.0), 3)
    out["slowdown_overall"] = round(float(on.mean() / off.mean() - 1.0), 3)
    return out


def held_slowdown(frames, voxel_m: float, loop: LoopClosureConfig, block_frames: int = 10) -> dict:
    """One more run with loop closure on, its worker held (at its next pace point) in every other block of frames:
    while a correction runs, each block with the worker running against the held blocks beside it. What the
    worker costs the live loop, in one run (the machine's load changes between runs), over all it does while
    correcting: ICP, optimisation, rebuild, catch-up. Only blocks correcting throughout count, each without its
    first frame (the worker may finish a step there); holding delays this run's corrections."""
    p = FusionPipeline(_config("gt", voxel_m, True, worker=loop))
    try:
        _, ms, busy, _ = _fuse(p, frames, hold_blocks=block_frames)
    finally:
        p.close()
    running = (np.arange(len(ms)) // block_frames) % 2 == 0
    ratios = _block_ratios(np.array(ms), running, block_frames, eligible=np.array(busy))
    if len(ratios) < 2:
        return {"held_blocks_compared": int(len(ratios))}
    return {"held_blocks_compared": int(len(ratios)), "slowdown_correcting_held": round(float(ratios.mean() - 1.0), 3),
            "slowdown_correcting_held_se": round(float(ratios.std(ddof=1) / np.sqrt(len(ratios))), 3)}


def rebuild_slowdown(frames, keyframes: list, poses: np.ndarray, live_blocks: int, voxel_m: float,
                     loop: LoopClosureConfig, block_frames: int = 10) -> dict:
    """The live loop (loop closure off) with a map rebuild from `keyframes` at `poses` running beside it the way
    the loop closer's worker runs one (its priority, kernel threads and duty, its volume sized for a live map of
    `live_blocks`), in alternating blocks of frames:
    without, with, without, ... Interleaving keeps the machine's changing load out of the ratio (the first
    block and each block's first frame, where the rebuild starts or stops, are left out)."""
    on, stop, worker_cpu_s = threading.Event(), threading.Event(), []

    def work():
        lower_worker_priority(loop.worker_threads, loop.worker_nice)
        pacer = WorkerPacer(loop.worker_duty, stop)

        def pace() -> bool:
            if not on.is_set():
                while not on.wait(0.05):
                    if stop.is_set():
                        return True
                pacer.restart()
            return pacer()

        t0 = time.thread_time()
        spare = SpareVolume(VolumeConfig(voxel_size_m=voxel_m))
        while not stop.is_set():
            volume = spare.take(live_blocks)
            rebuild(keyframes, poses, volume, MeshConfig(), pace)
            spare.give(volume)
        worker_cpu_s.append(time.thread_time() - t0)

    worker = threading.Thread(target=work, name="rebuild-beside", daemon=True)
    worker.start()
    p = FusionPipeline(_config("gt", voxel_m, False))
    ms, beside, beside_s, t_end = [], [], 0.0, time.perf_counter()
    try:
        for k, f in enumerate(frames):
            (on.set if (k // block_frames) % 2 else on.clear)()
            t0 = time.perf_counter()
            p.process(f)
            ms.append((time.perf_counter() - t0) * 1e3)
            beside.append(on.is_set())
            beside_s += (time.perf_counter() - t_end) * beside[-1]   # wall time with the rebuild running
            t_end = time.perf_counter()
    finally:
        stop.set()
        worker.join(timeout=60)
        p.close()
    ratios = _block_ratios(np.array(ms), np.array(beside), block_frames)
    return {"rebuild_beside_ms": round(float(np.mean(np.array(ms)[beside])), 1),
            "rebuild_apart_ms": round(float(np.mean(np.array(ms)[~np.array(beside)])), 1),
            "slowdown_rebuild_interleaved": round(float(ratios.mean() - 1.0), 3),
            "slowdown_rebuild_interleaved_se": round(float(ratios.std(ddof=1) / np.sqrt(len(ratios))), 3),
            "rebuild_worker_core_share": round(worker_cpu_s[0] / beside_s, 3) if worker_cpu_s and beside_s else None}


def _stage_slowdown(stages_off: list, stages_on: list, busy: list) -> dict:
    """Where the frames fused while a correction ran spent their time: each fusion stage's mean ms per frame
    (0 where a frame did not run it), without loop closure (the runs' mean) and with it."""
    b = np.array(busy)
    if not b.any():
        return {}
    names = sorted({k for s in stages_on for k in s} | {k for run in stages_off for s in run for k in s})
    mean = lambda run, k: float(np.mean([s.get(k, 0.0) for s, x in zip(run, b) if x]))
    return {"stage_ms_while_correcting": {k: [round(float(np.mean([mean(run, k) for run in stages_off])), 1),
                                              round(mean(stages_on, k), 1)] for k in names}}


def _block_ratios(ms: np.ndarray, beside: np.ndarray, block_frames: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Each block with the work beside: its mean frame time over the mean of the blocks without it just before
    and after (the first block, each block's first frame, and blocks with a frame not `eligible` left out)."""
    n = np.arange(len(ms))
    block = n // block_frames
    keep = (block > 0) & (n % block_frames != 0)
    if eligible is not None:
        keep &= ~np.isin(block, block[~np.asarray(eligible, bool)])
    mean = {int(b): float(ms[keep & (block == b)].mean()) for b in np.unique(block[keep])}
    with_ = [b for b in mean if beside[b * block_frames]]
    return np.array([mean[b] / np.mean([mean[x] for x in (b - 1, b + 1) if x in mean and x not in with_])
                     for b in with_ if any(x in mean and x not in with_ for x in (b - 1, b + 1))])


def real_row(path: Path, voxel_m: float, stress: bool, worker: LoopClosureConfig = LoopClosureConfig()) -> dict:
    detect = LoopDetectConfig(min_age_keyframes=2, min_walk_m=0.05) if stress else LoopDetectConfig()
    row = {"name": path.name + (" (stress)" if stress else ""), "poses": "track"}
    for on in (False, True):
        src = open_source(str(path))
        frames = list(src)
        true = np.array([f.T_world_cam_gt for f in frames])
        p = FusionPipeline(_config("track", voxel_m, on, detect, worker))
        try:
            results, ms, _, wall = _fuse(p, frames, src.first_gt_pose())
            tag = "on" if on else "off"
            row["frames"] = len(frames)
            row[f"ate_{tag}_m"] = round(ate_rmse_m(_poses(p, results), true), 4)
            row[f"fps_{tag}"] = round(len(results) / wall, 2)
            if on:
                row |= _loop_report(p, true)
        finally:
            p.close()
            src.close()
    return row


COLUMNS = ("name", "frames", "drift_max_m", "ate_off_m", "ate_on_m", "surface_mean_mm_exact", "surface_mean_mm_off",
           "surface_mean_mm_on", "doubled_share_exact", "doubled_share_off", "doubled_share_on", "two_layer_share_exact", "two_layer_share_off",
           "two_layer_share_on", "loops_verified",
           "loops_accepted", "false_loops_accepted", "map_aligned", "map_rejected", "false_map_edges", "corrections", "discarded", "edges_dropped", "keyframes_moved", "optimise_s", "rebuild_s", "slowdown_while_correcting", "slowdown_overall", "slowdown_correcting_held", "slowdown_correcting_held_se", "slowdown_rebuild_interleaved",
           "slowdown_rebuild_interleaved_se", "rebuild_worker_core_share",
           "longest_frame_ms_off", "longest_frame_ms_on", "fusion_loop_ms_max")


def print_table(rows: list) -> None:
    print(" | ".join(COLUMNS))
    for r in rows:
        print(" | ".join(str(r.get(c, "-")) for c in COLUMNS))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--yaw-deg-per-m", type=float, default=1.5, help="injected odometry turn per metre walked")
    ap.add_argument("--scale-error", type=float, default=0.01, help="injected odometry step stretch")
    ap.add_argument("--voxel-size", type=float, default=0.01)
    ap.add_argument("--doubled-m", type=float, default=0.03, help="fused surface farther from the truth counts as doubled")
    ap.add_argument("--no-real", action="store_true", help="skip the 7-Scenes rows")
    ap.add_argument("--worker-nice", type=int, default=LoopClosureConfig.worker_nice, help="loop worker's niceness")
    ap.add_argument("--worker-duty", type=float, default=LoopClosureConfig.worker_duty,
                    help="share of a core the loop worker computes at most while busy")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loop.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.frames < 100 or args.voxel_size <= 0:
        print("loop_bench: --frames must be at least 100 and --voxel-size positive", file=sys.stderr)
        return 2
    rows, worker = [], LoopClosureConfig(worker_nice=args.worker_nice, worker_duty=args.worker_duty)
    for seed in args.seeds:
        rows.append(synthetic_row(seed, args.frames, args.yaw_deg_per_m, args.scale_error, args.voxel_size, args.doubled_m,
                                  worker))
        print_table(rows[-1:])
    for path in ([] if args.no_real else [p for p in REAL if p.is_dir()]):
        for stress in (False, True):
            rows.append(real_row(path, args.voxel_size, stress, worker))
            print_table(rows[-1:])
    print()
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "settings": vars(args) | {"out": str(args.out)},
                                    "cpu_count": os.cpu_count()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
