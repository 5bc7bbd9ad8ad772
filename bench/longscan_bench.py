"""Owns the long-scan benchmark: a 5,000-frame synthetic scan through `fusion.reconstruct.reconstruct`
(the code `main.py reconstruct` runs), with process RSS and the mesh update time per 500-frame window.

`synthetic:SEED` gives a 300-frame path, so the bench hands `reconstruct` a `SyntheticSource` with a
longer path (its length is a constructor argument) in place of `open_source`'s. Measurements come from
a LabelHook wrapper that sees every FrameResult on the fusion thread and forwards to the nets' hook
(`--labels incremental|final`, as `main.py` builds it); with `--labels none` the wrapper labels nothing
(reconstruct is then told `final` so that it calls the wrapper; the stats say so, this JSON does not).
Prints a row per window and writes bench/results/longscan.json (rewritten after every window).
With `--loop-closure` the scan runs with loop closure on (its keyframe store, worker and map corrections) and
each row adds the keyframes kept, their memory, the loops accepted and the corrections made.
Run: `.venv/bin/python -m bench.longscan_bench [--frames 5000] [--labels incremental] [--loop-closure]`.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402

from fusion import reconstruct as rec_mod  # noqa: E402
from fusion.meshing import MeshArrays  # noqa: E402
from fusion.pipeline import PipelineConfig  # noqa: E402
from fusion.sources.synthetic import SyntheticSource  # noqa: E402
from fusion.volume import VolumeConfig  # noqa: E402
from loopclosure.config import LoopClosureConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class LongScanConfig:
    seed: int = 7                 #: synthetic room
    frames: int = 5000            #: frames of the scan (the camera loops through the room)
    window_frames: int = 500      #: one row (RSS, mesh time) per this many frames
    voxel_size_m: float = 0.01    #: voxel edge
    labels: str = "incremental"   #: incremental | final | none
    poses: str = "track"          #: track | gt
    device: str = "auto"          #: auto | cpu | cuda
    trace_top: int = 0            #: >0: trace Python/numpy allocations and log the N sites that grew most per window
    loop_closure: bool = False    #: scan with loop closure on


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_mb() -> dict:
    """glibc heap over all arenas: bytes handed out (in use, mmapped blocks included) and bytes held free
    (fragmentation that RSS still counts); empty where the C library is not glibc >= 2.33."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    m = fn()
    return {"malloc_in_use_mb": round((m.uordblks + m.hblkhd) / 2**20, 1), "malloc_free_held_mb": round(m.fordblks / 2**20, 1)}


class WindowProbe:
    """LabelHook that measures every window of frames and forwards everything to `inner` (or labels
    nothing). Thread: the reconstruct (fusion) thread, like every LabelHook."""

    def __init__(self, pipeline, inner, cfg: LongScanConfig, out: Path):
        self.pipeline, self.inner, self.cfg, self.out = pipeline, inner, cfg, out
        self.rows: list[dict] = []
        self._mesh_ms: list[float] = []
        self._frames = self._integrated = 0
        self._t0 = time.perf_counter()
        self._trace = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None

    def on_frame(self, result) -> None:
        if self.inner is not None:
            self.inner.on_frame(result)
        self._frames += 1
        self._integrated += bool(result.integrated)
        self._mesh_ms.append(result.timings_ms.get("mesh", 0.0))
        if self._frames % self.cfg.window_frames == 0:
            self._row()

    def _row(self) -> None:
        mesh = np.array(self._mesh_ms)
        now = time.perf_counter()
        row = {"frames": self._frames, "rss_mb": round(rss_mb(), 1), "blocks": self.pipeline.volume.n_blocks,
               "volume_mb": round(self.pipeline.volume.memory_bytes() / 2**20, 1),
               "mesh_ms_window_total": round(float(mesh.sum()), 1), "mesh_ms_mean": round(float(mesh.mean()), 2),
               "mesh_ms_p95": round(float(np.percentile(mesh, 95)), 2), "fps": round(len(mesh) / (now - self._t0), 2),
               "integrated_share": round(self._integrated / self._frames, 3),
               "tracking_failures": self.pipeline.tracker.failures, **malloc_mb(), "python_objects": len(gc.get_objects())}
        loops = self.pipeline.loops
        if loops is not None:
            row |= {"keyframes": loops.stats.keyframes, "keyframes_mb": round(loops.memory_bytes() / 2**20, 1),
                    "loops_accepted": loops.stats.accepted, "corrections": loops.stats.corrections}
        if self._trace is not None:
            row["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
            row["traced_growth"] = self._trace_growth()
        self.rows.append(row)
        self._mesh_ms, self._t0 = [], now
        print(format_row(row), flush=True)
        for site in row.get("traced_growth", []):
            print(f"        {site['mb']:+8.1f} MB  {site['blocks']:>8} blocks  {site['where']}", flush=True)
        write_json(self.out, self.cfg, self.rows, None)

    def _trace_growth(self) -> list[dict]:
        """The allocation sites (3 frames of traceback) whose live traced memory grew most since the last window."""
        snap = tracemalloc.take_snapshot()
        stats = snap.compare_to(self._trace, "traceback")[: self.cfg.trace_top]
        self._trace = snap
        return [{"mb": round(st.size_diff / 2**20, 2), "blocks": st.count_diff,
                 "where": " <- ".join(f"{fr.filename.rsplit('/', 2)[-1]}:{fr.lineno}" for fr in st.traceback)}
                for st in stats]

    def finish(self, interrupted: bool) -> None:
        if self.inner is not None:
            self.inner.finish(interrupted)

    def vertex_labels(self, mesh):
        return self.inner.vertex_labels(mesh) if self.inner else np.zeros(len(mesh.positions_m), np.uint16)

    def completed_mesh(self):
        return self.inner.completed_mesh() if self.inner else (MeshArrays.empty(), np.zeros(0, np.uint16))

    def extras(self) -> dict:
        return self.inner.extras() if self.inner else {}

    def stats(self) -> dict:
        return self.inner.stats() if self.inner else {}

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


HEADER = f"{'frames':>6} | {'RSS MB':>7} | {'malloc':>7} | {'free':>6} | {'objects':>8} | {'blocks':>6} | " \
         f"{'vol MB':>7} | {'mesh ms/win':>11} | {'mesh ms/fr':>10} | {'p95':>6} | {'fps':>5} | {'fails':>5}"


def format_row(r: dict) -> str:
    return (f"{r['frames']:>6} | {r['rss_mb']:>7.1f} | {r.get('malloc_in_use_mb', 0):>7.1f} | "
            f"{r.get('malloc_free_held_mb', 0):>6.1f} | {r['python_objects']:>8} | {r['blocks']:>6} | {r['volume_mb']:>7.1f} | "
            f"{r['mesh_ms_window_total']:>11.1f} | {r['mesh_ms_mean']:>10.2f} | {r['mesh_ms_p95']:>6.2f} | "
            f"{r['fps']:>5.2f} | {r['tracking_failures']:>5}"
            + (f" | keyframes {r['keyframes']} ({r['keyframes_mb']} MB), loops {r['loops_accepted']}, "
               f"corrections {r['corrections']}" if "keyframes" in r else ""))


def write_json(path: Path, cfg: LongScanConfig, rows: list, summary: dict | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"config": asdict(cfg), "rows": rows, "summary": summary, "cpu_count": os.cpu_count()}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _inner_factory(cfg: LongScanConfig):
    """The nets' LabelHook factory exactly as `main.py reconstruct --labels MODE` builds it (None: none)."""
    if cfg.labels == "none":
        return None
    import main

    mode, factory = main._label_hook(cfg.labels, cfg.device)
    return factory if mode != "none" else None


def run(cfg: LongScanConfig, out_json: Path, out_dir: Path) -> dict:
    inner_factory = _inner_factory(cfg)
    probes: list[WindowProbe] = []

    def hook(pipeline):
        probes.append(WindowProbe(pipeline, inner_factory(pipeline) if inner_factory else None, cfg, out_json))
        return probes[-1]

    rec_mod.open_source = lambda spec, max_frames=None: SyntheticSource(cfg.seed, n_frames=cfg.frames)
    pipe_cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=cfg.voxel_size_m, device=cfg.device), poses=cfg.poses,
                              loop=LoopClosureConfig(enabled=cfg.loop_closure))
    req = rec_mod.ReconstructRequest(f"synthetic:{cfg.seed}", out_dir, pipe_cfg, None,
                                     cfg.labels if cfg.labels != "none" else "final", progress=False, label_hook=hook)
    print(HEADER, flush=True)
    t0 = time.perf_counter()
    stats = rec_mod.reconstruct(req)
    rows = probes[0].rows
    summary = {"wall_s": round(time.perf_counter() - t0, 1), "fps": stats["fps"], "ate_rmse_m": stats.get("ate_rmse_m"),
               "rss_mb_first_window": rows[0]["rss_mb"] if rows else None,
               "rss_mb_last_window": rows[-1]["rss_mb"] if rows else None,
               "mesh_ms_mean_first_window": rows[0]["mesh_ms_mean"] if rows else None,
               "mesh_ms_mean_last_window": rows[-1]["mesh_ms_mean"] if rows else None,
               "rss_mb_end": round(rss_mb(), 1), "blocks": stats["blocks"], "label_work": stats.get("label_work"),
               "label_latency_s": stats.get("label_latency_s"), "session_mb": round(
                   (out_dir / "session").stat().st_size / 1e6, 1)}
    write_json(out_json, cfg, rows, summary)
    return summary


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = LongScanConfig()
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--frames", type=int, default=d.frames)
    p.add_argument("--window", type=int, default=d.window_frames)
    p.add_argument("--voxel-size", type=float, default=d.voxel_size_m)
    p.add_argument("--labels", choices=("incremental", "final", "none"), default=d.labels)
    p.add_argument("--poses", choices=("track", "gt"), default=d.poses)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--trace-top", type=int, default=0, metavar="N",
                   help="trace Python and numpy allocations (slower) and print the N sites that grew most per window")
    p.add_argument("--loop-closure", action="store_true", help="scan with loop closure on")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "longscan.json")
    args = p.parse_args(argv)
    cfg = LongScanConfig(args.seed, args.frames, args.window, args.voxel_size, args.labels, args.poses, args.device,
                         args.trace_top, args.loop_closure)
    if cfg.trace_top:
        tracemalloc.start(3)
    with tempfile.TemporaryDirectory(prefix="longscan_") as tmp:
        summary = run(cfg, args.out, Path(tmp))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
