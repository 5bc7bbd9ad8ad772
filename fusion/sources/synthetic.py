"""Owns the on-the-fly synthetic source: a procedural labeled room rendered along its camera path.

Frames are deterministic per (seed, frame index): the same seed gives the same sequence every run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


from fusion.frame import Frame
from fusion.sources.base import PosedSequenceSource
from synth.render import RenderConfig, Renderer
from synth.trajectory import TrajectoryConfig, plan_trajectory
from synth.world import World, WorldConfig, build_world


@dataclass(frozen=True)
class SyntheticConfig:
    """How the synthetic sequence is built and rendered."""

    world: WorldConfig = field(default_factory=WorldConfig)  # room generation
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)  # camera path (fps inside)
    render: RenderConfig = field(default_factory=RenderConfig)  # image size, noise, backend


class SyntheticSource(PosedSequenceSource):
    """Renders `n_frames` frames of room `seed` (first `max_frames` of them when given).

    Used by one thread at a time (it owns a Renderer with per-frame buffers). The world and the camera
    path are built in the constructor (well under a second); frames are rendered while iterating.
    """

    kind = "synthetic"

    def __init__(self, seed: int, n_frames: int = 300, max_frames: int | None = None,
                 config: SyntheticConfig | None = None):
        if seed < 0 or n_frames < 1:
            raise ValueError("seed must be >= 0 and n_frames >= 1")
        self.seed, self.cfg = int(seed), config or SyntheticConfig()
        self.n_frames = int(n_frames) if max_frames is None else max(0, min(int(n_frames), int(max_frames)))
        self._world = build_world(self.seed, self.cfg.world)
        self.poses = plan_trajectory(self._world, int(n_frames), self.cfg.trajectory)[: self.n_frames]
        self.intrinsics = self.cfg.render.intrinsics
        self._renderer: Optional[Renderer] = None

    @property
    def world(self) -> World:
        return self._world

    @property
    def fps(self) -> float:
        return self.cfg.trajectory.fps

    def describe(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "room_type": self._world.room_type,
                "frames": self.n_frames, "fps": self.fps}

    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer(self._world, self.cfg.render)
        return self._renderer

    def frame(self, index: int) -> Frame:
        """Render frame `index` (0 <= index < len(self))."""
        res = self.renderer().render(self.poses[index], self.seed, index)
        return Frame(res.color, res.depth_m, self.intrinsics, index / self.fps, index, self.poses[index].copy())


    def close(self) -> None:
        self._renderer = None
