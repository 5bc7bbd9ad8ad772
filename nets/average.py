"""Owns weight averaging: one weights file from several runs fine-tuned from the same weights
(`python -m nets.average`).

    python -m nets.average --out OUT.pt A.pt B.pt [...]

Runs that start from the same weights and differ in seed, learning rate or data stay in one basin of
the loss, and the mean of their parameters usually scores better than each of them (the shipped
weights are such a mean; see the model card). Floating-point tensors are averaged; integer buffers
(batch-norm step counters) are taken from the first file. Every file must hold the same model
configuration and grid; a mismatch is refused with a one-line error.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from fusion.errors import UserError
from nets.infer import ChunkModel, save_weights
from nets.model import SemanticCompletionNet

log = logging.getLogger(__name__)


def average_weights(paths: list[Path]) -> ChunkModel:
    """The parameter mean of the weights files `paths` (UserError when they do not fit together)."""
    if len(paths) < 2:
        raise UserError("averaging needs at least two weights files")
    models = [ChunkModel.load(p) for p in paths]
    first = models[0]
    for path, m in zip(paths[1:], models[1:]):
        if m.net.config != first.net.config or m.grid != first.grid:
            raise UserError(f"{path}: another model configuration or grid than {paths[0]}")
    states = [m.net.state_dict() for m in models]
    mean = {k: torch.stack([s[k] for s in states]).mean(0) if v.dtype.is_floating_point else v
            for k, v in states[0].items()}
    net = SemanticCompletionNet(first.net.config)
    net.load_state_dict(mean)
    return ChunkModel(net, first.grid)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m nets.average", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="weights file to write")
    p.add_argument("weights", type=Path, nargs="+", help="weights files (same model and grid)")
    args = p.parse_args(argv)
    try:
        model = average_weights(args.weights)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    save_weights(args.out, model.net, model.grid, {"averaged_from": [str(w.name) for w in args.weights]})
    log.info("wrote the mean of %d weights files to %s", len(args.weights), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
