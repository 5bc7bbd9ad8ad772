"""Owns the contention benchmark: how fast the fusion loop runs beside one busy neighbour, on this machine.

The live benchmark's target (fusion with the nets at least 0.8 of the rate without them) depends on what a
second busy thread costs the fusion loop on the machine at hand. This measures it without our nets' thread
in the process: the fusion loop at the app's defaults (1 cm, tracking) over every `--step`-th frame of SRC
(played forward and back when it is short) alone, and beside a neighbour process at niceness 5 (as the nets'
worker runs): `spin` (a Python loop: one core, no memory traffic) or `nets` (the shipped net's forward pass
over a region of the same scene, in a loop: the nets' work). Each with the fusion kernels on 1 and on 2 threads, configurations alternated, `--repeats` times.
A neighbour process holds no lock and no GIL of ours: what fusion loses beside it is what sharing the CPU
costs, a ceiling on the ratio in-process nets can reach.

Run: `python -m bench.contention_bench [SRC] [--step 3] [--frames 80] [--repeats 2]` (SRC: any `reconstruct`
source, synthetic:7 by default); prints a table and writes
bench/results/contention.json. Thread: the main thread; each neighbour is its own process.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py sets it for the app

import numpy as np  # noqa: E402

from bench.live_bench import LiveBenchConfig, app_pipeline  # noqa: E402
from bench.replay import load_frames, play_list  # noqa: E402
from bench.report import finish  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
NEIGHBOURS = ("none", "spin", "nets")
STAGES = ("frame", "track_render", "track_icp", "integrate", "mesh")
NEIGHBOUR_NICE = 5   # the nets' worker's (nets.incremental.LabelerConfig.worker_nice)


def scene_frames(spec: str, step: int, n: int) -> list:
    """`n` frames: every `step`-th frame of `spec`, played forward and back as often as it takes."""
    frames = load_frames(spec, step * n, None)[::step]
    return play_list(frames, 1 + -(-n // max(1, len(frames) - 2)), 30.0)[:n]


def nets_loop(spec: str, step: int) -> None:
    """The `nets` neighbour: fuse part of the scene, then infer one region of it over and over (one thread)."""
    import torch
    from dataclasses import replace
    from fusion.coarse import all_chunk_keys, coarse_region
    from nets.infer import ChunkModel
    torch.set_num_threads(1)
    p = app_pipeline(LiveBenchConfig())
    for f in scene_frames(spec, step, 25):
        p.process(f)
    model = ChunkModel.load()
    grid = replace(model.grid, halo_voxels=16)
    keys = sorted(all_chunk_keys(p.volume, grid))
    mid = np.median(np.array(keys), 0)
    region = coarse_region(p.volume, sorted(keys, key=lambda k: np.abs(np.array(k) - mid).sum())[:6], grid)
    print("ready", flush=True)
    while True:
        model.predict(region)


def _start(kind: str, spec: str, step: int) -> subprocess.Popen | None:
    if kind == "none":
        return None
    code = ("while True: pass" if kind == "spin"
            else f"from bench.contention_bench import nets_loop; nets_loop({spec!r}, {step})")
    proc = subprocess.Popen(["nice", "-n", str(NEIGHBOUR_NICE), sys.executable, "-c", code], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    if kind == "nets" and proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("the nets neighbour did not start")
    return proc


def fuse_beside(frames: list, threads: int, kind: str, spec: str, step: int) -> dict:
    """Median ms per stage of the fusion loop over `frames` (the first 10 left out: warm-up)."""
    import numba
    numba.set_num_threads(threads)
    p, neighbour = app_pipeline(LiveBenchConfig()), _start(kind, spec, step)
    times: dict[str, list] = {s: [] for s in STAGES}
    try:
        for f in frames:
            t0 = time.perf_counter()
            r = p.process(f)
            times["frame"].append((time.perf_counter() - t0) * 1e3)
            for s in STAGES[1:]:
                times[s].append(r.timings_ms.get(s, 0.0))
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
        p.close()
    return {s: round(float(np.median(v[10:])), 1) for s, v in times.items()}


def run(spec: str, step: int, n_frames: int, repeats: int) -> dict:
    import numba
    frames = scene_frames(spec, step, n_frames)
    threads = sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})
    fuse_beside(frames[:15], threads[-1], "none", spec, step)   # compile and warm up
    runs: dict[str, list] = {}
    for _ in range(repeats):
        for t in threads:
            for kind in NEIGHBOURS:
                runs.setdefault(f"{t}/{kind}", []).append(fuse_beside(frames, t, kind, spec, step))
                log.info("%d threads beside %s: %s", t, kind, runs[f"{t}/{kind}"][-1])
    rows = []
    for key, rs in runs.items():
        t, kind = key.split("/")
        rows.append({"kernel_threads": int(t), "neighbour": kind} |
                    {f"{s}_ms": round(float(np.mean([r[s] for r in rs])), 1) for s in STAGES})
    alone = {r["kernel_threads"]: r["frame_ms"] for r in rows if r["neighbour"] == "none"}
    for r in rows:
        r["rate_vs_alone_same_threads"] = round(alone[r["kernel_threads"]] / r["frame_ms"], 3)
        r["rate_vs_alone_all_threads"] = round(alone[threads[-1]] / r["frame_ms"], 3)
    return {"source": spec, "step": step, "frames": n_frames, "repeats": repeats, "cpu_count": os.cpu_count(), "rows": rows}


def print_table(result: dict) -> None:
    cols = ["kernel_threads", "neighbour"] + [f"{s}_ms" for s in STAGES] + ["rate_vs_alone_same_threads",
                                                                             "rate_vs_alone_all_threads"]
    print(" | ".join(cols))
    for r in result["rows"]:
        print(" | ".join(str(r[c]) for c in cols))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default="synthetic:7", help="any `reconstruct` source")
    ap.add_argument("--step", type=int, default=3, help="fuse every n-th frame of the source")
    ap.add_argument("--frames", type=int, default=80, help="frames fused per configuration")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "contention.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("numba").setLevel(logging.WARNING)
    if args.frames < 20 or args.repeats < 1 or args.step < 1:
        print("error: --frames must be at least 20, --repeats and --step at least 1", file=sys.stderr)
        return 2
    return finish(lambda: run(args.source, args.step, args.frames, args.repeats), print_table, args.out)


if __name__ == "__main__":
    sys.exit(main())
