"""Owns the small helpers the fusion worker uses to describe a frame for display: colour and depth
thumbnails (depth colour-mapped) and the process's resident memory. Pure numpy; any thread."""
from __future__ import annotations

import math
import os

import numpy as np

#: depth colour map control points (near -> far): dark blue, cyan, green, yellow, red
_STOPS = np.array([[20, 20, 120], [0, 180, 230], [60, 200, 80], [240, 220, 40], [220, 40, 30]], np.float32)


def downsample(image: np.ndarray, max_width_px: int) -> np.ndarray:
    """Every k-th pixel so the result is at most max_width_px wide (a contiguous copy)."""
    step = max(1, math.ceil(image.shape[1] / max(max_width_px, 1)))
    return np.ascontiguousarray(image[::step, ::step])


def depth_colormap(depth_m: np.ndarray, max_depth_m: float) -> np.ndarray:
    """(h,w) metres -> (h,w,3) uint8; invalid (0) depth is black."""
    t = np.clip(depth_m / max(max_depth_m, 1e-6), 0, 1) * (len(_STOPS) - 1)
    i = np.minimum(t.astype(np.int32), len(_STOPS) - 2)
    f = (t - i)[..., None]
    rgb = _STOPS[i] * (1 - f) + _STOPS[i + 1] * f
    rgb[depth_m <= 0] = 0
    return rgb.astype(np.uint8)


def process_memory_mb() -> float:
    """Resident memory of this process in MiB (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0
