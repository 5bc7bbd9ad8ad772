"""Owns incremental labeling: the worker that re-infers changed chunks and fuses the results into the stores.

Data flow (no lock is held during inference; an integration and a snapshot being served exclude each other):
    fusion thread: process(frame) -> dirty "semantics"/"completion" chunks + an integration stamp
    nets thread:   take dirty chunks (with their stamps) -> ChunkScheduler -> request regions of grouped
                   chunks and serve them (under the pipeline's volume lock: it waits at most for one
                   integration) -> ChunkModel.predict -> LabelStore/CompletionStore
With `serve_in_worker` off, the fusion thread serves the requests at the end of process() (or in
serve_requests() when idle) instead, within a per-frame budget.
Label latency is measured from the integration of the first frame whose change a chunk had not
labelled yet to the moment its labels land in the store. `reset()` bumps a generation counter; any
result of an older generation is dropped, never fused. When loop closure swaps a corrected map in
(`pipeline.loops.events`), the stored labels and user corrections move with it (`LabelStore.follow`);
a result inferred from a snapshot served before the swap is of the old world: it is not fused, its
chunks are inferred again (the pipeline marks every chunk after a correction).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from fusion.pipeline import FusionPipeline
from nets.completion import CompletionStore
from nets.cells import CLASS_IDS
from nets.labeler_stats import LabelerStats
from nets.labels import LabelStore
from nets.scheduler import ChunkScheduler, InputMemory, SchedulerConfig

log = logging.getLogger(__name__)
CONSUMERS = ("semantics", "completion")


@dataclass(frozen=True)
class LabelerConfig:
    """The worker's behaviour."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_regions_in_flight: int = 1       #: snapshot requests outstanding at once (1: each region takes all it can)
    serve_in_worker: bool = True         #: live, CPU volume: the worker serves its own snapshots at once, under the
    #:     pipeline's volume lock (False, or a GPU volume: the fusion thread serves them after its next frame)
    prefetch: bool = True                #: live, fusion serving: request the next region as soon as a snapshot
    #:     arrives, so that fusion serves it while this one is inferred (the snapshot wait overlaps inference)
    poll_s: float = 0.02                 #: longest idle wait before looking at the dirty sets again
    torch_threads: int = 0               #: torch intra-op threads; 0: CPU cores - 1 (at least 1)
    behind_queue_chunks: int = 12        #: "behind" when this many chunks are queued...
    behind_wait_s: float = 1.5           #: ...or the oldest has waited this long
    behind_log_interval_s: float = 5.0   #: the "behind" INFO log line comes at most this often
    latency_samples: int = 50_000        #: latency samples kept for the percentiles
    skip_change_below: float = 0.05      #: live: chunks whose input changed less than this since their last
    #:     inference (share of sites added/removed + mean feature change) keep their labels; step/drain infer all
    worker_nice: int = 5                 #: niceness added to the worker thread (Linux) so fusion keeps its CPU share
    #: live regions carry this many cells of context around their chunks (0: the model's receptive field, as
    #: step/drain and the final pass always do). A one-off probe on the real room's scan (a throwaway script,
    #: no project command): 16 cells labeled a region's chunks 97-100 % as the full 28 do, in 0.5-0.75 of the
    #: inference time; the final pass relabels exactly
    live_halo_cells: int = 16


@dataclass(frozen=True)
class _EmptyPrediction:
    """What a region without core sites predicts: nothing (its chunks lose their labels)."""

    keys: tuple
    coords: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int32))
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, len(CLASS_IDS)), np.float32))
    empty_prob: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sdf_vox: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    observed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def torch_threads(config: LabelerConfig) -> int:
    return config.torch_threads or max(1, (os.cpu_count() or 2) - 1)


class IncrementalLabeler:
    """Re-infers changed chunks of `pipeline` with `model` and fuses them into `labels`/`completion`.

    Threads: `start`/`stop`/`join`/`reset`/`stats` from the controlling thread (GUI, reconstruct); the
    worker thread owns the model and the scheduler while it runs; `step` and `drain` run everything in
    the calling thread, which must be the pipeline's fusion thread (it serves its own snapshots).
    """

    def __init__(self, pipeline: FusionPipeline, model, labels: LabelStore | None = None,
                 completion: CompletionStore | None = None, config: LabelerConfig = LabelerConfig()):
        self.pipeline = pipeline
        self.model = model
        self.grid = model.grid
        self.labels = labels if labels is not None else LabelStore(self.grid)
        self.completion = completion if completion is not None else CompletionStore(self.grid)
        self.config = config
        self.scheduler = ChunkScheduler(self.grid.chunk_size_m, config.scheduler)
        halo = min(config.live_halo_cells or self.grid.halo_voxels, self.grid.halo_voxels)
        self.live_grid = replace(self.grid, halo_voxels=halo)  #: the grid of live requests
        self.memory = InputMemory(self.grid.chunk_voxels)
        self._gen_lock = threading.Lock()
        self._generation = 0
        self._seen_generation = 0
        self.counters = LabelerStats(config.latency_samples)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._seen_count = 0          # stamps up to this frame count were consumed
        self._camera_m: np.ndarray | None = None
        self._requested: dict[tuple, int] = {}   # group -> generation, requested and not yet back
        self._last_behind_log_s = -1e9
        self._world_seen = 0          # map corrections of the pipeline the worker has followed
        self.error: BaseException | None = None

    # --- thread control ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the worker thread (no-op when it runs; after a `stop` the old worker is joined first)."""
        if self.running and not self._stop.is_set():
            return
        if not self.join(30.0):
            raise RuntimeError("the previous labeling worker did not stop within 30 s")
        self._set_torch_threads()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nets-labeler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the worker to stop (returns at once; `join` waits)."""
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the worker to end; True when no worker thread is left."""
        t = self._thread
        if t is not None:
            t.join(timeout_s)
            if t.is_alive():
                return False
            self._thread = None
        return True

    def reset(self, pipeline: FusionPipeline | None = None) -> None:
        """Forget all work and results (optionally follow a new pipeline). Results of work begun
        before the reset are dropped. Does not stop a running worker."""
        with self._gen_lock:
            old = self._generation
            self._generation += 1
            if pipeline is not None:
                self.pipeline = pipeline
            self.labels.clear()
            self.completion.clear()
        self.pipeline.cancel_requests(old)
        self.counters = LabelerStats(self.config.latency_samples)
        if not self.running:
            self._sync_generation()

    def _sync_generation(self) -> int:
        """Adopt the current generation (clearing the scheduler after a reset); worker/stepping thread."""
        with self._gen_lock:
            gen = self._generation
        if gen != self._seen_generation:
            self.scheduler.clear()
            self.memory.clear()
            self._requested.clear()
            last = self.pipeline.latest_stamp()  # frames before the reset are not waited for
            self._seen_count = 0 if last is None else last.count
            self._camera_m = None
            self._world_seen = 0
            self._seen_generation = gen
        return gen

    def _set_torch_threads(self) -> None:
        import torch

        torch.set_num_threads(torch_threads(self.config))

    # --- the worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        self._lower_priority()
        cpu_s, wall_s = time.thread_time(), time.monotonic()
        try:
            while not self._stop.is_set():
                gen = self._sync_generation()
                self._poll()
                self._request(gen, force=False)
                self._publish_queue()
                self._handle(self.pipeline.take_snapshots(timeout_s=self.config.poll_s), gen, live=True)
                cpu_now, wall_now = time.thread_time(), time.monotonic()
                self.counters.worker_time(cpu_now - cpu_s, wall_now - wall_s)
                cpu_s, wall_s = cpu_now, wall_now
        except Exception as exc:  # keep the app alive; stats() reports it
            log.exception("labeling worker stopped by an error")
            self.error = exc
        finally:
            self._abandon()

    def _lower_priority(self) -> None:
        """Raise this thread's niceness (Linux threads have their own); elsewhere a no-op."""
        if self.config.worker_nice and hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
            try:
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.config.worker_nice)
            except OSError:
                log.debug("could not lower the labeling worker's priority")

    def _abandon(self) -> None:
        """Drop outstanding requests; their chunks go back to pending (no lost work)."""
        self.pipeline.cancel_requests(self._seen_generation)
        self._requested.clear()
        self.scheduler.cancel()
        self._publish_queue()

    def step(self, refresh_halo: bool = False) -> int:
        """Infer every pending chunk now, in the calling thread (the fusion thread), deterministically;
        refresh_halo also re-infers chunks whose neighbours changed after their snapshot. Returns the
        chunks inferred. Not while the worker thread runs."""
        if self.running:
            raise RuntimeError("step() while the worker thread runs; stop() and join() it first")
        self._set_torch_threads()
        done = 0
        while True:
            gen = self._sync_generation()
            self._poll()
            if refresh_halo:
                now = time.monotonic()
                self.scheduler.requeue(self.scheduler.halo_stale(now, force=True), now, self._seen_count)
            if not self._request(gen, force=True):
                break
            self.pipeline.serve_requests()
            done += self._handle(self.pipeline.take_snapshots(), gen)
        self._publish_queue()
        return done

    def drain(self, timeout_s: float = 10.0) -> int:
        """Label everything: pause the worker (if it runs), `step(refresh_halo=True)` in the calling
        thread (the fusion thread), settle the labels (plain argmax, no hysteresis: what a single pass
        over the current volume gives), resume the worker. Returns the chunks inferred."""
        return self._paused(timeout_s, lambda: self.step(refresh_halo=True))

    def final_pass(self, turns: int, timeout_s: float = 10.0) -> int:
        """Relabel the whole scene with each prediction the mean over `turns` quarter turns, as
        `reconstruct --labels final` labels it after its last frame (better labels, too slow for live):
        one pass over every chunk (`nets.adapt.relabel`: the earlier evidence is replaced, corrections
        kept), in the calling thread (the fusion thread) with the worker paused; every chunk then counts as
        inferred from the current volume. Returns the chunks relabeled."""
        from nets.adapt import relabel, scene_region

        def relabel_all() -> int:
            self._sync_generation()
            self._poll()
            region = scene_region(self.pipeline.volume, self.grid)
            relabel(self.model.with_turns(turns), region, self.labels)
            latencies = self.scheduler.done(region.keys, self._seen_count, time.monotonic())  # none in flight
            self.counters.skipped_chunks((), latencies)
            return len(region.keys)
        return self._paused(timeout_s, relabel_all)

    def _paused(self, timeout_s: float, work) -> int:
        """work() in the calling thread with the worker stopped (restarted after), then settle the labels."""
        was_running = self.running
        if was_running:
            self.stop()
            if not self.join(timeout_s):
                raise RuntimeError(f"labeling worker did not stop within {timeout_s} s")
        done = work()
        self.labels.settle()
        if was_running:
            self.start()
        return done

    # --- one round -----------------------------------------------------------------------------
    def _poll(self) -> None:
        self._follow_world()
        keys, stamps = self.pipeline.take_dirty(CONSUMERS, self._seen_count)
        now = time.monotonic()
        if stamps:
            self._seen_count = stamps[-1].count
            self._camera_m = np.asarray(stamps[-1].T_world_cam)[:3, 3].copy()
        if keys:
            since = stamps[0].time_s if stamps else now
            last = stamps[-1].time_s if stamps else now
            self.scheduler.add(keys, since, last, self._seen_count)

    def _request(self, gen: int, force: bool) -> int:
        """Ask fusion for regions of ready chunk groups; returns how many were asked for."""
        now = time.monotonic()
        limit = 1 << 30 if force else self.config.max_regions_in_flight - len(self._requested)
        if limit <= 0:
            return 0
        groups = self.scheduler.next_groups(now, self._camera_m, limit, force=force)
        if not groups and not force and self.config.scheduler.halo_refresh_live:
            self.scheduler.requeue(self.scheduler.halo_stale(now)[: limit * 8], now, self._seen_count)
            groups = self.scheduler.next_groups(now, self._camera_m, limit)
        if groups:
            self._requested.update((g, gen) for g in groups)
            self.pipeline.request_regions(groups, self.grid if force else self.live_grid, tag=gen,
                                          serve=not force and self._serves_own())
        return len(groups)

    def _serves_own(self) -> bool:
        """Live requests are served by this worker (`serve_in_worker`), on a CPU volume only: a GPU volume's
        reads from a second thread are not tested here, so there the fusion thread serves them."""
        return self.config.serve_in_worker and self.pipeline.volume.on_cpu

    def _handle(self, snapshots, gen: int, live: bool = False) -> int:
        """Infer and fuse the snapshots of generation `gen`; returns chunks inferred. live: skip
        regions whose chunks' input barely changed since their last inference."""
        done = 0
        for snap in snapshots:
            keys = snap.request.keys
            if snap.request.tag != gen or self._requested.pop(keys, None) != gen:
                continue
            region = snap.region
            if live and self.config.prefetch and not self._serves_own():  # served while this one is inferred
                self._poll()
                self._request(gen, force=False)
            if live and self._unchanged(region):
                self.counters.skipped_chunks(keys, self.scheduler.done(keys, snap.frames_integrated, time.monotonic(),
                                                                       inferred=False))
                continue
            t0 = time.perf_counter()
            pred = self.model.predict(region) if region.core.any() else _EmptyPrediction(keys)
            infer_ms = (time.perf_counter() - t0) * 1e3
            with self._gen_lock:
                if gen != self._generation:   # reset while inferring: a stale result
                    self.counters.dropped_result()
                    continue
                if self.labels.fuse(pred, world=self._world_of(snap)) is None:  # the map moved under it
                    self.scheduler.cancel(keys)
                    self.counters.dropped_result()
                    continue
                self.completion.fuse(pred)
            self.memory.remember(region)
            queued = [snap.request.requested_s - e.since_s for e in map(self.scheduler.in_flight.get, keys)
                      if e is not None and e.marks]
            latencies = self.scheduler.done(keys, snap.frames_integrated, time.monotonic())
            self.counters.region(keys, region, infer_ms, latencies, snap, queued)
            done += len(keys)
        return done

    def _follow_world(self) -> list:
        """Move the stores with map corrections not followed yet: labels and corrections move, completion
        of chunks left without cells is dropped, every chunk counts as changed. Returns the corrections."""
        loops = getattr(self.pipeline, "loops", None)   # the map corrections swapped in so far, oldest first
        events = list(loops.events) if loops is not None else []
        if len(events) > self._world_seen:
            self.labels.follow([e.surface_transforms for e in events])
            gone = self.completion.chunk_keys() - self.labels.chunk_keys()
            if gone:
                self.completion.fuse(_EmptyPrediction(tuple(sorted(gone))))
            self.memory.clear()
            self._world_seen = len(events)
            log.info("labels follow the corrected map (%d corrections so far)", len(events))
        return events

    def _world_of(self, snap) -> int:
        """Map corrections swapped in before `snap` was served: the world its input is in (the stores are
        brought up to date first)."""
        events = self._follow_world()
        return sum(1 for e in events if e.applied_s <= snap.served_s)

    def _unchanged(self, region) -> bool:
        return max(self.memory.change(region, key) for key in region.keys) < self.config.skip_change_below

    # --- statistics ----------------------------------------------------------------------------
    def _publish_queue(self) -> None:
        now = time.monotonic()
        oldest = self.scheduler.oldest_since_s()
        queue, wait = self.scheduler.queue_length(), 0.0 if oldest is None else now - oldest
        self.counters.set_queue(queue, wait)
        cfg = self.config
        behind = queue >= cfg.behind_queue_chunks or wait >= cfg.behind_wait_s
        if behind and now - self._last_behind_log_s >= cfg.behind_log_interval_s:
            self._last_behind_log_s = now
            log.info("labels are behind: %d chunks queued, the oldest waiting %.1f s", queue, wait)

    def latency_samples_s(self) -> list[float]:
        """Every label latency measured so far (s), oldest first: one per labelled change. Any thread."""
        return self.counters.latencies_s()

    def unlabelled_waits_s(self, now_s: float | None = None) -> list[float]:
        """How long each change not labelled yet has waited by `now_s` (time.monotonic()), including
        marks fusion made that the worker has not taken: a lower bound on latencies still to come. Not
        while the worker thread runs (it takes the dirty marks, as the worker would)."""
        if self.running:
            raise RuntimeError("unlabelled_waits_s() while the worker thread runs; stop() and join() it first")
        self._sync_generation()
        self._poll()
        now_s = time.monotonic() if now_s is None else now_s
        return [now_s - e.since_s for e in self.scheduler.waiting() if e.marks]

    def stats(self) -> dict:
        """Queue length, oldest wait (s), label latency p50/p95 (s), work counters and where the time of a
        region goes (`nets.labeler_stats`). Any thread."""
        return self.counters.summary() | {"running": self.running,
                                          "error": None if self.error is None else str(self.error)}
