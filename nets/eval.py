"""Owns evaluation of the shipped (or any) weights on held-out synthetic rooms (`python -m nets.eval`).

    python -m nets.eval [--weights W] [--seeds 1000:1010] [--cache DIR] [--mesh-seeds 1000,1001]
                        [--json FILE]
    python -m nets.eval --real-room [DATA] [--real-room-out DIR] [--frames N] [--weights W] [--json FILE]

Scores (see nets.metrics): per-class IoU and mIoU on the observed surface, completion IoU, SDF L1,
coverage with and without completion. With --mesh-seeds it also runs `main.py reconstruct
synthetic:SEED --labels final --weights W` and scores the per-vertex labels of `mesh.ply` against the ground-truth
mesh (closest triangle's class; vertices whose closest surface is none of the 20 classes are skipped).
Held-out seeds must never be used in training (training uses 0-999; validation 900-905).
With --real-room it runs only the real-room check instead (see nets.real_room: a ScanNet room rendered,
reconstructed with ground-truth and with tracked poses, per-vertex mIoU of both; frames and meshes go
to --real-room-out, a new temporary folder by default; scores to bench/results/real_room.json).
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from storage.atomic import write_text_atomic
from fusion.classes import CLASSES
from fusion.errors import UserError
from storage.plyio import read_labeled_ply
from synth.world import build_world
from nets.data import CLASS_IDS, IGNORE, Sample, closest_surface, make_sample, nyu40_to_class_index
from nets.infer import DEFAULT_WEIGHTS, ChunkModel
from nets.metrics import sample_scores, summarise
from nets.real_room import DATA_DIR, RealRoomConfig, points_path, run_real_room, vertex_scores
from nets.real_room import table as real_room_table

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


def held_out_samples(seeds, cache: Path | None) -> list[Sample]:
    out = []
    for seed in tqdm(list(seeds), desc="held-out scans", leave=False):
        path = cache / f"{seed}_0.npz" if cache else None
        if path is not None and path.exists():
            out.append(Sample.load(path))
            continue
        s = make_sample(seed, 0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            s.save(path)
        out.append(s)
    return out


def mesh_label_accuracy(mesh_ply: Path, seed: int) -> dict:
    """Share of mesh.ply vertices whose label equals the closest ground-truth triangle's class, and the
    per-vertex ScanNet-20 mIoU (`nets.real_room.vertex_scores`: the ceiling and other classes left out)."""
    mesh = read_labeled_ply(mesh_ply)
    world = build_world(seed)
    _, gt_class = closest_surface(world.vertices, world.triangles, nyu40_to_class_index(world.tri_labels),
                                  np.asarray(mesh["xyz_m"], np.float32))
    keep = gt_class != IGNORE
    gt = CLASS_IDS[gt_class[keep].astype(np.int64)]
    pred = np.asarray(mesh["labels"])[keep]
    return {"vertices": int(keep.sum()), "accuracy": float(np.mean(pred == gt)) if keep.any() else float("nan"),
            "unlabeled_share": float(np.mean(pred == 0)) if keep.any() else float("nan"),
            "miou": vertex_scores(pred, gt)["miou"]}


def reconstruct_and_score(seed: int, out_dir: Path, frames: int, weights: Path) -> dict:
    """Run the headless contract with `weights` and score its mesh.ply."""
    out = out_dir / f"reconstruct_{seed}"
    cmd = [sys.executable, str(ROOT / "main.py"), "reconstruct", f"synthetic:{seed}", "--out", str(out),
           "--labels", "final", "--max-frames", str(frames), "--weights", str(weights)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return mesh_label_accuracy(out / "mesh.ply", seed)


def table(scores: dict) -> str:
    names = {i: CLASSES[int(CLASS_IDS[i])][0] for i in range(len(CLASS_IDS))}
    rows = [f"{'class':<16}{'IoU':>8}"] + [f"{names[i]:<16}{v:>8.3f}" for i, v in sorted(scores["class_iou"].items())]
    rows += ["", f"{'mIoU (classes present)':<32}{scores['miou']:>8.3f}",
             f"{'accuracy (observed sites)':<32}{scores['accuracy']:>8.3f}",
             f"{'completion IoU':<32}{scores['completion_iou']:>8.3f}",
             f"{'SDF L1 (m)':<32}{scores['sdf_l1_m']:>8.4f}",
             f"{'coverage, observed only':<32}{scores['coverage_observed']:>8.3f}",
             f"{'coverage, with completion':<32}{scores['coverage_completed']:>8.3f}",
             f"{'added geometry within 1 cell':<32}{scores['added_precision']:>8.3f}"]
    return "\n".join(rows)


def _seeds(text: str) -> list[int]:
    if ":" in text:
        a, b = (int(v) for v in text.split(":"))
        return list(range(a, b))
    return [int(v) for v in text.split(",") if v]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nets.eval", description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--seeds", default="1000:1010", help="held-out rooms, FIRST:LAST or a,b,c")
    p.add_argument("--cache", type=Path, help="keep the held-out scans here")
    p.add_argument("--turns", type=int, choices=range(1, 5), default=None, metavar="1..4",
                   help="predictions averaged over this many quarter turns (4: as the final labels of "
                        "`reconstruct --labels final`, the default with --real-room-rescore; 1: as the live "
                        "labels, the default for the held-out rooms)")
    p.add_argument("--mesh-seeds", default="", help="also reconstruct these rooms and score mesh.ply labels")
    p.add_argument("--mesh-frames", type=int, default=150)
    p.add_argument("--json", type=Path, default=None,
                   help="scores (default bench/results/nets_eval.json, or real_room.json with --real-room)")
    p.add_argument("--real-room", type=Path, nargs="?", const=DATA_DIR, default=None, metavar="DATA",
                   help=f"run only the real-room check on a ScanNet room's points (default {DATA_DIR})")
    p.add_argument("--real-room-out", type=Path, default=None,
                   help="folder for the real room's frames and reconstructions (outside the repository; "
                        "default: a new temporary folder)")
    p.add_argument("--frames", type=int, default=RealRoomConfig.frames, help="real-room frames to render")
    p.add_argument("--real-room-rescore", type=Path, default=None, metavar="DIR",
                   help="relabel the reconstructions a real-room run saved in DIR with --weights (same geometry, "
                        "only the labels differ) and score them")
    p.add_argument("--phases", type=int, default=1, metavar="1..4",
                   help="with --real-room-rescore: also score the scan shifted sideways by whole cells, at this "
                        "many grid phases in all (the mIoU of each and their mean)")
    return p


def real_room_main(args) -> int:
    """The real-room check: both variants, a table, JSON."""
    if args.frames < 2:
        raise UserError(f"--frames {args.frames}: expected at least 2")
    points_path(args.real_room)  # a missing file fails here, before the weights load
    out = args.real_room_out or Path(tempfile.mkdtemp(prefix="real_room_"))
    log.info("real room: frames and reconstructions go to %s", out)
    model = ChunkModel.load(args.weights)
    t0 = time.perf_counter()
    return _report_real_room(run_real_room(out, model, RealRoomConfig(frames=args.frames), args.real_room), args, t0)


def rescore_main(args) -> int:
    """The saved reconstructions of a real-room run relabelled with --weights: a table, JSON."""
    from nets.turns import FINAL_TURNS
    from nets.real_room_rescore import rescore_real_room

    points_path(args.real_room)  # a missing file fails here, before the weights load
    model = ChunkModel.load(args.weights).with_turns(args.turns or FINAL_TURNS)
    t0 = time.perf_counter()
    result = rescore_real_room(args.real_room_rescore, model, RealRoomConfig(), args.real_room, args.phases)
    return _report_real_room(result, args, t0)


def _report_real_room(result: dict, args, t0: float) -> int:
    """Print and write a real-room result, with the weights, the time since t0 and the command."""
    result = result | {"weights": str(args.weights), "eval_s": round(time.perf_counter() - t0, 1),
                       "command": "python -m nets.eval " + " ".join(args.argv)}
    print(real_room_table(result))
    path = args.json or ROOT / "bench" / "results" / "real_room.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=2, default=float))
    return 0


def _held_out_main(args) -> int:
    model = ChunkModel.load(args.weights)
    t0 = time.perf_counter()
    samples = held_out_samples(_seeds(args.seeds), args.cache)
    turns = args.turns or 1
    scores = summarise([sample_scores(model.net, s, turns=turns) for s in samples])
    scores["turns"] = turns
    scores["eval_s"] = time.perf_counter() - t0
    scores["seeds"] = _seeds(args.seeds)
    json_path = args.json or ROOT / "bench" / "results" / "nets_eval.json"
    if args.mesh_seeds:
        scores["mesh"] = {s: reconstruct_and_score(s, json_path.parent, args.mesh_frames, args.weights.resolve())
                          for s in _seeds(args.mesh_seeds)}
    print(table(scores))
    for seed, m in scores.get("mesh", {}).items():
        print(f"mesh.ply labels, room {seed}: accuracy {m['accuracy']:.3f}, mIoU {m['miou']:.3f} "
              f"of {m['vertices']} vertices")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json_path, json.dumps(scores, indent=2, default=float))
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.real_room_rescore is not None:
            return rescore_main(args)
        return real_room_main(args) if args.real_room is not None else _held_out_main(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
