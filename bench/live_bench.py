"""Owns the live-camera benchmark: a source replayed in real time into the app's newest-only capture path.

A replay camera (`bench.replay`) hands the source's frames to `fusion.sources.capture.CaptureThread` on the
camera's clock (`--fps`, 30 by default); the thread keeps only the newest in a `NewestSlot`, exactly as a live
RealSense does, and the fusion loop takes what is there when it is ready: frames it cannot keep up with
are skipped. Three loops are fed the same way, one after another in the same run: ours at the app's
defaults (1 cm, tracking, labels incremental: the nets' worker thread runs as in the app), ours without
the nets, and Open3D's `slam.Model` loop. Frames are read into memory first (reading is no part of
the camera's cost).

How it counts (nothing is left out):
- fused_fps: frames fused / (end of the last fusion - due time of the first frame);
- frames_skipped: source frames never fused (replaced in the slot, or not taken before the end);
- ate_rmse_m: over every source frame with ground truth; a frame that was skipped or rejected takes
  the pose of the latest fused frame before it (what the app knew then); ate_fused_rmse_m: fused only;
- label latency: one sample per labelled chunk change, from the integration of the first frame whose
  change it had not labelled to the moment its labels landed; a change still unlabelled when the replay
  ends counts with the time it had waited by then (a lower bound), and their number is reported.

Run: `python -m bench.live_bench SRC [--fps 30] [--voxel-size M] [--labels incremental|none] [--set FIELD=VALUE]`
(`--set`: a field of the nets' worker's `LabelerConfig` for the run); it prints
a table and writes bench/results/live.json. Thread: the main thread fuses; the capture and nets
threads run beside it.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py sets it for the app

import numpy as np  # noqa: E402

from bench.replay import Replay, load_frames, play_list, replay  # noqa: E402
from bench.report import finish  # noqa: E402
from bench.settings import setting_parser, with_settings  # noqa: E402
from fusion.errors import UserError  # noqa: E402
from fusion.trajectory import ate_rmse_m  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
LABEL_MODES = ("incremental", "none")


@dataclass(frozen=True)
class LiveBenchConfig:
    fps: float = 30.0                 #: the camera's frame rate
    voxel_size_m: float = 0.01        #: the app's default
    labels: str = "incremental"       #: incremental | none (the app's default is incremental)
    passes: int = 1                   #: play the sequence forward, backward, forward... this many times
    poll_timeout_s: float = 0.05      #: capture thread's wait for a frame
    open3d: bool = True               #: also run Open3D's loop
    repeats: int = 2                  #: each loop runs this many times (order A B C, C B A, ...): the runs are pooled
    max_preload_mb: float = 4096.0    #: frames are held in memory before the replay: a larger source is refused
    labeler_settings: tuple = ()      #: (field, value) overrides of the nets' worker's LabelerConfig (`--set`)


# --- the loops ---------------------------------------------------------------------------------
def _held_poses(n: int, posed: dict) -> list:
    """One pose per play-list frame: its own when fused with a pose, else the latest before it (frames
    before the first posed one take that one's pose); [] when none was posed."""
    if not posed:
        return []
    last = posed[min(posed)]
    out = []
    for i in range(n):
        last = posed.get(i, last)
        out.append(last)
    return out


def _ate(frames, posed: dict) -> dict:
    gt = [f.T_world_cam_gt for f in frames]
    if any(g is None for g in gt) or len(posed) < 3:
        return {"ate_rmse_m": None, "ate_fused_rmse_m": None}
    held = _held_poses(len(frames), posed)
    keys = sorted(posed)
    return {"ate_rmse_m": round(ate_rmse_m(np.array(held), np.array(gt)), 5),
            "ate_fused_rmse_m": round(ate_rmse_m(np.array([posed[k] for k in keys]),
                                                 np.array([gt[k] for k in keys])), 5)}


def _summary(frames, rep: Replay, posed: dict) -> dict:
    n = len(frames)
    return {"frames": n, "frames_fused": len(rep.fused), "frames_integrated": len(posed),
            "frames_skipped": n - len(rep.fused), "slot_dropped": rep.slot_dropped,
            "fused_fps": round(len(rep.fused) / rep.wall_s, 3), "wall_s": round(rep.wall_s, 3),
            "capture_late_p95_s": round(rep.late_p95_s, 4)} | _ate(frames, posed)


def app_pipeline(config: LiveBenchConfig):
    """A fusion pipeline at the app's defaults (tracking) and the benchmark's voxel size."""
    from fusion.pipeline import FusionPipeline, PipelineConfig
    from fusion.volume import VolumeConfig

    return FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=config.voxel_size_m)))


def _load_model():
    from nets.infer import ChunkModel

    return ChunkModel.load(None, device="cpu")


def run_ours(frames, config: LiveBenchConfig, model=None) -> dict:
    """Our loop at the app's defaults; with `model`, the nets' worker labels as in the app."""
    from nets.incremental import IncrementalLabeler, LabelerConfig

    pipe = app_pipeline(config)
    T0 = frames[0].T_world_cam_gt
    labeler = (IncrementalLabeler(pipe, model, config=with_settings(LabelerConfig(), config.labeler_settings))
               if model is not None else None)
    posed: dict = {}
    stages: dict = {}

    def fuse(frame):
        t0 = time.perf_counter()
        res = pipe.process(frame, T_start=T0)
        stages.setdefault("frame", []).append((time.perf_counter() - t0) * 1e3)
        for k, v in res.timings_ms.items():
            stages.setdefault(k, []).append(v)
        if res.T_world_cam is not None:
            posed[frame.index] = res.T_world_cam

    if labeler is not None:
        labeler.start()
    try:
        rep = replay(frames, config.fps, fuse, config.poll_timeout_s)
    finally:
        if labeler is not None:
            labeler.stop()
            labeler.join(30.0)
    out = _summary(frames, rep, posed) | {
        "tracking_losses": pipe.tracker.losses, "tracking_failures": pipe.tracker.failures,
        "relocalisations": pipe.tracker.relocalisations,
        "volume_memory_mb": round(pipe.volume.memory_bytes() / 2**20, 1), "blocks": pipe.volume.n_blocks,
        "rss_mb": _rss_mb(), "gravity": pipe.gravity.report().to_dict().get("method"),
        "timing_ms_p50": {k: round(float(np.median(v)), 1) for k, v in stages.items()},
        "timing_ms_p95": {k: round(float(np.percentile(v, 95)), 1) for k, v in stages.items()},
        "timing_ms_total": {k: round(float(np.sum(v)), 1) for k, v in stages.items()},  # e.g. all volume_wait
        "longest_frame_ms": round(max(stages.get("frame", [0.0])), 1),  # a stall (a hash-map grow) shows here
        "frames_with_feature_check": len(stages.get("relocalise", []))}
    if labeler is not None:
        out |= _latency(labeler, rep.end_s)
    pipe.close()
    return out


def _latency(labeler, end_s: float) -> dict:
    landed = labeler.latency_samples_s()
    waiting = labeler.unlabelled_waits_s(end_s)
    lat = np.asarray(landed + waiting, float)
    pct = ({f"p{p}": round(float(np.percentile(lat, p)), 3) for p in (50, 95)} if len(lat)
           else {"p50": None, "p95": None})
    stats = labeler.stats()
    return {"label_latency_s": pct, "latency_samples_s": [round(float(v), 4) for v in lat],
            "label_changes": len(lat), "label_changes_unlabelled_at_end": len(waiting),
            "label_latency_landed_s": ({f"p{p}": round(float(np.percentile(landed, p)), 3) for p in (50, 95)}
                                       if landed else None),
            "chunks_inferred": stats["chunks_inferred"], "regions_inferred": stats["regions_inferred"],
            "nets_worker": {k: stats[k] for k in ("worker_busy_share", "worker_cpu_s", "worker_wall_s", "infer_s_total",
                                                  "refresh_regions", "refresh_infer_s")},
            "region": {k: stats[k] for k in stats if k.startswith(("infer_ms_p", "snapshot_wait_ms_p", "serve_ms_p",
                                                                   "region_sites_p", "queue_wait_ms_p"))}}


def run_open3d(frames, config: LiveBenchConfig) -> dict:
    from bench.open3d_reference import Open3DSlam

    T0 = frames[0].T_world_cam_gt
    slam = Open3DSlam(frames[0].intrinsics, config.voxel_size_m, np.eye(4) if T0 is None else T0)
    posed: dict = {}

    def fuse(frame):
        posed[frame.index] = slam.step(frame)

    rep = replay(frames, config.fps, fuse, config.poll_timeout_s)
    return _summary(frames, rep, posed) | {"tracking_failures": slam.failures, "rss_mb": _rss_mb()}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def warm_up(frames, config: LiveBenchConfig, model) -> None:
    """Compile the kernels and load the weights before anything is timed."""
    from nets.incremental import IncrementalLabeler

    pipe = app_pipeline(config)
    for f in frames[:3]:
        pipe.process(f, T_start=frames[0].T_world_cam_gt)
    if model is not None:
        IncrementalLabeler(pipe, model).step()
    pipe.close()


# --- report ------------------------------------------------------------------------------------
def _pct(values) -> dict:
    v = np.asarray(values, float)
    return {f"p{p}": round(float(np.percentile(v, p)), 3) for p in (50, 95)} if len(v) else {"p50": None, "p95": None}


def pool(runs: list) -> dict | None:
    """The repeats of one loop as one: frame counts summed, rates averaged over runs, the worst ATE,
    latency percentiles over every change of every run; `repeats` keeps each run."""
    if not runs or runs[0] is None:
        return None
    out = dict(runs[-1])
    for k in ("frames", "frames_fused", "frames_integrated", "frames_skipped", "slot_dropped", "tracking_losses",
              "frames_with_feature_check",
              "tracking_failures", "label_changes", "label_changes_unlabelled_at_end", "chunks_inferred",
              "regions_inferred"):
        if k in out:
            out[k] = int(sum(r[k] for r in runs))
    out["fused_fps"] = round(float(np.mean([r["fused_fps"] for r in runs])), 3)
    if "longest_frame_ms" in out:
        out["longest_frame_ms"] = max(r["longest_frame_ms"] for r in runs)
    for k in ("ate_rmse_m", "ate_fused_rmse_m"):
        vals = [r[k] for r in runs if r[k] is not None]
        out[k] = max(vals) if vals else None
    if "latency_samples_s" in out:
        out["label_latency_s"] = _pct([v for r in runs for v in r["latency_samples_s"]])
    if out.get("nets_worker"):  # summed over runs; the busy share of them all
        out["nets_worker"] = {k: round(sum(r["nets_worker"][k] or 0 for r in runs), 3) for k in out["nets_worker"]}
        wall = out["nets_worker"]["worker_wall_s"]
        out["nets_worker"]["worker_busy_share"] = round(out["nets_worker"]["worker_cpu_s"] / wall, 3) if wall else None
    if out.get("region"):  # per-region percentiles: the worst run's (each run's stay in `repeats`)
        out["region"] = {k: max((r["region"][k] for r in runs if r["region"][k] is not None), default=None)
                         for k in out["region"]}
    out["repeats"] = [{k: v for k, v in r.items() if k != "latency_samples_s"} for r in runs]
    out.pop("latency_samples_s", None)
    return out


def result(spec: str, config: LiveBenchConfig, source_frames: int, ours: dict, bare: dict, o3d: dict | None) -> dict:
    lat = ours.get("label_latency_s", {"p50": None, "p95": None})
    out = {"source": spec, "source_frames": source_frames, "passes": config.passes, "repeats": config.repeats,
           "fps": config.fps,
           "voxel_size_m": config.voxel_size_m, "labels": config.labels,
           "fused_fps": ours["fused_fps"], "frames_skipped": ours["frames_skipped"],
           "tracking_losses": ours["tracking_losses"], "ate_rmse_m": ours["ate_rmse_m"],
           "label_latency_s": lat, "fused_fps_without_nets": bare["fused_fps"],
           "nets_fusion_ratio": round(ours["fused_fps"] / bare["fused_fps"], 3),
           "open3d_fused_fps": o3d["fused_fps"] if o3d else None,
           "open3d_ate_rmse_m": o3d["ate_rmse_m"] if o3d else None,
           "open3d_frames_skipped": o3d["frames_skipped"] if o3d else None,
           "fps_ratio_vs_open3d": round(ours["fused_fps"] / o3d["fused_fps"], 3) if o3d else None,
           "fps_ratio_without_nets_vs_open3d": round(bare["fused_fps"] / o3d["fused_fps"], 3) if o3d else None,
           "memory": {"rss_mb": ours["rss_mb"], "volume_mb": ours["volume_memory_mb"]},
           "runs": {"ours": ours, "ours_without_nets": bare, "open3d": o3d},
           "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
                       "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}}
    return out


def print_table(r: dict) -> None:
    rows = [("ours (nets on)", r["runs"]["ours"]), ("ours (no nets)", r["runs"]["ours_without_nets"]),
            ("open3d slam.Model", r["runs"]["open3d"])]
    fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    print(f"{r['source']}: {r['source_frames']} frames x {r['passes']} pass(es) at {r['fps']:g} frames/s, "
          f"voxel {r['voxel_size_m'] * 100:g} cm, labels {r['labels']}; {r['repeats']} run(s) of each loop, "
          "frame counts summed, frames/s averaged, the worst ATE")
    print(f"{'loop':<18} | fused/s | fused | skipped | losses | ATE all (mm) | ATE fused (mm) | longest frame (ms)")
    for name, run in rows:
        if run is None:
            continue
        ate = run["ate_rmse_m"] and run["ate_rmse_m"] * 1000
        ate_f = run["ate_fused_rmse_m"] and run["ate_fused_rmse_m"] * 1000
        print(f"{name:<18} | {run['fused_fps']:>7.2f} | {run['frames_fused']:>5d} | {run['frames_skipped']:>7d} | "
              f"{fmt(run.get('tracking_losses'), '{:>6d}'):>6} | {fmt(ate, '{:>12.1f}'):>12} | {fmt(ate_f, '{:>14.1f}'):>14} | "
              f"{fmt(run.get('longest_frame_ms'), '{:>18.0f}'):>18}")
    lat = r["label_latency_s"]
    print(f"label latency p50 {fmt(lat['p50'], '{:.2f}')} s, p95 {fmt(lat['p95'], '{:.2f}')} s over "
          f"{r['runs']['ours'].get('label_changes', 0)} changes "
          f"({r['runs']['ours'].get('label_changes_unlabelled_at_end', 0)} still unlabelled at the end); "
          f"fusion with nets / without: {r['nets_fusion_ratio']:.2f}; vs Open3D: {fmt(r['fps_ratio_vs_open3d'], '{:.2f}')}x; "
          f"memory {r['memory']['rss_mb']:.0f} MB resident, volume {r['memory']['volume_mb']:.0f} MB")
    work = r["runs"]["ours"].get("nets_worker")
    if work:
        print(f"nets worker: busy {fmt(work['worker_busy_share'], '{:.0%}')} of its wall time "
              f"({work['worker_cpu_s']:.1f} CPU s of {work['worker_wall_s']:.1f} s), inference {work['infer_s_total']:.1f} s, "
              f"of which halo refreshes {work['refresh_infer_s']:.1f} s in {work['refresh_regions']} regions")
    reg = r["runs"]["ours"].get("region")
    if reg:
        print("per chunk change queued / per region (p50 / p95; the worst run): " + ", ".join(
            f"{name} {fmt(reg[name + '_p50'], '{:.0f}')} / {fmt(reg[name + '_p95'], '{:.0f}')}"
            for name in ("queue_wait_ms", "snapshot_wait_ms", "serve_ms", "infer_ms", "region_sites")))


def run(spec: str, config: LiveBenchConfig, max_frames: int | None = None, gt_path: Path | None = None) -> dict:
    source_frames = load_frames(spec, max_frames, gt_path, config.max_preload_mb)
    frames = play_list(source_frames, config.passes, config.fps)
    model = _load_model() if config.labels == "incremental" else None
    warm_up(frames, config, model)
    loops = {"open3d": (lambda: run_open3d(frames, config)) if config.open3d else None,
             "bare": lambda: run_ours(frames, config, None),
             "ours": (lambda: run_ours(frames, config, model)) if model is not None else None}
    runs: dict = {k: [] for k in loops}
    for rep in range(config.repeats):
        for name in (list(loops) if rep % 2 == 0 else list(loops)[::-1]):
            if loops[name] is not None:
                log.info("run %d/%d: %s ...", rep + 1, config.repeats, name)
                runs[name].append(loops[name]())
    bare = pool(runs["bare"])
    ours = pool(runs["ours"]) if model is not None else bare
    return result(spec, config, len(source_frames), ours, bare, pool(runs["open3d"]))


def _labeler_setting(text: str) -> tuple[str, object]:
    from nets.incremental import LabelerConfig

    return setting_parser(LabelerConfig())(text)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="any `reconstruct` source (dataset folder, .bag/.db3, synthetic:SEED)")
    p.add_argument("--fps", type=float, default=30.0, help="camera frame rate of the replay (default 30)")
    p.add_argument("--voxel-size", type=float, default=0.01, help="metres (default 0.01, the app's)")
    p.add_argument("--labels", default="incremental", help="incremental (default) | none")
    p.add_argument("--passes", type=int, default=1, help="play forward/backward this many times (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each loop, pooled (default 2)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--max-preload-mb", type=float, default=4096.0, help="frames held in memory at most (MB)")
    p.add_argument("--gt", type=Path, default=None, help="TUM ground truth for a source without poses")
    p.add_argument("--no-open3d", action="store_true", help="skip Open3D's loop")
    p.add_argument("--set", type=_labeler_setting, action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the nets' worker's nets.incremental.LabelerConfig for the run "
                        "(dotted for the scheduler's: scheduler.settle_s=0.4); repeatable")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "live.json")
    return p.parse_args(argv)


def _check(args) -> LiveBenchConfig:
    if not 1 <= args.fps <= 120:
        raise UserError(f"--fps {args.fps:g}: expected 1 to 120 frames/s")
    if not 0.002 <= args.voxel_size <= 0.2:
        raise UserError(f"--voxel-size {args.voxel_size}: expected metres between 0.002 and 0.2")
    if args.labels not in LABEL_MODES:
        raise UserError(f"--labels {args.labels}: expected one of {', '.join(LABEL_MODES)}")
    if args.passes < 1 or args.repeats < 1 or (args.max_frames is not None and args.max_frames < 1):
        raise UserError("--passes, --repeats and --max-frames must be at least 1")
    if args.max_preload_mb <= 0:
        raise UserError("--max-preload-mb must be positive")
    return LiveBenchConfig(args.fps, args.voxel_size, args.labels, args.passes, open3d=not args.no_open3d,
                           repeats=args.repeats, max_preload_mb=args.max_preload_mb,
                           labeler_settings=tuple(args.set))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    args = _parse(argv)
    return finish(lambda: run(args.source, _check(args), args.max_frames, args.gt), print_table, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
