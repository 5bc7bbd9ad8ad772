"""Owns training of the semantic + completion net on fused synthetic scans (`python -m nets.train`).

    python -m nets.train --data DIR --out DIR [--steps N] [--resume] [--init WEIGHTS --lr LR]
    torchrun --nproc_per_node N -m nets.train ...     # DDP (gloo on CPU, nccl on CUDA)

Data: `nets.data` samples (written first with `--make-data` if the folder is empty). A fixed
validation split (`--val`, seeds never trained on) is scored every `val_every` steps. Checkpoints are
written atomically every `checkpoint_every` steps and at the end; `--resume` continues from the last
one. `--init` fine-tunes from a weights file (the shipped net, say, on ScanNet or more rooms). The
finished net is also written as `OUT/weights.pt` in the shipped format (`nets.infer`). Deterministic
given `--seed` (one process, same thread count).
"""
from __future__ import annotations

import argparse
import ast
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from storage.atomic import atomic_path
from fusion.coarse import CoarseGridConfig
from fusion.errors import UserError
from nets.batch import Augment, BatchTargets, make_batch
from nets.data import Sample, build_dataset
from nets.infer import save_weights
from nets.metrics import evaluate_samples
from nets.model import EMPTY, ModelConfig, SemanticCompletionNet, with_height_input

log = logging.getLogger(__name__)
tqdm.monitor_interval = 0  # no monitor thread: the bar is refreshed by the loop itself


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    steps: int = 3000               #: optimiser steps
    rooms_per_step: int = 2         #: samples in one batch (per process)
    crop_cells: int = 56            #: each sample is cropped to a column this many cells wide (0: whole)
    lr: float = 3e-3                #: peak learning rate (AdamW, cosine decay after a warm-up)
    warmup_steps: int = 100         #: linear warm-up
    weight_decay: float = 1e-4      #: AdamW weight decay
    class_weight_power: float = 0.4  #: class weights = frequency ** -power (normalised)
    empty_weight: float = 0.5       #: weight of the "empty" class in the semantic loss
    sdf_weight: float = 0.5         #: weight of the L1 signed-distance loss
    occ_weight: float = 1.0         #: weight of the occupancy losses (summed over levels)
    checkpoint_every: int = 200     #: steps between checkpoints
    val_every: int = 500            #: steps between validation passes
    seed: int = 0                   #: makes sampling, augmentation and init reproducible
    threads: int = 2                #: torch intra-op threads per process
    #: the net reads height above the floor (the world is gravity-aligned, floor at z = 0)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(height_input=True))
    #: what real scans look like: their colour differs from the synthetic rooms' (often far darker: the
    #: ScanNet room's mean colour is 0.27/0.20/0.12 against about 0.6 here, so a brightness factor of
    #: 0.3-1.3; a wider jitter; dropout so geometry decides); whole-cell shifts below the coarsest stride
    #: (4) put floors and walls at every pooling phase, the floor up to a cell below or two above z = 0;
    #: gravity off by up to 5 degrees; walls scanned only 1.3-2 m up, holes, noisier surfaces. Classes are
    #: not repainted (`Augment.class_recolour`, `--augment class_recolour=0.4`): on the real room it made the
    #: panelled walls wall but the doors wall too (door IoU 0.40 -> 0.04; model card)
    augment: Augment = field(default_factory=lambda: Augment(
        colour_jitter=0.25, exposure=(0.3, 1.3), colour_dropout=0.2, max_shift_cells=4, z_shift_offset_cells=1,
        max_tilt_deg=5.0, partial_wall_chance=0.4, hole_chance=0.4, max_sdf_noise_cells=0.15))


def class_weights(samples: list[Sample], cfg: TrainConfig) -> torch.Tensor:
    """Inverse-frequency weights over the classes of surface cells near the inputs."""
    counts = np.ones(cfg.model.n_classes)
    for s in samples:
        surf = np.abs(s.sdf_cells.astype(np.float32)) < 0.75
        lab = s.label[surf]
        counts[:EMPTY] += np.bincount(lab[lab < EMPTY], minlength=EMPTY)[:EMPTY]
        counts[EMPTY] += np.count_nonzero(~surf) * 0.05
    w = counts ** -cfg.class_weight_power
    w = w / w[:EMPTY].mean()
    w[EMPTY] = cfg.empty_weight
    return torch.tensor(w, dtype=torch.float32)


def loss_terms(net, x, targets: BatchTargets, weights: torch.Tensor, cfg: TrainConfig) -> dict:
    """Forward with ground-truth-guided pruning; semantic CE, SDF L1 and occupancy BCE terms."""
    def keep_targets(level: int, sites) -> torch.Tensor:
        return torch.from_numpy(targets.surface(sites.coordinates.numpy(), 2 ** level))

    out = net(x, keep_targets)
    coords = out.sites.coordinates.numpy()
    observed = out.observed.numpy()
    sem = torch.from_numpy(targets.semantic(coords, observed))
    sem_loss = F.cross_entropy(out.logits, sem, weight=weights, ignore_index=255)
    sdf = torch.from_numpy(targets.sdf_cells(coords))
    sdf_loss = F.l1_loss(out.sdf_cells, sdf)
    occ_loss = 0.0
    for level, (sites, logits, _) in zip((2, 1, 0), out.levels):
        occ_t = torch.from_numpy(targets.surface(sites.coordinates.numpy(), 2 ** level)).float()
        occ_loss = occ_loss + F.binary_cross_entropy_with_logits(logits, occ_t)
    total = sem_loss + cfg.sdf_weight * sdf_loss + cfg.occ_weight * occ_loss
    return {"loss": total, "sem": sem_loss.detach(), "sdf": sdf_loss.detach(), "occ": occ_loss.detach()}


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def save_checkpoint(path: Path, net, opt, step: int, cfg: TrainConfig, extra: dict | None = None) -> None:
    state = {"model": _unwrap(net).state_dict(), "optimizer": opt.state_dict(), "step": step,
             "config": asdict(cfg), "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _init_net(path: Path, cfg: TrainConfig) -> SemanticCompletionNet:
    from nets.infer import ChunkModel

    net = ChunkModel.load(path).net
    if cfg.model.height_input:
        net = with_height_input(net)  # weights trained without height go on from where they were
    if net.config != cfg.model:
        raise UserError(f"{path}: the weights are of another model configuration than this training's")
    log.info("starting from the weights in %s", path)
    return net


def _unwrap(net):
    return net.module if hasattr(net, "module") else net


class _Dist:
    """torch.distributed when launched by torchrun, else a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            import torch.distributed as dist
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def wrap(self, net):
        if self.world == 1:
            return net
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(net)

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()


def train(train_samples: list[Sample], val_samples: list[Sample], out_dir: Path, cfg: TrainConfig,
          resume: bool = False, progress: bool = True, stop_at: int | None = None, init: Path | None = None) -> dict:
    """Train; returns the last validation metrics. Writes out_dir/checkpoint.pt and, when all
    cfg.steps are done, out_dir/model.pt. stop_at: leave after that step (as if interrupted).
    init: start from the net of a weights file (fine-tuning; a checkpoint found by `resume` wins)."""
    dist = _Dist()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = SemanticCompletionNet(cfg.model) if init is None else _init_net(init, cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, ckpt = 0, out_dir / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        log.info("resumed from %s at step %d", ckpt, step)
    model = dist.wrap(net)
    weights = class_weights(train_samples, cfg)
    metrics: dict = {}
    bar = tqdm(total=cfg.steps, initial=step, desc="training", disable=not progress or dist.rank != 0)
    t_start = time.monotonic()
    while step < min(cfg.steps, stop_at or cfg.steps):
        rng = np.random.default_rng([cfg.seed, step, dist.rank])
        pick = rng.choice(len(train_samples), cfg.rooms_per_step, replace=False)
        x, targets = make_batch([train_samples[i] for i in pick], rng, cfg.augment, cfg.crop_cells)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        model.train()
        terms = loss_terms(model, x, targets, weights, cfg)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        step += 1
        bar.update()
        bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in terms.items()})
        if dist.rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            save_checkpoint(ckpt, net, opt, step, cfg)
        if dist.rank == 0 and val_samples and (step % cfg.val_every == 0 or step == cfg.steps):
            metrics = evaluate_samples(net, val_samples)
            log.info("step %d: val mIoU %.3f, completion IoU %.3f", step, metrics["miou"],
                     metrics["completion_iou"])
    bar.close()
    if dist.rank == 0 and step == cfg.steps:
        meta = {"val": metrics, "train_s": time.monotonic() - t_start, "steps": step,
                "train_samples": len(train_samples), "val_samples": len(val_samples)}
        save_checkpoint(out_dir / "model.pt", net, opt, step, cfg, meta)
        save_weights(out_dir / "weights.pt", net, CoarseGridConfig(), meta)
    dist.close()
    return metrics


def _parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m nets.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of training samples (.npz)")
    p.add_argument("--val", type=Path, help="folder of validation samples (.npz)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", type=Path, metavar="WEIGHTS", help="fine-tune: start from this weights file's net "
                   "(e.g. resources/nets/semantic_completion.pt)")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate")
    p.add_argument("--make-data", type=str, metavar="FIRST:LAST",
                   help="first scan synthetic rooms FIRST..LAST-1 into --data (skips ones already there)")
    p.add_argument("--workers", type=int, default=1, help="processes for --make-data")
    p.add_argument("--augment", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one field of the training augmentation (nets.batch.Augment), e.g. "
                        "class_recolour=0.15; repeatable")
    return p.parse_args(argv)


def _load_dir(folder: Path | None) -> list[Sample]:
    if folder is None:
        return []
    paths = sorted(Path(folder).glob("*.npz"))
    return [Sample.load(p) for p in tqdm(paths, desc=f"loading {folder.name}", leave=False)]


def _augment_overrides(augment: Augment, items: list[str]) -> Augment:
    """`augment` with FIELD=VALUE overrides (the value parsed as a Python literal); UserError names a bad one."""
    names = {f.name for f in fields(Augment)}
    for item in items:
        key, _, text = item.partition("=")
        if key not in names:
            raise UserError(f"--augment {item}: no such field (one of {', '.join(sorted(names))})")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise UserError(f"--augment {item}: the value is not a number or tuple") from None
        augment = replace(augment, **{key: value})
    return augment


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse(argv)
    cfg = replace(TrainConfig(), steps=args.steps, seed=args.seed, threads=args.threads, lr=args.lr)
    try:
        cfg = replace(cfg, augment=_augment_overrides(cfg.augment, args.augment))
    except UserError as exc:
        log.error("%s", exc)
        return 2
    if args.make_data:
        first, last = (int(v) for v in args.make_data.split(":"))
        build_dataset(args.data, range(first, last), 1, workers=args.workers)
    train_samples = _load_dir(args.data)
    if not train_samples:
        log.error("no training samples in %s (use --make-data FIRST:LAST)", args.data)
        return 2
    try:
        metrics = train(train_samples, _load_dir(args.val), args.out, cfg, resume=args.resume, init=args.init)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    log.info("done: %s", {k: v for k, v in metrics.items() if not isinstance(v, dict)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
