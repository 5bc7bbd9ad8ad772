"""Owns the model benchmark: inference time per 1.6 m chunk (with its halo) and for a whole room, on CPU,
and the time to read labels at every mesh vertex (what the app and exports do after each label change).

Prints a table and writes bench/results/nets.json. Run: `.venv/bin/python -m bench.nets_bench`.
The room is a synthetic one fused from `--frames` frames at 1 cm with ground-truth poses; the shipped
weights are used (their predicted occupancy decides how many sites completion creates).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fusion.coarse import all_chunk_keys, coarse_region  # noqa: E402
from fusion.pipeline import FusionPipeline, PipelineConfig  # noqa: E402
from fusion.sources.synthetic import SyntheticSource  # noqa: E402
from nets.infer import ChunkModel  # noqa: E402
from nets.labels import LabelStore  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


def fused_room(seed: int, frames: int) -> FusionPipeline:
    src = SyntheticSource(seed, n_frames=300, max_frames=frames)
    pipe = FusionPipeline(PipelineConfig(poses="gt", incremental_mesh=False))
    for frame in src:
        pipe.process(frame)
    return pipe


def time_it(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up (numba, allocator)
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3, out


def run(seed: int, frames: int, repeats: int) -> list[dict]:
    model = ChunkModel.load()
    pipe = fused_room(seed, frames)
    grid = model.grid
    keys = sorted(all_chunk_keys(pipe.volume, grid))
    whole = coarse_region(pipe.volume, keys, grid)
    sizes = {k: int(np.count_nonzero(np.all(np.floor_divide(whole.coords, grid.chunk_voxels) == k, axis=1)))
             for k in keys}
    busiest = max(keys, key=sizes.get)
    chunk = coarse_region(pipe.volume, [busiest], grid)
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, region in (("one chunk + halo", chunk), ("whole room", whole)):
            ms, pred = time_it(lambda r=region: model.predict(r), repeats)
            rows.append({"case": name, "threads": threads, "input_sites": len(region),
                         "output_sites": len(pred), "ms": ms})
    ms, _ = time_it(lambda: coarse_region(pipe.volume, [busiest], grid), repeats)
    rows.append({"case": "extract one chunk + halo", "threads": 1, "input_sites": len(chunk),
                 "output_sites": len(chunk), "ms": ms})
    rows.append(_vertex_labels_row(model, whole, pipe.final_mesh().positions_m, repeats))
    pipe.close()
    return rows


def _vertex_labels_row(model, whole, positions_m, repeats: int) -> dict:
    """Labels interpolated at every mesh vertex (`LabelStore.labels_at`) of the room labelled in one pass."""
    store = LabelStore(model.grid)
    store.fuse(model.predict(whole))
    ms, _ = time_it(lambda: store.labels_at(positions_m), repeats)
    return {"case": "labels at mesh vertices", "threads": 1, "input_sites": len(positions_m),
            "output_sites": len(positions_m), "ms": ms}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1003)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "nets.json")
    args = p.parse_args(argv)
    rows = run(args.seed, args.frames, args.repeats)
    print(f"{'case':<26}{'threads':>8}{'in sites':>10}{'out sites':>11}{'ms':>9}")
    for r in rows:
        print(f"{r['case']:<26}{r['threads']:>8}{r['input_sites']:>10}{r['output_sites']:>11}{r['ms']:>9.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "seed": args.seed, "frames": args.frames}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
