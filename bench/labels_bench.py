"""Owns the labeling benchmark: live incremental labels on a replayed synthetic room, against fusion alone
and against re-running the model on the whole scene every N frames.

A camera thread publishes the pre-rendered frames at `fps` in real time into a newest-only slot (a
frame not taken before the next arrives is dropped, as with a live camera); the fusion loop takes
the newest frame and fuses it (ground-truth poses, so tracking is not what is measured). Run twice:
fusion alone, then fusion with the IncrementalLabeler thread (the pipeline serves its snapshot
requests inside `process()`). Reported: frames dropped and fusion rate with and without the nets,
label latency p50/p95 while scanning, the drain after the last frame, and the model work (sites
inferred, halo included) of incremental updates vs whole-scene passes every N frames, with N chosen
so the whole-scene p95 latency (0.95 * N / fps + one whole-scene inference) equals the incremental p95.
The whole-scene inference time is taken at the live inference rate (sites per second of inference
measured while fusion ran beside it), since that is where such a pass would run.
The share of live labels the final drain keeps tells how settled live labels are. Prints a table and writes
bench/results/labels.json. Run: `.venv/bin/python -m bench.labels_bench`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402

from fusion.coarse import CoarseGridConfig, all_chunk_keys, coarse_region  # noqa: E402
from fusion.pipeline import FusionPipeline, PipelineConfig  # noqa: E402
from fusion.sources.synthetic import SyntheticConfig, SyntheticSource  # noqa: E402
from synth.render import RenderConfig  # noqa: E402
from fusion.volume import VolumeConfig  # noqa: E402
from nets.incremental import IncrementalLabeler, torch_threads, LabelerConfig  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchConfig:
    """What is replayed and how."""

    seed: int = 0                    #: synthetic room
    frames: int = 300                #: frames replayed
    fps: float = 30.0                #: camera rate of the replay (real time)
    scale: float = 0.5               #: image scale of the synthetic camera (0.5: 320x240)
    voxel_size_m: float = 0.02       #: fusion voxel edge
    count_every: int = 5             #: whole-scene site counts taken every this many frames
    repeats: int = 2                 #: replays of each kind, interleaved (the machine's load drifts); medians
    compare_every: tuple = (15, 30, 60)  #: whole-scene intervals (frames) also reported


def render(cfg: BenchConfig) -> list:
    synth = SyntheticConfig(render=RenderConfig(intrinsics=RenderConfig().intrinsics.scaled(cfg.scale)))
    src = SyntheticSource(cfg.seed, n_frames=cfg.frames, config=synth)
    return [src.frame(i) for i in range(len(src))]


class _Camera:
    """Publishes frames at a fixed rate into a newest-only slot. Thread: its own; `take` from the fusion loop."""

    def __init__(self, frames: list, fps: float):
        self.frames, self.fps = frames, fps
        self.cond = threading.Condition()
        self.slot = None
        self.done = False
        self.thread = threading.Thread(target=self._run, name="bench-camera", daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        for i, f in enumerate(self.frames):
            time.sleep(max(0.0, t0 + i / self.fps - time.perf_counter()))
            with self.cond:
                self.slot = f
                self.cond.notify()
        with self.cond:
            self.done = True
            self.cond.notify()

    def take(self):
        """The newest frame (waiting for one); None when the replay is over."""
        with self.cond:
            while self.slot is None and not self.done:
                self.cond.wait()
            frame, self.slot = self.slot, None
            return frame


def replay(frames: list, cfg: BenchConfig, model=None) -> dict:
    """Real-time replay; with a model, the labeler thread runs beside fusion."""
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=cfg.voxel_size_m, device="cpu"),
                                         poses="gt"))
    labeler = IncrementalLabeler(pipe, model) if model is not None else None
    camera = _Camera(frames, cfg.fps)
    if labeler is not None:
        labeler.start()
    fuse_ms, snap_ms = [], []
    t0 = time.perf_counter()
    camera.thread.start()
    try:
        while (frame := camera.take()) is not None:
            t1 = time.perf_counter()
            res = pipe.process(frame)
            fuse_ms.append((time.perf_counter() - t1) * 1e3)
            snap_ms.append(res.timings_ms.get("snapshot", 0.0))
        wall_s = time.perf_counter() - t0
        camera.thread.join()
        out = {"frames_fused": len(fuse_ms), "frames_dropped": len(frames) - len(fuse_ms),
               "dropped_share": round(1 - len(fuse_ms) / len(frames), 4),
               "fusion_fps": round(len(fuse_ms) / wall_s, 2),
               "fuse_ms_p50": round(float(np.percentile(fuse_ms, 50)), 1),
               "fuse_ms_p95": round(float(np.percentile(fuse_ms, 95)), 1),
               "snapshot_ms_p50": round(float(np.percentile(snap_ms, 50)), 1),
               "snapshot_ms_p95": round(float(np.percentile(snap_ms, 95)), 1),
               "snapshot_ms_max": round(float(np.max(snap_ms)), 1)}
        if labeler is not None:
            out |= _finish_labels(labeler)
    finally:
        if labeler is not None:
            labeler.stop()
            labeler.join(30)
        pipe.close()
    return out


def _finish_labels(labeler: IncrementalLabeler) -> dict:
    live = labeler.stats()
    live_cells, live_labels = labeler.labels.cells()
    t0 = time.perf_counter()
    labeler.drain()
    drain_s = time.perf_counter() - t0
    total = labeler.stats()
    drained, _ = labeler.labels.labels_of_cells(live_cells)
    return {"latency_p50_s": live["latency_p50_s"], "latency_p95_s": live["latency_p95_s"],
            "queue_at_end": live["queue"], "oldest_wait_at_end_s": live["oldest_wait_s"],
            "live_sites_inferred": live["sites_inferred"], "live_chunks_inferred": live["chunks_inferred"],
            "live_regions_inferred": live["regions_inferred"], "infer_ms_p50": live["infer_ms_p50"],
            "live_infer_s": live["infer_s_total"], "live_chunks_skipped": live["chunks_skipped_unchanged"],
            "drain_s": round(drain_s, 2), "total_sites_inferred": total["sites_inferred"],
            "labelled_cells": len(labeler.labels),
            "live_labels_kept_by_drain": round(float(np.mean(drained == live_labels)), 4) if len(live_cells) else None}


def whole_scene(frames: list, cfg: BenchConfig, model) -> dict:
    """Sites in the whole scene every `count_every` frames (all frames fused), and one whole-scene inference time."""
    grid: CoarseGridConfig = model.grid
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=cfg.voxel_size_m, device="cpu"),
                                         poses="gt"))
    counts = {}
    try:
        for i, f in enumerate(frames):
            pipe.process(f)
            if (i + 1) % cfg.count_every == 0 or i + 1 == len(frames):
                counts[i + 1] = len(coarse_region(pipe.volume, all_chunk_keys(pipe.volume, grid), grid, 0))
        region = coarse_region(pipe.volume, all_chunk_keys(pipe.volume, grid), grid)
    finally:
        pipe.close()
    t0 = time.perf_counter()
    model.predict(region)
    return {"site_counts": counts, "whole_infer_s": time.perf_counter() - t0, "final_sites": len(region)}


def whole_work(counts: dict, every: int, n_frames: int) -> int:
    """Sites a whole-scene pass after every `every` frames infers in total (counts at the nearest frame taken)."""
    marks = np.array(sorted(counts))
    total = 0
    for k in range(every, n_frames + 1, every):
        total += counts[int(marks[np.abs(marks - k).argmin()])]
    return total


def compare(live: dict, whole: dict, cfg: BenchConfig) -> dict:
    p95 = live["latency_p95_s"] or 0.0
    live_rate = live["live_sites_inferred"] / max(live["live_infer_s"], 1e-9)  # sites/s with fusion beside it
    whole_live_s = whole["final_sites"] / live_rate
    n_equal = int(np.floor((p95 - whole_live_s) * cfg.fps / 0.95))
    reachable = n_equal >= 1
    n_equal = max(1, n_equal)
    incr = live["live_sites_inferred"]
    out = {"live_sites_per_s": round(live_rate), "whole_infer_live_s": round(whole_live_s, 3),
           "whole_every_n_at_equal_latency": n_equal, "whole_can_reach_that_latency": reachable,
           "ratio_at_equal_latency": round(incr / max(1, whole_work(whole["site_counts"], n_equal, cfg.frames)), 4),
           "ratio_with_drain_at_equal_latency": round(
               live["total_sites_inferred"] / max(1, whole_work(whole["site_counts"], n_equal, cfg.frames)), 4)}
    for n in cfg.compare_every:
        out[f"ratio_vs_every_{n}"] = round(incr / max(1, whole_work(whole["site_counts"], n, cfg.frames)), 4)
    return out


def median_run(runs: list) -> dict:
    """Per-field median over repeated replays (numbers), else the first run's value."""
    out = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        out[key] = round(float(np.median(values)), 4) if numeric else first
    return out


def load_model():
    from nets.infer import DEFAULT_WEIGHTS, ChunkModel

    if Path(DEFAULT_WEIGHTS).is_file():
        return ChunkModel.load(), "trained"
    log.warning("no trained weights at %s: benchmarking the untrained model (same architecture and cost)",
                DEFAULT_WEIGHTS)
    return ChunkModel.untrained(seed=0), "untrained"


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=BenchConfig.frames)
    ap.add_argument("--scale", type=float, default=BenchConfig.scale)
    ap.add_argument("--voxel-size", type=float, default=BenchConfig.voxel_size_m)
    ap.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "labels.json")
    args = ap.parse_args(argv)
    cfg = BenchConfig(frames=args.frames, scale=args.scale, voxel_size_m=args.voxel_size, repeats=args.repeats)
    model, weights = load_model()
    frames = render(cfg)
    log.info("rendered %d frames %dx%d", len(frames), frames[0].intrinsics.width, frames[0].intrinsics.height)
    alone_runs, live_runs = [], []
    for _ in range(cfg.repeats):
        alone_runs.append(replay(frames, cfg))
        live_runs.append(replay(frames, cfg, model))
    alone, live = median_run(alone_runs), median_run(live_runs)
    whole = whole_scene(frames, cfg, model)
    result = {"config": asdict(cfg), "weights": weights, "torch_threads": torch_threads(LabelerConfig()),
              "cpu_cores": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
              "fusion_alone": alone, "with_nets": live, "runs": {"alone": alone_runs, "with_nets": live_runs},
              "whole_scene": {"whole_infer_s": round(whole["whole_infer_s"], 3), "final_sites": whole["final_sites"]},
              "work": compare(live, whole, cfg)}
    result["fusion_rate_lowered_by"] = round(1 - live["fusion_fps"] / alone["fusion_fps"], 4)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(r: dict) -> None:
    a, w, k = r["fusion_alone"], r["with_nets"], r["work"]
    rows = [("fusion frames/s (alone -> with nets)", f"{a['fusion_fps']:.1f} -> {w['fusion_fps']:.1f}"),
            ("fusion rate lowered by the nets", f"{100 * r['fusion_rate_lowered_by']:.1f} %"),
            ("frames dropped (alone -> with nets)", f"{100 * a['dropped_share']:.1f} % -> {100 * w['dropped_share']:.1f} %"),
            ("fuse ms p50/p95 (alone; with nets)", f"{a['fuse_ms_p50']}/{a['fuse_ms_p95']}; {w['fuse_ms_p50']}/{w['fuse_ms_p95']}"),
            ("snapshot ms on the fusion thread p50/p95/max", f"{w['snapshot_ms_p50']}/{w['snapshot_ms_p95']}/"
                                                              f"{w['snapshot_ms_max']}"),
            ("label latency p50 / p95 (s)", f"{w['latency_p50_s']} / {w['latency_p95_s']}"),
            ("queue / oldest wait at the last frame", f"{w['queue_at_end']} / {w['oldest_wait_at_end_s']} s"),
            ("drain after the last frame (s)", f"{w['drain_s']}"),
            ("live labels the drain kept", f"{100 * (w['live_labels_kept_by_drain'] or 0):.1f} %"),
            ("whole-scene inference (s; alone, at live rate)", f"{r['whole_scene']['whole_infer_s']}, "
                                                               f"{k['whole_infer_live_s']}"),
            ("chunks inferred / skipped (unchanged)", f"{w['live_chunks_inferred']} / {w['live_chunks_skipped']}"),
            ("whole scene every N at equal p95", f"N = {k['whole_every_n_at_equal_latency']}"
                                                 f"{'' if k['whole_can_reach_that_latency'] else ' (cannot reach it)'}"),
            ("incremental / whole work at equal p95", f"{k['ratio_at_equal_latency']:.3f}"),
            *[(f"incremental / whole every {n}", f"{k[f'ratio_vs_every_{n}']:.3f}")
              for n in r["config"]["compare_every"]]]
    print(f"labels benchmark ({r['weights']} weights, {r['config']['frames']} frames at {r['config']['fps']:.0f} "
          f"frames/s, {r['cpu_cores']} cores, load {r['load_avg_1min']:.1f})")
    for name, value in rows:
        print(f"  {name:<42} {value}")


if __name__ == "__main__":
    main()
