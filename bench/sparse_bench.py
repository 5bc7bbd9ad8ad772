"""Owns the sparse-convolution benchmark: submanifold conv vs dense conv3d on surface-like voxels.

Prints a table and writes bench/results/sparse.json. Run: `.venv/bin/python -m bench.sparse_bench`.
Scenes are voxelized surfaces (a floor, two walls, three sphere shells), not random volumes.
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
import torch.nn.functional as F  # noqa: E402

from nets.sparse import SparseTensor, SubmanifoldConv3d  # noqa: E402
from nets.sparse import coords as C  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


def surface_scene(target: int) -> np.ndarray:
    """(N,3) int32 unique voxels of a floor, two walls and three sphere shells, about target voxels."""
    side = int(np.sqrt(target / 3.6))
    g = np.arange(side)
    a, b = np.meshgrid(g, g, indexing="ij")
    a, b, z = a.ravel(), b.ravel(), np.zeros(side * side, int)
    parts = [np.stack([a, b, z], 1), np.stack([a, z, b], 1), np.stack([z, a, b], 1)]
    for cx, cy, cz, r in ((0.3, 0.3, 0.2, 0.15), (0.7, 0.4, 0.25, 0.2), (0.45, 0.75, 0.15, 0.12)):
        c, rad = np.array([cx, cy, cz]) * side, r * side
        lo = np.floor(c - rad - 1).astype(int)
        box = np.stack(np.meshgrid(*[np.arange(lo[i], lo[i] + int(2 * rad + 3)) for i in range(3)],
                                   indexing="ij"), -1).reshape(-1, 3)
        d = np.linalg.norm(box + 0.5 - c, axis=1)
        parts.append(box[np.abs(d - rad) < 0.5])
    pts = np.unique(np.concatenate(parts), axis=0)
    return pts[(pts >= 0).all(1) & (pts < side).all(1)].astype(np.int32)


def timed(fn, reps: int) -> float:
    """Median milliseconds of fn over reps runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def bench_sparse(pts: np.ndarray, ch: int, reps: int) -> dict:
    feats = torch.randn(len(pts), ch)
    coords = torch.from_numpy(pts)
    kmap_ms = timed(lambda: C.submanifold_map(SparseTensor.from_coords(coords, feats).coords, 3), reps)
    x = SparseTensor.from_coords(coords, feats)
    conv = SubmanifoldConv3d(ch, ch)
    with torch.no_grad():
        fwd = timed(lambda: conv(x), reps)
    xg = x.replace(feats.clone().requires_grad_(True))

    def fwd_bwd():
        conv.zero_grad(set_to_none=True)
        conv(xg).features.sum().backward()

    return {"kmap_ms": kmap_ms, "fwd_ms": fwd, "fwd_bwd_ms": timed(fwd_bwd, reps)}


def bench_dense(pts: np.ndarray, ch: int, max_bytes: float, reps: int) -> dict:
    side = int(pts.max()) + 1
    nbytes = side ** 3 * ch * 4
    if nbytes > max_bytes:
        return {"note": f"skipped: dense {side}^3x{ch} grid is {nbytes / 2**30:.1f} GiB"}
    dense = torch.zeros(1, ch, side, side, side)
    p = torch.from_numpy(pts).long()
    dense[0, :, p[:, 0], p[:, 1], p[:, 2]] = torch.randn(ch, len(p))
    w = torch.randn(ch, ch, 3, 3, 3) * 0.05
    with torch.no_grad():
        fwd = timed(lambda: F.conv3d(dense, w, padding=1), reps)
    dg, wg = dense.requires_grad_(True), w.requires_grad_(True)
    fwd_bwd = timed(lambda: F.conv3d(dg, wg, padding=1).sum().backward(), reps)
    return {"grid": side, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd}


def open3d_status() -> str:
    try:
        import open3d.ml.torch  # noqa: F401
    except Exception as exc:  # any import failure means the reference cannot run here
        return f"unavailable ({type(exc).__name__})"
    return "importable (not benchmarked)"


def run(sizes, channels, threads, reps, dense_reps, max_dense_gib) -> list[dict]:
    rows = []
    for target in sizes:
        pts = surface_scene(target)
        for nt in threads:
            torch.set_num_threads(nt)
            for ch in channels:
                row = {"voxels": len(pts), "channels": ch, "threads": nt, **bench_sparse(pts, ch, reps)}
                dense = bench_dense(pts, ch, max_dense_gib * 2**30, dense_reps)
                row["dense"] = dense
                if "fwd_ms" in dense:
                    row["dense_over_sparse_fwd"] = dense["fwd_ms"] / row["fwd_ms"]
                    row["dense_over_sparse_fwd_bwd"] = dense["fwd_bwd_ms"] / row["fwd_bwd_ms"]
                log.info("%s", row)
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'voxels':>7} {'ch':>3} {'thr':>3} {'kmap ms':>8} {'fwd ms':>8} {'f+b ms':>8} " \
           f"{'dense fwd':>10} {'dense f+b':>10} {'x fwd':>6} {'x f+b':>6}"
    lines = [head]
    for r in rows:
        d = r["dense"]
        dense = f"{d['fwd_ms']:>10.0f} {d['fwd_bwd_ms']:>10.0f} {r['dense_over_sparse_fwd']:>6.1f} " \
                f"{r['dense_over_sparse_fwd_bwd']:>6.1f}" if "fwd_ms" in d else f"  {d['note']}"
        lines.append(f"{r['voxels']:>7} {r['channels']:>3} {r['threads']:>3} {r['kmap_ms']:>8.1f} "
                     f"{r['fwd_ms']:>8.1f} {r['fwd_bwd_ms']:>8.1f} {dense}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dense-reps", type=int, default=1)
    ap.add_argument("--max-dense-gib", type=float, default=0.6, help="largest dense feature grid to try")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = run(args.sizes, args.channels, args.threads, args.reps, args.dense_reps, args.max_dense_gib)
    o3d = open3d_status()
    print(table(rows))
    print(f"open3d.ml.torch SparseConv: {o3d}")
    out = ROOT / "bench" / "results" / "sparse.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "open3d_ml_torch": o3d, "torch": torch.__version__,
                               "cpus": os.cpu_count()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
