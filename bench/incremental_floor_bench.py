"""Owns the lower bound on incremental labeling work: how much of the net's computation an update after
every N frames must redo on a replayed scan, for an ideal per-layer incremental forward.

The room of `bench.labels_bench` is fused frame by frame (ground-truth poses). After every N frames the
whole scene goes through the net once, with each convolution's input and output sites recorded. Between
two such passes, a layer's input site "changed" when it appeared, vanished, or moved by more than
eps times the layer's RMS feature value. An ideal incremental forward (per-layer feature caches,
residuals below eps dropped; no such scheme ships) would have to recompute exactly the layer's output
sites whose kernel footprint holds a changed input. Their multiply-adds (kernel volume x in x out
channels per site), summed over layers and passes, are compared with whole-scene passes at the same
cadence, which have the same or a longer label latency. eps = inf counts only sites that appear or
vanish: the work no scheme that labels new geometry with the net's context can avoid. The last row,
"new sites, no context", is the share of input sites that are new at each pass: what labeling with no
context at all would cost. Prints a table and writes bench/results/incremental_floor.json.
Run: `.venv/bin/python -m bench.incremental_floor_bench`.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.labels_bench import BenchConfig, load_model, render  # noqa: E402
from fusion.coarse import all_chunk_keys, coarse_region  # noqa: E402
from fusion.pipeline import FusionPipeline, PipelineConfig  # noqa: E402
from fusion.volume import VolumeConfig  # noqa: E402
from nets.cells import pack_cells  # noqa: E402
from nets.sparse import (GenerativeConv3d, GenerativeUpsample3d, SparseTensor, StridedConv3d,  # noqa: E402
                         SubmanifoldConv3d)

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
EPS = (0.1, 0.3, 1.0, math.inf)


def _cube(lo: int, hi: int) -> np.ndarray:
    r = range(lo, hi + 1)
    return np.array([(x, y, z) for x in r for y in r for z in r], np.int64)


def footprint(conv, inputs: np.ndarray) -> np.ndarray:
    """Packed output cells (in the output's stride units) whose kernel reads any of `inputs` (N,3)."""
    k = conv.config.kernel_size
    if isinstance(conv, (SubmanifoldConv3d, GenerativeConv3d)):
        cand = inputs[:, None, :] + _cube(-(k // 2), k // 2)[None]
    elif isinstance(conv, StridedConv3d):
        cand = np.floor_divide(inputs, k)[:, None, :]
    elif isinstance(conv, GenerativeUpsample3d):
        cand = inputs[:, None, :] * k + _cube(0, k - 1)[None]
    else:
        raise TypeError(f"no footprint rule for {type(conv).__name__}")
    return np.unique(pack_cells(cand.reshape(-1, 3)))


def macs_per_site(conv) -> int:
    """Multiply-adds per output site (dense kernel; an upsampled child reads one parent)."""
    c = conv.config
    taps = 1 if isinstance(conv, GenerativeUpsample3d) else c.kernel_size ** 3
    return taps * c.in_channels * c.out_channels


class LayerRecorder:
    """Forward hooks on every sparse convolution of a net: input cells/features and output cells of the
    last pass. One thread."""

    TYPES = (SubmanifoldConv3d, StridedConv3d, GenerativeConv3d, GenerativeUpsample3d)

    def __init__(self, net: torch.nn.Module):
        self.convs = {name: m for name, m in net.named_modules() if isinstance(m, self.TYPES)}
        self.last: dict[str, tuple] = {}
        for name, m in self.convs.items():
            m.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def record(module, inputs, output):
            x = inputs[0]
            self.last[name] = (x.coordinates[:, 1:].cpu().numpy().astype(np.int64),
                               x.features.detach().cpu().numpy().copy(),
                               output.coordinates[:, 1:].cpu().numpy().astype(np.int64))
        return record


def changed_cells(old: tuple, new: tuple, eps: float) -> np.ndarray:
    """Input cells (N,3) that appeared, vanished or changed by more than eps * RMS of the new features."""
    (oc, of, _), (nc, nf, _) = old, new
    ok, nk = pack_cells(oc), pack_cells(nc)
    _, io, inew = np.intersect1d(ok, nk, assume_unique=True, return_indices=True)
    moved = np.ones(len(nk), bool)
    if math.isinf(eps):
        moved[inew] = False
    else:
        rms = float(np.sqrt(np.mean(nf ** 2))) + 1e-12
        moved[inew] = np.abs(of[io] - nf[inew]).max(1) > eps * rms
    vanished = np.ones(len(ok), bool)
    vanished[io] = False
    return np.concatenate([nc[moved], oc[vanished]])


def pass_work(rec: LayerRecorder, old: dict | None, new: dict, eps: float) -> int:
    """Multiply-adds an ideal incremental forward needs to go from `old` to `new` (all of `new` when old is None)."""
    total = 0
    for name, conv in rec.convs.items():
        out = new[name][2]
        if old is None:
            n = len(out)
        else:
            n = int(np.isin(pack_cells(out), footprint(conv, changed_cells(old[name], new[name], eps))).sum())
        total += n * macs_per_site(conv)
    return total


def run(cfg: BenchConfig, every: int) -> dict:
    model, weights = load_model()
    rec = LayerRecorder(model.net)
    frames = render(cfg)
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=cfg.voxel_size_m, device="cpu"),
                                         poses="gt"))
    whole = 0
    incr = dict.fromkeys(EPS, 0)
    whole_sites = new_sites = 0
    prev, prev_sites = None, np.zeros(0, np.int64)
    try:
        for i, frame in enumerate(tqdm(frames, desc="fusing", unit="frame")):
            pipe.process(frame)
            if (i + 1) % every:
                continue
            region = coarse_region(pipe.volume, all_chunk_keys(pipe.volume, model.grid), model.grid, 0)
            if len(region) == 0:
                continue
            with torch.no_grad():
                model.net(SparseTensor.from_coords(torch.from_numpy(region.coords), torch.from_numpy(region.features)))
            cur = dict(rec.last)
            whole += pass_work(rec, None, cur, 0.0)
            for eps in EPS:
                incr[eps] += pass_work(rec, prev, cur, eps)
            sites = pack_cells(region.coords)
            whole_sites += len(sites)
            new_sites += int((~np.isin(sites, prev_sites)).sum())
            prev, prev_sites = cur, sites
    finally:
        pipe.close()
    rows = {("inf" if math.isinf(e) else str(e)): round(incr[e] / max(whole, 1), 4) for e in EPS}
    return {"config": asdict(cfg), "weights": weights, "every_frames": every,
            "whole_scene_macs": whole, "ratio_by_eps": rows,
            "new_sites_no_context_ratio": round(new_sites / max(whole_sites, 1), 4)}


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=24, help="frames between passes (24: the cadence at which "
                    "whole-scene passes match the live labels' p95 latency in bench.labels_bench)")
    ap.add_argument("--frames", type=int, default=BenchConfig.frames)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "incremental_floor.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = run(BenchConfig(frames=args.frames), args.every)
    print(f"ideal incremental forward vs whole-scene passes, both every {args.every} frames "
          f"({result['config']['frames']} frames, {result['weights']} weights); work = convolution multiply-adds")
    for eps, ratio in result["ratio_by_eps"].items():
        print(f"  residuals below {eps:>4} x RMS dropped   {ratio:.3f}")
    print(f"  new sites, no context               {result['new_sites_no_context_ratio']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
