"""Owns adapted weights inside a session: the weights file (shipped format, `nets.infer.save_weights`)
stored as one uint8 array among the session's extras, and back.

The array holds the exact bytes of a weights file, so exporting it writes a file that
`reconstruct --weights` loads; loading it runs the same checks as any weights file. Pure functions:
any thread.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from fusion.errors import UserError
from nets.adapt_config import ADAPTED_WEIGHTS as EXTRA_NAME  # saved as extra/adapted_weights.npy
from nets.infer import ChunkModel, save_weights


def weights_array(model: ChunkModel, meta: dict | None = None) -> np.ndarray:
    """(B,) uint8: the bytes of `model`'s weights file."""
    with tempfile.TemporaryDirectory(prefix="weights_") as tmp:
        path = Path(tmp) / "weights.pt"
        save_weights(path, model.net, model.grid, meta)
        return np.frombuffer(path.read_bytes(), np.uint8).copy()


def model_from_array(blob: np.ndarray, device: str = "cpu") -> ChunkModel:
    """The model of a weights array; UserError (one line) when it is not a usable weights file."""
    with tempfile.TemporaryDirectory(prefix="weights_") as tmp:
        path = Path(tmp) / "adapted_weights.pt"
        path.write_bytes(np.asarray(blob, np.uint8).tobytes())
        try:
            model = ChunkModel.load(path, device)
        except UserError as exc:
            raise UserError(f"the session's adapted weights: {str(exc).split(': ', 1)[-1]}") from None
    model.weights_path = None
    return model


def write_weights_file(path: Path | str, blob: np.ndarray) -> Path:
    """Write a weights array as a weights file (atomically)."""
    from storage.atomic import atomic_path

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(np.asarray(blob, np.uint8).tobytes())
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def adapted_model(extras: dict, device: str = "cpu") -> ChunkModel | None:
    """The session's adapted model, None when it has none (older sessions, or nothing learned)."""
    blob = extras.get(EXTRA_NAME)
    return None if blob is None or not len(blob) else model_from_array(blob, device)
