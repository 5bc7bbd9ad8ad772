"""Owns writing a synthetic sequence to disk in the project's synthetic folder layout.

Layout: synth.json (marker and metadata), color/NNNNNN.png (RGB8), depth/NNNNNN.png (uint16 mm, 0 =
invalid), groundtruth.txt (TUM, timestamps i / fps), gt_mesh.ply (the complete labeled scene).
Called from one thread (the CLI or a test).
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from storage.atomic import write_text_atomic
from storage.plyio import write_labeled_ply
from fusion.trajectory import write_tum
from synth.world import World

log = logging.getLogger(__name__)
FORMAT = "rgbd-synth"
VERSION = 1
DEPTH_SCALE = 1000  # depth PNG units per metre
PNG_COMPRESS_LEVEL = 1  # fast, still lossless


def frame_name(index: int) -> str:
    return f"{index:06d}.png"


def depth_to_png_array(depth_m: np.ndarray) -> np.ndarray:
    """uint16 millimetres (0 stays invalid)."""
    return np.clip(np.round(depth_m * DEPTH_SCALE), 0, 65535).astype(np.uint16)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, compress_level=PNG_COMPRESS_LEVEL)


def write_gt_mesh(world: World, path: Path | str) -> None:
    """The complete scene as a labeled PLY (vertices are never shared across labels in a World)."""
    write_labeled_ply(path, world.vertices, world.vertex_colors, world.vertex_labels, world.triangles)


def write_frames(src, out_dir: Path | str, meta: dict,
                 progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Write every frame of a posed source in this layout: colour and depth PNGs, groundtruth.txt (the
    source's `poses`) and synth.json (`meta` adds to the fields the reader needs). Reads `src.fps` and
    `src.intrinsics`; the source's own frames carry their timestamps. Returns the folder."""
    out = Path(out_dir)
    (out / "color").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    n_frames = len(src)
    stamps = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="synth-png") as pool:
        pending = []
        for frame in src:
            name = frame_name(frame.index)
            pending.append(pool.submit(_save_png, frame.color, out / "color" / name))
            pending.append(pool.submit(_save_png, depth_to_png_array(frame.depth_m), out / "depth" / name))
            stamps.append(frame.timestamp_s)
            while len(pending) > 8:
                pending.pop(0).result()
            if progress is not None:
                progress(frame.index, n_frames)
        for f in pending:
            f.result()
    write_tum(out / "groundtruth.txt", stamps, src.poses[:n_frames])
    K = src.intrinsics
    meta = {"format": FORMAT, "version": VERSION, **meta, "frames": int(n_frames), "fps": src.fps,
            "intrinsics": {"fx": K.fx, "fy": K.fy, "cx": K.cx, "cy": K.cy, "width": K.width, "height": K.height},
            "depth_scale": DEPTH_SCALE}
    write_text_atomic(out / "synth.json", json.dumps(meta, indent=2) + "\n")
    return out


def write_sequence(seed: int, out_dir: Path | str, n_frames: int,
                   progress: Optional[Callable[[int, int], None]] = None, config=None) -> Path:
    """Render `n_frames` of room `seed` into `out_dir` (created); returns the folder."""
    from fusion.sources.synthetic import SyntheticSource

    out = Path(out_dir)
    src = SyntheticSource(seed, n_frames, config=config)
    write_frames(src, out, {"seed": int(seed), "room_type": src.world.room_type}, progress)
    write_gt_mesh(src.world, out / "gt_mesh.ply")
    log.info("wrote %d frames of synthetic %s %d to %s", n_frames, src.world.room_type, seed, out)
    return out
