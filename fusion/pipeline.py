"""Owns the fusion loop for one frame: track (or take ground truth), integrate, re-mesh, mark dirty chunks.

It also serves snapshot requests (`fusion.snapshots`): another thread (the nets) asks for coarse
regions of chunks (`request_regions`, thread-safe) and either serves them itself at once (`serve=True`)
or leaves them to the fusion thread, which works on them at the end of `process()` (within a per-frame
time budget) or in `serve_requests()` (when idle or paused); snapshots go to an outbox the other thread
reads (`take_snapshots`). Every integration leaves an `IntegrationStamp` (frame, time, pose) for the
requester to measure latency and follow the camera.

Locks: the volume lock is held while the volume changes (an integration with its stamp and marks, a
gravity rebuild, a loop correction's swap) and while a snapshot is served, never while tracking or
meshing (those only read, as serving does); the other locks only swap lists.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from fusion.coarse import CoarseGridConfig
from fusion.dirty import DirtyChunks, chunk_keys_of_blocks
from fusion.errors import SourceError, UserError
from fusion.frame import Frame
from fusion.gravity_settle import GravitySettler, SettleConfig, SettleStep, restate_stamp
from fusion.meshing import ChunkMesher, MeshConfig
from fusion.snapshots import RegionSnapshot, SnapshotRequest, SnapshotServer  # noqa: F401 (SnapshotRequest re-exported)
from fusion.tracking import Tracker, TrackerConfig, TrackState, relative_motion
from fusion.volume import TsdfVolume, VolumeConfig
from loopclosure.closer import LoopCloser, MapCorrection
from loopclosure.config import LoopClosureConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    poses: str = "track"            #: "track" (frame-to-model) or "gt" (the source's poses)
    gravity: SettleConfig = field(default_factory=SettleConfig)  #: aligning a world without ground truth
    nets_chunk_m: float = 1.6       #: edge of a nets chunk (the semantics/completion dirty grid)
    incremental_mesh: bool = True   #: re-mesh touched blocks after every frame
    min_valid_depth_share: float = 0.01  #: frames with a smaller share of pixels with depth in range are skipped
    snapshot_regions_per_frame: int = 1  #: region snapshots completed at the end of one process() at most
    snapshot_budget_ms: float = 8.0      #: fusion-thread time per process() for snapshot work at least (a big
    #:     region is finished over several frames)...
    snapshot_budget_share: float = 0.2   #: ... or this share of the frame's own fusion time, when more
    snapshot_halo_lag_frames: int = 10   #: live snapshots reuse halo chunks summarised this many frames back
    stamp_history: int = 1024            #: integration stamps kept for readers on other threads
    still_voxels: float = 0.0            #: a tracked frame closer than this many voxels to the last integrated
    #:     one (and within still_deg) adds nothing new: it is not integrated (0: integrate every frame)
    still_deg: float = 1.0               #: ... rotation for the above
    still_max_frames: int = 6            #: a standing camera is integrated at least every this many frames
    loop: LoopClosureConfig = field(default_factory=LoopClosureConfig)  #: loop closure (off by default)


@dataclass(frozen=True)
class FrameResult:
    """What fusion did with one frame (immutable; handed to other threads)."""

    index: int
    timestamp_s: float
    T_world_cam: np.ndarray | None   #: pose used for integration, None when the frame was rejected
    state: str                       #: tracking state after the frame
    integrated: bool
    reason: str                      #: why it was rejected, or "relocalised" when it found the track again
    timings_ms: dict
    n_blocks: int
    still: bool = False              #: tracked, and not integrated because the camera stood still
    map_correction: MapCorrection | None = None  #: a loop closed and the map was corrected at this frame


@dataclass(frozen=True)
class IntegrationStamp:
    """One integrated frame, for other threads (immutable)."""

    count: int                   #: frames integrated so far, this one included
    index: int                   #: the frame's index
    time_s: float                #: time.monotonic() when its integration (and dirty marks) were done
    T_world_cam: np.ndarray      #: the pose it was fused with


class FusionPipeline:
    """Tracks and fuses frames into a TsdfVolume with an incremental mesh. Thread: the fusion thread."""

    def __init__(self, config: PipelineConfig = PipelineConfig()):
        if config.poses not in ("track", "gt"):
            raise UserError(f"--poses must be track or gt, got {config.poses!r}")
        self.config = config
        self.volume = TsdfVolume(config.volume)
        self.tracker = Tracker(self.volume, config.tracker)
        self.mesher = ChunkMesher(self.volume, config.mesh)
        self.gravity = GravitySettler(config.gravity, self.volume, self.mesher, config.incremental_mesh)
        self.dirty = DirtyChunks()
        self.last_timestamp_s: float | None = None
        self.frames_with_depth = 0
        self._snap_cond = threading.Condition()  # guards the stamps (and their dirty marks)
        self._volume_lock = threading.RLock()    # the volume changes, or a snapshot reads it (module docstring)
        self._snapshots = SnapshotServer(self.volume, config.nets_chunk_m, config.snapshot_halo_lag_frames)
        self._stamps: deque[IntegrationStamp] = deque(maxlen=max(1, config.stamp_history))
        self._last_stamp: IntegrationStamp | None = None
        self._last_integrated_T: np.ndarray | None = None
        self._still_run = 0   # frames in a row not integrated because the camera stood still
        self.loops = LoopCloser(config.loop, config.volume, config.mesh) if config.loop.enabled else None
        self._gt_offset = np.eye(4)  # ground-truth poses (odometry given by the source) follow loop corrections

    def process(self, frame: Frame, T_start: np.ndarray | None = None) -> FrameResult:
        """Fuse one frame, then serve snapshot requests within the per-frame budget.

        T_start: pose of the first fused frame when tracking (identity if None)."""
        t0 = time.perf_counter()
        result = self._fuse(frame, T_start)
        if self._snapshots.pending():
            cfg = self.config
            t1 = time.perf_counter()
            budget_ms = max(cfg.snapshot_budget_ms, cfg.snapshot_budget_share * (t1 - t0) * 1e3)
            self.serve_requests(cfg.snapshot_regions_per_frame, budget_ms, live=True)
            result.timings_ms["snapshot"] = (time.perf_counter() - t1) * 1e3
        return result

    def _fuse(self, frame: Frame, T_start: np.ndarray | None) -> FrameResult:
        if self.last_timestamp_s is not None and frame.timestamp_s <= self.last_timestamp_s:
            raise SourceError(f"frame {frame.index}: timestamp {frame.timestamp_s:.6f} s is not after "
                              f"the previous one ({self.last_timestamp_s:.6f} s)")
        self.last_timestamp_s = frame.timestamp_s
        timings: dict[str, float] = {}
        vol = self.config.volume
        in_range = (frame.depth_m >= vol.depth_min_m) & (frame.depth_m <= vol.depth_max_m)
        if np.count_nonzero(in_range) < self.config.min_valid_depth_share * frame.depth_m.size:
            log.warning("frame %d has no usable depth within %.2f-%.2f m; skipped", frame.index,
                        vol.depth_min_m, vol.depth_max_m)
            return self._result(frame, None, False, "no valid depth", timings)
        self.frames_with_depth += 1
        if not self.tracker.started:
            T_start = self.gravity.start(frame, T_start, self.config.poses)
        T, reason = self._pose(frame, T_start, timings)
        if T is None:
            return self._result(frame, None, False, reason, timings)
        if not reason and self._still(T):
            self._still_run += 1
            return self._result(frame, T, False, "still", timings, still=True)
        self._still_run = 0
        t0 = time.perf_counter()
        with self._volume_lock:  # waits while another thread serves itself a snapshot
            t1 = time.perf_counter()
            touched = self.volume.integrate(frame, T)
            timings["integrate"] = (time.perf_counter() - t1) * 1e3
            self._mark_integrated(frame, T, touched)
        timings["volume_wait"] = (t1 - t0) * 1e3
        self._mesh(touched, timings)
        t0 = time.perf_counter()
        if self.gravity.holds_labels:  # settled: the gravity step has nothing to do, no wait for a snapshot being served
            with self._volume_lock:
                T = self._follow_gravity(self.gravity.after_integrate(frame, T), T)
        self._last_integrated_T = T
        timings["gravity"] = (time.perf_counter() - t0) * 1e3
        correction = None
        if self.loops is not None:
            t0 = time.perf_counter()
            self.loops.on_integrated(frame, T, settled=not self.gravity.holds_labels, map_blocks=self.volume.n_blocks)
            if self.loops.map_ready:  # most frames: nothing to swap in, no wait for a snapshot being served
                with self._volume_lock:
                    T, correction = self._follow_loop(self.loops.apply_ready(frame.index), T, frame.timestamp_s)
            timings["loops"] = (time.perf_counter() - t0) * 1e3
        return self._result(frame, T, True, reason, timings, correction=correction)

    def _still(self, T: np.ndarray) -> bool:
        """True when T is within still_voxels / still_deg of the last integrated pose (not too many times running)."""
        cfg, last = self.config, self._last_integrated_T
        if cfg.still_voxels <= 0 or last is None or self._still_run + 1 >= cfg.still_max_frames:
            return False
        m, deg = relative_motion(last, T)
        return m < cfg.still_voxels * cfg.volume.voxel_size_m and deg < cfg.still_deg

    def _pose(self, frame: Frame, T_start, timings) -> tuple[np.ndarray | None, str]:
        if self.config.poses == "gt":
            if frame.T_world_cam_gt is None:
                raise SourceError(f"frame {frame.index} has no ground-truth pose (use --poses track)")
            return self._gt_offset @ np.asarray(frame.T_world_cam_gt, float), ""
        if not self.tracker.started:
            self.tracker.reset(np.eye(4) if T_start is None else T_start, frame.timestamp_s)
            self.tracker.keyframe(frame, self.tracker.predict())
            return self.tracker.predict(), ""
        t0 = time.perf_counter()
        res = self.tracker.track(frame)
        timings["track"] = (time.perf_counter() - t0) * 1e3
        timings.update(self.tracker.last_timings_ms)
        return res.T_world_cam, res.reason

    def _mark_integrated(self, frame: Frame, T: np.ndarray, touched: np.ndarray) -> None:
        """The integration's stamp, its nets marks and the snapshot cache's touch (under the volume lock)."""
        cfg = self.config
        chunks = chunk_keys_of_blocks(touched, cfg.volume.block_size_m, cfg.nets_chunk_m)
        stamp = IntegrationStamp(self.volume.frames_integrated, frame.index, time.monotonic(), T.copy())
        self._snapshots.touch(touched)
        with self._snap_cond:  # stamp and marks together: `take_dirty` sees both or neither
            self._stamps.append(stamp)
            self._last_stamp = stamp
            if not self.gravity.holds_labels:  # labels wait until the world stops moving
                self.dirty.mark(chunks, ("semantics", "completion"))

    def _mesh(self, touched: np.ndarray, timings: dict) -> None:
        if self.config.incremental_mesh:
            t0 = time.perf_counter()
            self.dirty.mark(self.mesher.update(touched), ("mesh",))
            timings["mesh"] = (time.perf_counter() - t0) * 1e3

    def _follow_gravity(self, step: SettleStep, T: np.ndarray | None) -> np.ndarray | None:
        """After a rebuild the world moved by step.correction: tracking, stamps and the snapshot cache
        follow, re-meshed chunks are marked. Once gravity settles, the nets may label everything."""
        if step.correction is not None:
            T = step.correction @ T
            if self._last_integrated_T is not None:
                self._last_integrated_T = step.correction @ self._last_integrated_T
            self.tracker.reset(T)
            self.tracker.relocaliser.move_world(step.correction)
            if self.loops is not None:
                self.loops.move_world(step.correction)
            self._snapshots.reset_cache()
            self.dirty.mark(step.mesh_chunks, ("mesh",))
            self._restate_stamps(lambda _index: step.correction)
        if step.settled_now:
            self._mark_all_for_nets()
        return T

    def _restate_stamps(self, correction_of_index) -> None:
        """The integration stamps follow a change of world (`correction_of_index(frame index)`: new <- old)."""
        with self._snap_cond:
            self._stamps = deque((restate_stamp(s, correction_of_index(s.index)) for s in self._stamps),
                                 self._stamps.maxlen)
            self._last_stamp = self._stamps[-1] if self._stamps else None

    def _mark_all_for_nets(self) -> None:
        """Every chunk of the volume is to be labelled and completed again."""
        cfg = self.config
        chunks = chunk_keys_of_blocks(self.volume.active_keys(), cfg.volume.block_size_m, cfg.nets_chunk_m)
        with self._snap_cond:
            self.dirty.mark(chunks, ("semantics", "completion"))

    def _follow_loop(self, ready, T: np.ndarray, timestamp_s: float):
        """Swap in a corrected map (rebuilt by the loop closer); tracking, keyframes, stamps, snapshots and
        the ground-truth odometry follow; every chunk is marked for re-meshing and relabelling.
        Returns (this frame's pose in the new world, the correction or None)."""
        if ready is None:
            return T, None
        built, event = ready
        C_now = event.corrections[-1]
        self.loops.recycle(self.volume.adopt(built.volume))
        mesh_chunks = self.mesher.adopt(built.mesher)
        T = C_now @ T
        self._last_integrated_T = T
        self._gt_offset = C_now @ self._gt_offset
        if self.tracker.started:
            self.tracker.reset(T, timestamp_s)
        self.tracker.relocaliser.move_each(event.correction_of)
        self._snapshots.reset_cache()
        self.dirty.mark(mesh_chunks, ("mesh",))
        self._restate_stamps(event.correction_of)
        if not self.gravity.holds_labels:
            self._mark_all_for_nets()
        return T, event

    def finish_loops(self, timeout_s: float = 120.0) -> bool:
        """End of a scan: wait for the loop closer to handle every keyframe, applying a correction that
        comes meanwhile (the last frame's pose is the latest integrated one). True when it finished."""
        if self.loops is None:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.loops.wait_idle(0.05):
                return True
            last = self._last_stamp
            if last is not None and self._last_integrated_T is not None:
                with self._volume_lock:
                    _, event = self._follow_loop(self.loops.apply_ready(last.index + 1), self._last_integrated_T,
                                                 self.last_timestamp_s or 0.0)
                if event is not None:  # no frame comes to mesh the blocks of keyframes added in the swap
                    self.dirty.mark(self.mesher.flush(), ("mesh",))
        return False

    def settle_gravity(self) -> None:
        """Settle gravity now (end of a scan): a last estimate from what was fused, then the nets may label."""
        last = self._last_stamp
        if last is not None:
            with self._volume_lock:
                self._follow_gravity(self.gravity.settle_now(last.index), last.T_world_cam)

    def _result(self, frame, T, integrated, reason, timings, still: bool = False, correction=None) -> FrameResult:
        state = TrackState.OK.value if self.config.poses == "gt" else self.tracker.state.value
        return FrameResult(frame.index, frame.timestamp_s, T, state, integrated, reason,
                           timings, self.volume.n_blocks, still, correction)

    # --- snapshot requests (other threads ask, the fusion thread serves) ------------------------
    def take_dirty(self, consumers, since_count: int) -> tuple[set, list[IntegrationStamp]]:
        """Take and clear the consumers' dirty sets together with the stamps of the frames integrated
        after the first `since_count` (oldest first): the marks came from exactly those frames (or
        from a session load, without stamps). Any thread."""
        with self._snap_cond:
            keys = set().union(*(self.dirty.take(c) for c in consumers))
            if not self._stamps or self._stamps[-1].count <= since_count:
                return keys, []
            return keys, [s for s in self._stamps if s.count > since_count]

    def latest_stamp(self) -> IntegrationStamp | None:
        """The newest integration stamp (None before the first). Any thread."""
        with self._snap_cond:
            return self._last_stamp

    def request_regions(self, groups, grid: CoarseGridConfig, tag: int = 0, serve: bool = False) -> None:
        """Ask for one coarse region per group of chunk keys. Any thread. serve False: the fusion thread
        serves them (never waits for fusion); True: served now, in the calling thread, as live snapshots
        (halo chunks reused as in `serve_requests(live=True)`), never queued for the fusion thread; waits
        for the volume lock (an integration at most)."""
        if not serve:
            self._snapshots.request(groups, grid, tag)
            return
        with self._volume_lock:
            last = self._last_stamp
            self._snapshots.serve_now(groups, grid, tag, -1 if last is None else last.index)

    def cancel_requests(self, tag: int | None = None) -> int:
        """Drop pending requests and unread snapshots (all, or those of `tag`); returns how many. Any thread."""
        return self._snapshots.cancel(tag)

    def pending_requests(self) -> int:
        return self._snapshots.pending()

    def serve_requests(self, max_regions: int | None = None, budget_ms: float | None = None, live: bool = False) -> int:
        """Work on pending requests: complete at most `max_regions`, stop once `budget_ms` is spent
        (None: finish them all, each one consistent state unless live). live: reuse halo chunks up to
        `snapshot_halo_lag_frames` old. Any thread (it reads the voxel buffers in place under the volume
        lock). Returns the regions completed."""
        with self._volume_lock:
            last = self._last_stamp
            return self._snapshots.serve(max_regions, budget_ms, -1 if last is None else last.index, live)

    def take_snapshots(self, timeout_s: float = 0.0) -> list[RegionSnapshot]:
        """Completed snapshots (oldest first), waiting up to `timeout_s` for one. Any thread."""
        return self._snapshots.take(timeout_s)

    def final_mesh(self):
        """The whole observed surface (meshes any blocks not yet meshed first)."""
        if not self.config.incremental_mesh:
            self.mesher.update(self.volume.active_keys())
        self.dirty.mark(self.mesher.flush(), ("mesh",))
        return self.mesher.full_mesh()

    def close(self) -> None:
        if self.loops is not None:
            self.loops.close()
        self.mesher.close()
