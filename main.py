"""Single entry point: the GUI by default, subcommands for headless work (reconstruct, synth, ...)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
# torch (nets thread) and numba/Open3D (fusion) share the cores: OpenMP threads must not spin-wait
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
log = logging.getLogger("main")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="Real-time RGB-D reconstruction and labeling.")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("reconstruct", help="fuse a source into a mesh, trajectory and stats (headless)")
    r.add_argument("source", help="dataset folder, .bag/.db3, realsense[:SERIAL] or synthetic[:SEED]")
    r.add_argument("--out", required=True, type=Path, help="output folder")
    r.add_argument("--voxel-size", type=float, default=0.01, help="voxel edge in metres (default 0.01)")
    r.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    r.add_argument("--poses", choices=("track", "gt"), default="track")
    r.add_argument("--labels", choices=("none", "incremental", "final"), default=None,
                   help="labeling nets: incremental (default when trained weights are shipped), final or none")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--weights", type=Path, default=None,
                   help="labeling net weights, e.g. fine-tuned with `python -m nets.train --init` (default: the "
                        "shipped ones; with --weights, --labels defaults to incremental)")
    r.add_argument("--loop-closure", action="store_true",
                   help="find loops among keyframes and correct the map when one closes (off by default)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = sub.add_parser("synth", help="write a synthetic labeled RGB-D sequence")
    s.add_argument("seed", type=int)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--frames", type=int, default=300)
    g = sub.add_parser("gui", help="open the desktop app")
    g.add_argument("--source", default=None, help="SRC as for reconstruct (default: the last one used, else the demo)")
    g.add_argument("--autostart", action="store_true", help="start scanning the source as soon as the window opens")
    g.add_argument("--exit-after-frames", type=int, default=None,
                   help="quit once N frames are fused (or the source ends) and the labels settle")
    g.add_argument("--screenshot", type=Path, default=None, help="save the window to this PNG once the scan finishes (or N frames are fused)")
    rec = sub.add_parser("record", help="record the RealSense camera to a file")
    rec.add_argument("--out", required=True, type=Path)
    rec.add_argument("--seconds", type=float, default=None, help="stop after S seconds (default: Ctrl-C)")
    e = sub.add_parser("export", help="export a saved session")
    e.add_argument("session", type=Path)
    e.add_argument("--out", required=True, type=Path)
    rl = sub.add_parser("relabel", help="apply label corrections to a session, learn from them, relabel the scene")
    rl.add_argument("session", type=Path)
    rl.add_argument("--corrections", required=True, type=Path,
                    help='JSON list of {"point_m": [x,y,z], "label": NYU40 id, "mode": "region"|"brush", "radius_m": M}')
    rl.add_argument("--out", required=True, type=Path, help="output folder: mesh.ply, labels.json, session, weights.pt")
    rl.add_argument("--weights", type=Path, default=None, help="base weights to learn from (default: the shipped ones)")
    rl.add_argument("--budget-s", type=float, default=None, help="learning time in seconds (default 30)")
    rl.add_argument("--method", choices=("head", "finetune"), default=None,
                    help="head: the semantic head learns on the frozen net's features, 1-3 s (default); "
                         "finetune: the finest decoder levels learn too, for the whole budget")
    rl.add_argument("--threads", type=int, default=2, help="torch threads while learning and relabeling")
    rl.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _label_hook(mode: str | None, device: str, weights: Path | None = None):
    """(mode, hook factory or None) for --labels; the default is incremental when weights are shipped
    or given (`weights`: a weights file instead of the shipped one)."""
    from fusion.errors import UserError

    if mode == "none":
        return mode, None
    try:
        import torch
        from nets.infer import DEFAULT_WEIGHTS, ChunkModel
    except ImportError as exc:  # a build without the nets' dependencies
        if mode is not None:
            raise UserError(f"--labels {mode}: the labeling nets cannot be loaded ({exc})") from None
        log.info("labels: none (the labeling nets cannot be loaded: %s)", exc)
        return "none", None
    if mode is None:
        mode = "incremental" if weights is not None or Path(DEFAULT_WEIGHTS).is_file() else "none"
        if mode == "none":
            log.info("labels: none (no trained weights at %s)", DEFAULT_WEIGHTS)
            return mode, None
    from nets.reconstruct_labels import label_hook_factory

    try:
        model = ChunkModel.load(weights, device="cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    except UserError as exc:
        raise UserError(f"--labels {mode}: {exc}") from None
    return mode, label_hook_factory(mode, model)


def _cmd_reconstruct(args) -> int:
    from fusion.errors import UserError
    from fusion.pipeline import PipelineConfig
    from fusion.reconstruct import ReconstructRequest, reconstruct
    from fusion.volume import VolumeConfig
    from loopclosure.config import LoopClosureConfig

    if not 0.002 <= args.voxel_size <= 0.2:
        raise UserError(f"--voxel-size {args.voxel_size}: expected metres between 0.002 and 0.2")
    cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=args.voxel_size, device=args.device), poses=args.poses,
                         loop=LoopClosureConfig(enabled=args.loop_closure))
    labels, hook = _label_hook(args.labels, args.device, args.weights)
    stats = reconstruct(ReconstructRequest(args.source, args.out, cfg, args.max_frames, labels,
                                           progress=not args.no_progress, label_hook=hook))
    ate = f", ATE {stats['ate_rmse_m'] * 1000:.1f} mm" if "ate_rmse_m" in stats else ""
    g = stats["gravity"]
    up = g["method"] if g["method"] in ("gt", "camera") else f"{g['method']}, confidence {g['confidence']:.2f}"
    lost = (f", tracking lost {stats['tracking_losses']}x, relocalised {stats['relocalisations']}x"
            if stats["tracking_losses"] or stats["relocalisations"] else "")
    log.info("%d frames at %.1f frames/s (%d dropped)%s%s, gravity from %s -> %s", stats["frames"], stats["fps"],
             stats["frames_dropped"], lost, ate, up, args.out)
    return 0


def _cmd_synth(args) -> int:
    from fusion.errors import UserError
    from synth.writer import write_sequence
    from tqdm import tqdm

    if args.frames < 1 or args.seed < 0:
        raise UserError("synth: SEED must be >= 0 and --frames >= 1")
    with tqdm(total=args.frames, unit="frame", desc="synth") as bar:
        write_sequence(args.seed, args.out, args.frames, progress=lambda i, n: bar.update(1))
    log.info("wrote %d frames of synthetic scene %d to %s", args.frames, args.seed, args.out)
    return 0


def _cmd_record(args) -> int:
    from fusion.recorder import RecordConfig, record

    result = record(args.out, RecordConfig(seconds_s=args.seconds))
    log.info("recorded %d frames in %.1f s to %s", result.frames, result.seconds_s, result.path)
    return 0


def _session_labels(extras: dict, mesh):
    """Per-vertex NYU40 labels of the whole mesh from the session's label store; None when it has none."""
    from fusion.errors import UserError
    from nets.labels import LabelStore, has_label_arrays

    if not has_label_arrays(extras):
        return None
    try:
        return LabelStore.from_arrays(extras).mesh_labels(mesh)
    except ValueError as exc:
        raise UserError(f"the session's labels cannot be read: {exc}") from None


def _cmd_export(args) -> int:
    from storage.export import LabeledMesh, check_output, export_mesh
    from storage.session import load_session

    out = check_output(args.out)  # before the (slow) load: bad --out fails fast and writes nothing
    session = load_session(args.session)
    try:
        final = session.pipeline.final_mesh()
    finally:
        session.pipeline.close()
    labels = _session_labels(session.extras, final)
    if labels is None:
        log.info("labels are all 0 (unlabeled): the session holds no labels (reconstructed with --labels none)")
    mesh = LabeledMesh.from_mesh(final, labels)
    written = export_mesh(out, mesh, session.timestamps_s, session.poses)
    log.info("exported %d vertices, %d faces -> %s", len(mesh.positions_m), len(mesh.faces),
             ", ".join(str(p) for p in written))
    return 0


def _cmd_relabel(args) -> int:
    import dataclasses

    from fusion.errors import UserError
    from nets.adapt import AdaptConfig
    from nets.relabel import RelabelRequest, run_relabel

    budget = AdaptConfig.budget_s if args.budget_s is None else args.budget_s
    if not 0 < budget <= 3600 or args.threads < 1:
        raise UserError("relabel: --budget-s must be in (0, 3600] seconds and --threads at least 1")
    import torch

    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(AdaptConfig(), budget_s=budget, threads=args.threads)
    if args.method is not None:
        cfg = dataclasses.replace(cfg, method=args.method)
    done = run_relabel(RelabelRequest(args.session, args.corrections, args.out, args.weights, cfg,
                                      progress=not args.no_progress))
    log.info("%d corrections (%d cells): %d learning steps in %.1f s, relabel %.1f s, %d vertices -> %s",
             done["corrections"], done["corrected_cells"], done["steps"], done["learn_s"], done["relabel_s"],
             done["vertices"], args.out)
    return 0


def _cmd_gui(args) -> int:
    from app.cli import run_gui

    return run_gui(args.source, args.autostart, args.exit_after_frames, args.screenshot)


COMMANDS = {"reconstruct": _cmd_reconstruct, "synth": _cmd_synth, "gui": _cmd_gui,
            "record": _cmd_record, "export": _cmd_export, "relabel": _cmd_relabel}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _build_parser().parse_args(argv)
    if args.command is None:
        args = _build_parser().parse_args(["gui", "--source", "synthetic:0", "--autostart"])
    from fusion.errors import UserError

    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: what was fused so far was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
