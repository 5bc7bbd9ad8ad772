"""Owns preparing the compiled kernels ahead of the first scan. Numba compiles each kernel the first time
it runs and caches it on disk: on a fresh install the first scan waited about a minute before its first
frame with nothing to show for it. `warm_kernels` runs a tiny tracked scan of the demo room, rendered
small, through the same pipeline a scan uses: it compiles (or loads from the cache) the kernels of the
synthetic renderer, tracking, integration, meshing and the nets' coarse grid. Any thread: it builds its
own source and pipeline and shares nothing."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from fusion.coarse import CoarseGridConfig, all_chunk_keys, coarse_region
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.sources.synthetic import SyntheticConfig, SyntheticSource
from fusion.volume import VolumeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmupConfig:
    scale: float = 0.5          #: of the demo camera's resolution (the kernels compile the same at any size)
    frames: int = 3             #: the second frame on runs the tracker
    voxel_size_m: float = 0.04


def warm_kernels(config: WarmupConfig = WarmupConfig()) -> float:
    """Run the tiny scan; returns the seconds it took (most of a minute on a fresh install, a second or
    two once the kernels are cached)."""
    t0 = time.perf_counter()
    synth = SyntheticConfig()
    render = dataclasses.replace(synth.render, intrinsics=synth.render.intrinsics.scaled(config.scale))
    source = SyntheticSource(0, n_frames=config.frames, config=dataclasses.replace(synth, render=render))
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=config.voxel_size_m, device="cpu")))
    try:
        for frame in source:
            pipe.process(frame)
        pipe.mesher.flush()
        grid = CoarseGridConfig()
        coarse_region(pipe.volume, sorted(all_chunk_keys(pipe.volume, grid)), grid)
    finally:
        pipe.close()
        source.close()
    seconds = time.perf_counter() - t0
    log.info("compiled kernels ready in %.1f s", seconds)
    return seconds
