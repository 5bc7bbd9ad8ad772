"""Owns the fusion loop for one frame: track (or take ground truth), integrate, re-mesh, mark dirty chunks."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from fusion.dirty import DirtyChunks, chunk_keys_of_blocks
from fusion.errors import SourceError, UserError
from fusion.frame import Frame
from fusion.meshing import ChunkMesher, MeshConfig
from fusion.tracking import Tracker, TrackerConfig, TrackState
from fusion.volume import TsdfVolume, VolumeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    poses: str = "track"            #: "track" (frame-to-model) or "gt" (the source's poses)
    nets_chunk_m: float = 1.6       #: edge of a nets chunk (the semantics/completion dirty grid)
    incremental_mesh: bool = True   #: re-mesh touched blocks after every frame
    min_valid_depth_share: float = 0.01  #: frames with a smaller share of valid depth pixels are skipped


@dataclass(frozen=True)
class FrameResult:
    """What fusion did with one frame (immutable; handed to other threads)."""

    index: int
    timestamp_s: float
    T_world_cam: np.ndarray | None   #: pose used for integration, None when the frame was rejected
    state: str                       #: tracking state after the frame
    integrated: bool
    reason: str
    timings_ms: dict
    n_blocks: int


class FusionPipeline:
    """Tracks and fuses frames into a TsdfVolume with an incremental mesh. Thread: the fusion thread."""

    def __init__(self, config: PipelineConfig = PipelineConfig()):
        if config.poses not in ("track", "gt"):
            raise UserError(f"--poses must be track or gt, got {config.poses!r}")
        self.config = config
        self.volume = TsdfVolume(config.volume)
        self.tracker = Tracker(self.volume, config.tracker)
        self.mesher = ChunkMesher(self.volume, config.mesh)
        self.dirty = DirtyChunks()
        self.last_timestamp_s: float | None = None
        self.frames_with_depth = 0

    def process(self, frame: Frame, T_start: np.ndarray | None = None) -> FrameResult:
        """Fuse one frame. T_start: pose of the first fused frame when tracking (identity if None)."""
        if self.last_timestamp_s is not None and frame.timestamp_s <= self.last_timestamp_s:
            raise SourceError(f"frame {frame.index}: timestamp {frame.timestamp_s:.6f} s is not after "
                              f"the previous one ({self.last_timestamp_s:.6f} s)")
        self.last_timestamp_s = frame.timestamp_s
        timings: dict[str, float] = {}
        if np.count_nonzero(frame.depth_m) < self.config.min_valid_depth_share * frame.depth_m.size:
            log.warning("frame %d has no usable depth; skipped", frame.index)
            return self._result(frame, None, False, "no valid depth", timings)
        self.frames_with_depth += 1
        T, reason = self._pose(frame, T_start, timings)
        if T is None:
            return self._result(frame, None, False, reason, timings)
        t0 = time.perf_counter()
        touched = self.volume.integrate(frame, T)
        timings["integrate"] = (time.perf_counter() - t0) * 1e3
        self._after_integrate(touched, timings)
        return self._result(frame, T, True, "", timings)

    def _pose(self, frame: Frame, T_start, timings) -> tuple[np.ndarray | None, str]:
        if self.config.poses == "gt":
            if frame.T_world_cam_gt is None:
                raise SourceError(f"frame {frame.index} has no ground-truth pose (use --poses track)")
            return np.asarray(frame.T_world_cam_gt, float), ""
        if not self.tracker.started:
            self.tracker.reset(np.eye(4) if T_start is None else T_start)
            return self.tracker.predict(), ""
        t0 = time.perf_counter()
        res = self.tracker.track(frame)
        timings["track"] = (time.perf_counter() - t0) * 1e3
        timings.update(self.tracker.last_timings_ms)
        return res.T_world_cam, res.reason

    def _after_integrate(self, touched: np.ndarray, timings: dict) -> None:
        cfg = self.config
        self.dirty.mark(chunk_keys_of_blocks(touched, cfg.volume.block_size_m, cfg.nets_chunk_m),
                        ("semantics", "completion"))
        if cfg.incremental_mesh:
            t0 = time.perf_counter()
            self.dirty.mark(self.mesher.update(touched), ("mesh",))
            timings["mesh"] = (time.perf_counter() - t0) * 1e3

    def _result(self, frame, T, integrated, reason, timings) -> FrameResult:
        state = TrackState.OK.value if self.config.poses == "gt" else self.tracker.state.value
        return FrameResult(frame.index, frame.timestamp_s, T, state, integrated, reason,
                           timings, self.volume.n_blocks)

    def final_mesh(self):
        """The whole observed surface (meshes any blocks not yet meshed first)."""
        if not self.config.incremental_mesh:
            self.mesher.update(self.volume.active_keys())
        self.dirty.mark(self.mesher.flush(), ("mesh",))
        return self.mesher.full_mesh()

    def close(self) -> None:
        self.mesher.close()
