"""Owns inference: loading the shipped weights (with checks) and predicting labels and completion for
coarse regions of the volume.

A weights file is a torch pickle of plain data: format version, the model and grid configuration, the
class list (NYU40 id and name per output) and the state dict. Loading checks each and names what is
wrong in one line. `ChunkModel.predict` runs the net on a `fusion.coarse.CoarseRegion` (chunks plus
their halo) and keeps the sites inside the chunks' cores; with the halo at least the receptive field,
the result there equals a whole-scene pass.
"""
from __future__ import annotations

import copy
import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from storage.atomic import atomic_path
from fusion.classes import CLASSES
from fusion.coarse import CoarseGridConfig, CoarseRegion, chunk_keys_of_cells
from fusion.errors import UserError
from nets.cells import pack_cells
from nets.data import CLASS_IDS
from nets.model import EMPTY, ModelConfig, SemanticCompletionNet, receptive_field_cells
from nets.resources import DEFAULT_WEIGHTS
from nets.sparse import SparseTensor
from nets.turns import MAX_TURNS, turned_mean

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = 1


@dataclass(frozen=True)
class RegionPrediction:
    """Predictions for the sites inside the cores of `keys` (immutable; any thread may read it)."""

    keys: tuple
    coords: np.ndarray      # (M,3) int32 cells
    probs: np.ndarray       # (M,C) float32 class probabilities in CLASS_IDS order ("empty" removed)
    empty_prob: np.ndarray  # (M,) float32 probability that the cell holds no surface
    sdf_vox: np.ndarray     # (M,) float32 signed distance to the surface, in cells
    observed: np.ndarray    # (M,) bool: an input site (False: created by completion)

    def __len__(self) -> int:
        return len(self.coords)


def class_table() -> list:
    return [[int(i), CLASSES[int(i)][0]] for i in CLASS_IDS]


def save_weights(path: Path, net: SemanticCompletionNet, grid: CoarseGridConfig, meta: dict | None = None) -> None:
    """Write a weights file in the shipped format (atomically)."""
    state = {"format": WEIGHTS_FORMAT, "model_config": asdict(net.config), "grid": asdict(grid),
             "classes": class_table(), "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
             "meta": meta or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _read_weights(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no model weights there (train with `python -m nets.train`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged pickle
        raise UserError(f"{path}: not a readable weights file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path}: weights format {state.get('format') if isinstance(state, dict) else '?'} "
                        f"is not {WEIGHTS_FORMAT}")
    if state.get("classes") == class_table()[:-1]:
        state = _with_ceiling_output(state)
    if state.get("classes") != class_table():
        raise UserError(f"{path}: the weights were trained for other classes than ScanNet-20 and the ceiling "
                        "in this order")
    return state


def _with_ceiling_output(state: dict) -> dict:
    """Weights from before the ceiling class (ScanNet-20 + empty) with a ceiling output that is never the
    most likely: they label exactly as they did."""
    sd = dict(state.get("state_dict", {}))
    if "sem.weight" not in sd or "sem.bias" not in sd:
        return state
    at = len(CLASS_IDS) - 1  # the ceiling's output, before "empty"
    w, b = sd["sem.weight"], sd["sem.bias"]
    sd["sem.weight"] = torch.cat([w[:at], torch.zeros_like(w[:1]), w[at:]])
    sd["sem.bias"] = torch.cat([b[:at], torch.full_like(b[:1], -30.0), b[at:]])
    config = dict(state.get("model_config", {}), n_classes=int(sd["sem.bias"].shape[0]))
    return {**state, "classes": class_table(), "model_config": config, "state_dict": sd}


class ChunkModel:
    """The net in eval mode plus its grid. One thread at a time (the nets thread)."""

    def __init__(self, net: SemanticCompletionNet, grid: CoarseGridConfig, device: str = "cpu",
                 weights_path: str | None = None):
        halo = receptive_field_cells(net.config)
        if grid.halo_voxels < halo:
            grid = CoarseGridConfig(**{**asdict(grid), "halo_voxels": halo})
        self.net, self.grid = net.to(device).eval(), grid
        self.device = torch.device(device)
        self.weights_path = weights_path  #: the file the net was loaded from (None: built in memory)
        self.turns = 1                    #: predictions averaged over this many quarter turns (`with_turns`)

    @classmethod
    def load(cls, path: Path | str | None = None, device: str = "cpu") -> "ChunkModel":
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        state = _read_weights(path)
        try:
            config = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in state["model_config"].items()})
            net = SemanticCompletionNet(config)
            net.load_state_dict(state["state_dict"])
            grid = CoarseGridConfig(**state["grid"])
        except (TypeError, KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: weights do not fit the model ({first})") from None
        return cls(net, grid, device, str(path))

    @classmethod
    def untrained(cls, seed: int = 0, device: str = "cpu") -> "ChunkModel":
        """Same architecture with random weights (for tests of the plumbing)."""
        torch.manual_seed(seed)
        return cls(SemanticCompletionNet(), CoarseGridConfig(), device)

    def with_turns(self, turns: int) -> "ChunkModel":
        """The same net (shared, not copied) predicting the mean over `turns` quarter turns about gravity
        (`nets.turns`; 1: one pass as it is)."""
        if not 1 <= turns <= MAX_TURNS:
            raise ValueError(f"turns must be 1..{MAX_TURNS}")
        twin = copy.copy(self)
        twin.turns = turns
        return twin

    def predict(self, region: CoarseRegion) -> RegionPrediction:
        """Labels and completion for the cores of the region's chunks (averaged over `turns` quarter turns)."""
        if len(region) == 0:
            return _empty_prediction(region.keys)
        coords, p, sdf, observed = forward_pass(self.net, region.coords, region.features, self.device)
        wanted = np.isin(pack_cells(chunk_keys_of_cells(coords, self.grid)), pack_cells(region.keys))
        coords, p, sdf, observed = coords[wanted], p[wanted], sdf[wanted], observed[wanted]
        if self.turns > 1:
            p, sdf = turned_mean(functools.partial(forward_pass, self.net, device=self.device), region.coords,
                                 region.features, self.turns, coords, [p, sdf])
        cls_p = p[:, :EMPTY]
        cls_p = cls_p / np.maximum(cls_p.sum(1, keepdims=True), 1e-12)
        return RegionPrediction(region.keys, coords.astype(np.int32), cls_p.astype(np.float32),
                                p[:, EMPTY].astype(np.float32), sdf, observed)


def forward_pass(net, cells: np.ndarray, features: np.ndarray, device=torch.device("cpu")):
    """(out sites (M,3), softmax (M,C+1), signed distance in cells (M,), observed (M,)) of one pass of `net`
    (in eval mode) over the sites `cells` (N,3)."""
    x = SparseTensor.from_coords(torch.from_numpy(np.ascontiguousarray(cells, np.int32)),
                                 torch.from_numpy(features).to(device))
    with torch.no_grad():
        out = net(x)
    return (out.sites.coordinates[:, 1:].cpu().numpy(), torch.softmax(out.logits, 1).cpu().numpy(),
            out.sdf_cells.cpu().numpy(), out.observed.cpu().numpy())


def _empty_prediction(keys: tuple) -> RegionPrediction:
    return RegionPrediction(keys, np.zeros((0, 3), np.int32), np.zeros((0, EMPTY), np.float32),
                            np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, bool))
