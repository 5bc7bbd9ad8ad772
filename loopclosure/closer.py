"""Owns loop closure while scanning: the keyframe store, the background worker, and corrections of the map.

The fusion thread offers every integrated frame (`on_integrated`); one far enough from the last keyframe
becomes a `MapKeyframe` (reduced RGB-D, its pose, the odometry from the previous keyframe). The worker
thread describes each keyframe (`loopclosure.detect`), and once the world is settled (gravity) looks for a
loop among old keyframes and verifies it (the drift it implies must be plausible for the path since the two
keyframes' nearest ends of corrected loops: `unpinned_walk_m`); once a correction has landed, a keyframe
without a verified loop is aligned to the corrected map of old keyframes instead (`loopclosure.map_align`: an
edge like a loop's).
An accepted loop whose drift is worth correcting is added to the pose graph (`loopclosure.pose_graph`; odometry
edges weighted by the distance walked), optimised (with the loops of keyframes still queued: one correction
for them all), and when the result is plausible the map is rebuilt from the keyframes at the optimised
poses (`loopclosure.rebuild`; keyframes taken meanwhile are added), all on the worker, into a spare volume
allocated before the scan (the map a correction replaces is the next spare: `recycle`). The fusion thread
never waits: at its next integrated frame `apply_ready` hands it the rebuilt map and a `MapCorrection`
(per-keyframe pose changes, `loopclosure.correction`: labels, corrections and the GUI's camera path
follow it) to swap in. A discarded optimisation logs one warning; the map stays. `offer` hands over a
correction without a loop (tests, tools). Memory: at most `max_keyframes` keyframes (older ones thinned,
loop ends kept) of reduced RGB-D, and the spare volume (the live map's size); sessions save and restore the
keyframes (`to_arrays`, `load_arrays`).
The worker calls no Open3D function that holds the GIL for long (allocating a grid, legacy normals and voxel
thinning): every thread of the app would wait for it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import numpy as np

from fusion.frame import Frame
from fusion.meshing import MeshConfig
from fusion.tracking import relative_motion
from fusion.volume import TsdfVolume, VolumeConfig
from loopclosure.arrays import edges_from_arrays
from loopclosure.config import LoopClosureConfig, LoopStats, graph_edges
from loopclosure.correction import MapCorrection  # noqa: F401 (re-exported: the pipeline's FrameResult carries it)
from loopclosure.detect import LoopDetector, LoopEdge, MapKeyframe
from loopclosure.keyframes import KeyframeStore, reduced_keyframe, unpinned_walk_m
from loopclosure.map_align import AlignQueue, MapAligner
from loopclosure.pacing import WorkerPacer, lower_worker_priority
from loopclosure.pose_graph import optimise_dropping
from loopclosure.rebuild import RebuiltMap, SpareVolume, rebuild

log = logging.getLogger(__name__)


class LoopCloser:
    """Loop closure. Thread: the fusion thread calls every public method; `start` runs the worker."""

    def __init__(self, config: LoopClosureConfig, volume: VolumeConfig, mesh: MeshConfig):
        self.config, self._volume_cfg, self._mesh_cfg = config, volume, mesh
        self.stats = LoopStats()
        self.events: list[MapCorrection] = []
        self.loops: list[LoopEdge] = []               #: loop edges of the graph
        self.accepted: list[LoopEdge] = []            #: every loop that passed verification (for benchmarks)
        self.verdicts: deque = deque(maxlen=200)       #: (frame, old frame, "" accepted or why rejected), newest last
        self._store = KeyframeStore()
        self._lock = threading.Lock()
        self._inbox: queue.Queue = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._idle_lock = threading.Lock()              # idle is set only with an empty inbox
        self._stop = threading.Event()
        self._ready: tuple | None = None             # (RebuiltMap, new poses by kid, C_last, graph info)
        self._applied = threading.Event()
        self._correcting = threading.Event()
        self._world_moved = 0                        # gravity changes: a result from before is stale
        self._next_kid = 0
        self._thread: threading.Thread | None = None
        self.held = threading.Event()                 #: set: the worker waits at its next pace point (benchmarks)
        self._pace = WorkerPacer(config.worker_duty, self._stop, self.held)  # the worker's duty cycle (its thread only)
        self._detector = LoopDetector(config.detect)
        self._aligner = MapAligner(config.map_align, self._detector.cloud_of, config.detect.depth_max_m)
        self.map_edges: list[LoopEdge] = []           #: every keyframe aligned to the corrected map (for benchmarks)
        self._due: list[LoopEdge] = []               # accepted loops worth a correction, not yet optimised
        self._deferred = 0                           # keyframes searched since the first of them
        self._skipped: list[int] = []                # keyframes not yet searched for loops (the worker was behind)
        self._unaligned = AlignQueue(config.map_align.retry_keyframes)  # keyframes without a loop, to align to the map
        self._map_blocks = 0                         # the live volume's block count (from on_integrated)
        self.spare = SpareVolume(volume)             #: the volume the next rebuilt map goes into

    # --- fusion thread ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loop-closure", daemon=True)
            self._thread.start()

    def on_integrated(self, frame: Frame, T_world_cam: np.ndarray, settled: bool, map_blocks: int = 0) -> None:
        """Offer an integrated frame; a keyframe is stored and queued for the worker. map_blocks: the live
        volume's block count (a rebuilt map's hash map is sized for it: `loopclosure.rebuild.presized`)."""
        self._map_blocks = map_blocks
        st, cfg = self._store, self.config
        if st.poses:
            m, deg = relative_motion(st.poses[-1], T_world_cam)
            if m < cfg.keyframe_step_m and deg < cfg.keyframe_step_deg:
                return
        kf = self._reduce(frame)
        with self._lock:
            st.add(kf, T_world_cam)
            st.thin(cfg.max_keyframes, {e.old for e in self.loops} | {e.cur for e in self.loops})
        self.stats.keyframes = len(st.kfs)
        with self._idle_lock:
            self._idle.clear()
            full = self._inbox.qsize() < self.config.max_queued_frames
            self._inbox.put((kf.kid, frame if full else None, settled))
        self.start()

    def _reduce(self, frame: Frame) -> MapKeyframe:
        kid, self._next_kid = self._next_kid, self._next_kid + 1
        return reduced_keyframe(kid, frame)

    @property
    def map_ready(self) -> bool:
        """A corrected map waits for `apply_ready` (read by the fusion thread; the worker only sets it)."""
        return self._ready is not None

    def apply_ready(self, frame_index: int) -> tuple[RebuiltMap, MapCorrection] | None:
        """A corrected map waiting to be swapped in while frame `frame_index` is fused (its pose and the
        later ones are in the new world), with the correction; None when there is none. Keyframes added
        since it was built are integrated into it first (a few, at reduced size; the live mesher meshes them)."""
        if self._ready is None:
            return None
        built, new_by_kid, C_last, info = self._ready
        self._ready = None
        st = self._store
        with self._lock:
            before, centres = np.array(st.poses).reshape(-1, 4, 4), st.view_centres_m()
            corr = st.correct(new_by_kid, C_last)
            late = [i for i, kf in enumerate(st.kfs) if kf.kid > built.kids[-1]]
            built.add_many([st.kfs[i] for i in late], [st.poses[i] for i in late], mesh=False)  # meshed by the live mesher
        event = MapCorrection(int(frame_index), np.array([k.index for k in st.kfs]), np.array(corr),
                              keyframe_positions_m=before[:, :3, 3].copy(), keyframe_view_centres_m=centres,
                              applied_s=time.monotonic(), **info)
        self.events.append(event)
        self.stats.corrections += 1
        self._applied.set()
        log.info("loop closed: map corrected (%d keyframes, largest move %.3f m)", len(corr), event.max_shift_m)
        return built, event

    def move_world(self, C: np.ndarray) -> None:
        """The whole world changed by C (gravity): keyframe poses follow; a result in the making is stale."""
        with self._lock:
            self._store.poses = [C @ T for T in self._store.poses]
            self._world_moved += 1
        if self._ready is not None:
            self.spare.give(self._ready[0].volume)
        self._ready = None
        self._applied.set()

    def recycle(self, retired: TsdfVolume) -> None:
        """The live map a correction replaced (`TsdfVolume.adopt` returns it): the next rebuild reuses its memory."""
        self.spare.give(retired)

    def restate(self, frame_index: int, T_world_cam: np.ndarray) -> np.ndarray:
        """A pose returned for frame `frame_index`, moved by every correction applied after it."""
        for e in self.events:
            if frame_index < e.first_frame:
                T_world_cam = e.correction_of(frame_index) @ T_world_cam
        return T_world_cam

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the worker has handled every keyframe and any result is applied or discarded."""
        return self._idle.wait(timeout_s)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Keyframes (reduced RGB-D, poses, odometry, path) and loop edges as flat arrays (for sessions)."""
        with self._lock:
            return self._store.to_arrays(list(self.loops))

    def load_arrays(self, arrays: dict) -> None:
        """Take the keyframes and loop edges `to_arrays` wrote (a saved scan), before any frame is offered:
        a continued scan closes loops against them. Describes them now (in the calling thread)."""
        store = KeyframeStore.from_arrays(arrays)
        kfs = store.kfs
        with self._lock:
            self._store = store
        self.loops = edges_from_arrays(arrays)
        self._next_kid = max((k.kid for k in kfs), default=-1) + 1
        for kf in kfs:
            self._detector.describe(kf.kid, kf.frame())
        self.stats.keyframes = len(kfs)

    def last_frame_index(self) -> int:
        """Source frame index of the newest keyframe (-1: none). A continued scan's frames come after it."""
        with self._lock:
            return self._store.kfs[-1].index if self._store.kfs else -1

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(k.nbytes for k in self._store.kfs)

    def close(self) -> None:
        self._stop.set()
        self._applied.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # --- worker thread -------------------------------------------------------------------------
    def _run(self) -> None:
        lower_worker_priority(self.config.worker_threads, self.config.worker_nice)
        while not self._stop.is_set():
            try:
                kid, frame, settled = self._inbox.get(timeout=0.05)
            except queue.Empty:
                self._search_skipped()
                self._align_unaligned()
                self._correct_due(force=True)
                with self._idle_lock:
                    if (self._ready is None and self._inbox.empty() and not self._due and not self._skipped
                            and not self._unaligned.due(self.stats.corrections)):
                        self._idle.set()
                continue
            self._pace.restart()
            try:
                frame = frame if frame is not None else self._reduced_frame(kid)
                if frame is None:
                    continue
                self._detector.describe(kid, frame)
                if settled:
                    self._look_for_loop(kid)
                self._correct_due(force=False)
            except Exception:  # a failure here must not take fusion down: the scan goes on without this loop
                log.exception("loop closure failed on keyframe %d", kid)

    def _search_skipped(self) -> None:
        """Once the inbox is empty, look for the loops of keyframes that were only described while the worker
        was behind (newest first), until a keyframe comes in."""
        while self._skipped and self._inbox.empty() and not self._stop.is_set():
            kid = self._skipped.pop()
            self.stats.searched_late += 1
            self._pace.restart()
            try:
                self._look_for_loop(kid)
            except Exception:  # as for a queued keyframe: the scan goes on without this loop
                log.exception("loop closure failed on skipped keyframe %d", kid)

    def _pace_describing(self) -> bool:
        """The worker's pace while it rebuilds a map: first describe one queued keyframe (its search waits until
        the worker has caught up), so that keyframes taken meanwhile are described from their full frames; once
        more than `max_queued_frames` wait, later ones come reduced, and described from 320x240 images room 2's
        loops of frames 411-426 with frame 0 find too few ORB matches to be proposed at all."""
        try:
            kid, frame, settled = self._inbox.get_nowait()
        except queue.Empty:
            return self._pace()
        try:
            frame = frame if frame is not None else self._reduced_frame(kid)
            if frame is not None:
                self._detector.describe(kid, frame)
                if settled:
                    self._skipped.append(kid)
        except Exception:  # as for a queued keyframe: the scan goes on without this loop
            log.exception("loop closure failed to describe keyframe %d", kid)
        return self._pace()

    def _reduced_frame(self, kid: int) -> Frame | None:
        """The stored (reduced) images of keyframe `kid` as a frame; None when it was thinned out."""
        with self._lock:
            kf = next((k for k in self._store.kfs if k.kid == kid), None)
        return None if kf is None else kf.frame()

    def _snapshot(self):
        with self._lock:
            st = self._store
            return (list(st.kfs), np.array(st.poses), list(st.odom), np.array(st.path_m), self._world_moved)

    def _look_for_loop(self, kid: int) -> None:
        """Loops of keyframe `kid` with older ones (the keyframes after it are left out: they may be
        queued behind it while the worker catches up); an accepted one may correct the map."""
        kfs, poses, odom, path, moved = self._snapshot()
        kids = np.array([k.kid for k in kfs])
        alive = set(kids.tolist())
        for gone in [k for k in self._detector.features if k not in alive]:
            self._detector.forget(gone)
        if kid not in alive:
            return
        if self._inbox.qsize() > self.config.max_backlog:
            log.debug("loop closure is %d keyframes behind: keyframe %d is searched later", self._inbox.qsize(), kid)
            self._skipped.append(kid)
            return
        j = int(np.searchsorted(kids, kid)) + 1
        edge = self._verified_loop(kid, kfs[:j], kids[:j], poses[:j], path[:j])
        if edge is None:
            if self.config.map_align.enabled:
                self._unaligned.add(kid)
            return
        self._add_edge(edge)

    def _add_edge(self, edge: LoopEdge) -> None:
        """A verified loop or map edge joins the graph; its correction is due when its drift is worth one."""
        self.loops.append(edge)
        if edge.drift_m < self.config.min_correction_m and edge.drift_deg < self.config.min_correction_deg:
            return
        self._due.append(edge)

    def _correct_due(self, force: bool) -> None:
        """Optimise and rebuild for the loops accepted since the last correction: now when `force`d (the inbox
        ran dry) or when `max_deferred` keyframes were searched since; otherwise later."""
        if not self._due:
            return
        if not force and self._deferred < self.config.max_deferred and not self._inbox.empty():
            self._deferred += 1
            return
        due, self._due, self._deferred = self._due, [], 0
        kfs, poses, odom, _, moved = self._snapshot()
        self._correct(kfs, poses, odom, moved, due)

    def _verified_loop(self, kid, kfs, kids, poses, path) -> LoopEdge | None:
        pos = {int(k): i for i, k in enumerate(kids)}
        held = np.isin(kids, [k for e in self.loops if all(e is not d for d in self._due) for k in (e.old, e.cur)])
        for old in self._detector.candidates(kid, kids, poses, path):
            if self._pace():
                return None
            i, j = pos[old], pos[kid]
            self.stats.candidates += 1
            verdict = self._detector.verify(kfs[i], kfs[j], np.linalg.inv(poses[i]) @ poses[j],
                                            unpinned_walk_m(path, held, i, j))
            self.verdicts.append((kfs[j].index, kfs[i].index, verdict.reason))
            if verdict.edge is not None:
                self.stats.accepted += 1
                self.accepted.append(verdict.edge)
                log.info("loop found: keyframe of frame %d with frame %d (drift %.3f m / %.2f deg)",
                         kfs[j].index, kfs[i].index, verdict.edge.drift_m, verdict.edge.drift_deg)
                return verdict.edge
            self.stats.rejected += 1
            self.stats.last_reason = verdict.reason
            log.debug("loop candidate frame %d / %d rejected: %s", kfs[j].index, kfs[i].index, verdict.reason)
        return None

    def _align_unaligned(self) -> None:
        """Align keyframes without a loop to the corrected map of old keyframes (`loopclosure.map_align`), oldest
        first, while no keyframe comes in; an aligned one joins the graph like a loop."""
        for kid in self._unaligned.due(self.stats.corrections):
            if not self._inbox.empty() or self._pace():
                return
            self._unaligned.tried(kid, self.stats.corrections)
            kfs, poses, _, path, _ = self._snapshot()
            try:
                v = self._aligner.align_keyframe(kid, kfs, poses, path, {e.cur for e in self.loops},
                                                 self.config.detect.min_walk_m)
            except Exception:  # as for a loop: the scan goes on without this edge
                log.exception("map alignment failed on keyframe %d", kid)
                continue
            if v is None or v.edge is not None:
                self._unaligned.drop(kid)
            if v is None:
                continue
            index = next(k.index for k in kfs if k.kid == kid)
            self.verdicts.append((index, -1 if v.edge is None else v.edge.old_frame, v.reason))
            self.stats.map_rejected += v.edge is None
            if v.edge is not None:
                self.stats.map_aligned += 1
                self.map_edges.append(v.edge)
                self._add_edge(v.edge)
                log.info("keyframe of frame %d aligned to the map (frame %d; correction %.3f m / %.2f deg)",
                         v.edge.cur_frame, v.edge.old_frame, v.edge.drift_m, v.edge.drift_deg)

    @property
    def correcting(self) -> bool:
        """True while a correction is optimised, rebuilt or waits to be swapped in. Any thread."""
        return self._correcting.is_set() or self._ready is not None

    def _correct(self, kfs, poses, odom, moved, due: list[LoopEdge]) -> None:
        self._correcting.set()
        try:
            self._optimise_and_rebuild(kfs, poses, odom, moved, due)
        finally:
            self._correcting.clear()

    def _optimise_and_rebuild(self, kfs, poses, odom, moved, due: list[LoopEdge]) -> None:
        """The graph with the `due` loops optimised (without one of them when only that converges: it is dropped);
        a discarded or fully pruned result drops them all (map kept)."""
        t0 = time.perf_counter()
        edges = graph_edges(kfs, odom, self.loops, self.config)
        new = {i for i, g in enumerate(edges) if any(g.origin is d for d in due)}
        res, left_out = optimise_dropping(poses, edges, new, self.config.graph)
        t1 = time.perf_counter()
        if left_out is not None:
            self._drop_edge(edges[left_out].origin)
        if res.poses is None or res.loops_kept == 0:
            self.loops = [e for e in self.loops if all(e is not d for d in due)]
            if res.poses is None:
                self.stats.discarded += 1
                log.warning("loop closure: optimisation result discarded (%s); the map is kept", res.reason)
            else:
                self.stats.pruned += 1
                log.info("loop closure: the optimisation pruned the loop edge; the map is kept")
            return
        info = dict(max_shift_m=res.max_shift_m, loops=res.loops_kept, optimise_s=t1 - t0)
        if self._hand_over(kfs, poses, res.poses, moved, info, pace=self._pace_describing):
            while not self._applied.wait(0.05) and not self._stop.is_set():
                pass

    def _drop_edge(self, edge: LoopEdge) -> None:
        """A new edge the optimisation converged without, where it did not with it: it disagrees with the rest."""
        self.loops = [e for e in self.loops if e is not edge]
        self.stats.dropped += 1
        log.warning("loop closure: the edge of frame %d with frame %d disagrees with the other loops; it is left out",
                    edge.cur_frame, edge.old_frame)

    def _hand_over(self, kfs, poses, new_poses, moved, info: dict, pace=None) -> bool:
        """Rebuild the map with `kfs` at `new_poses` (pacing the worker) and leave it for the fusion thread's
        `apply_ready`; False when stopped or the world moved meanwhile (gravity): the result would be stale."""
        t0, pace = time.perf_counter(), pace or self._pace
        volume = self.spare.take(self._map_blocks)
        built = rebuild(kfs, new_poses, volume, self._mesh_cfg, pace)
        if built is None or moved != self._world_moved:
            self.spare.give(volume)
            return False
        new_by_kid = {k.kid: T for k, T in zip(kfs, new_poses)}
        C_last = new_poses[-1] @ np.linalg.inv(poses[-1])
        def taken():
            kfs, poses, _, _, now_moved = self._snapshot()
            return (kfs, poses) if now_moved == moved else None

        if not built.catch_up(taken, new_by_kid, C_last, self.config.handover_keyframes, pace, self._stop.is_set):
            self.spare.give(volume)
            return False
        with self._idle_lock:   # busy until it is applied (an offer comes while the worker may be idle)
            self._idle.clear()
            self._applied.clear()
            self._ready = (built, new_by_kid, C_last, info | dict(rebuild_s=time.perf_counter() - t0))
        return True

    def offer(self, new_poses: np.ndarray) -> bool:
        """Correct the map to put the keyframes held now at `new_poses` ((N,4,4), in order), as an accepted
        loop does after its optimisation: rebuilt in the calling thread, swapped in by the fusion thread's
        next `apply_ready`. For tests and tools (a correction without finding a loop). False: stale."""
        kfs, poses, _, _, moved = self._snapshot()
        new_poses = np.asarray(new_poses, float).reshape(len(kfs), 4, 4)
        shift = max(float(np.linalg.norm(a[:3, 3] - b[:3, 3])) for a, b in zip(new_poses, poses))
        info = dict(max_shift_m=shift, loops=0, optimise_s=0.0)
        return self._hand_over(kfs, poses, new_poses, moved, info, pace=lambda: self._stop.is_set())

    def keyframe_poses(self) -> np.ndarray:
        """(N,4,4) current poses of the keyframes held, oldest first. Any thread."""
        return self._snapshot()[1].reshape(-1, 4, 4)
