"""Owns snapshot serving: other threads request coarse regions of chunks; the fusion thread serves them, or
the requester itself under the pipeline's volume lock.

A region's cells depend only on the fine voxels inside them (`fusion.coarse`), so the coarse sites of
each chunk are cached and recomputed only when the chunk was touched since: a region costs its changed
chunks, not its whole halo. Serving is bounded per call by a time budget: a request whose chunks need
more work is finished over the next calls, each chunk computed at most once while it is served. The
chunks of one region are then up to that many frames apart. Live serving (`serve(live=True)`) also reuses
halo chunks (context, not predicted) computed at most `halo_lag_frames` before serving began, even if
touched since; the snapshot reports the oldest frame count it reflects (`frames_integrated`), so a
consumer re-infers any chunk changed after it. Otherwise (e.g. when paused or draining) and without a
budget, a region is one consistent state of the volume.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from fusion.coarse import FEATURES, CoarseGridConfig, CoarseRegion, coarse_region, region_membership
from fusion.dirty import chunk_keys_of_blocks
from fusion.volume import TsdfVolume


@dataclass(frozen=True)
class SnapshotRequest:
    """Chunks to summarise as one coarse region (made on any thread; immutable)."""

    keys: tuple                  #: chunk keys on `grid`'s chunk grid
    grid: CoarseGridConfig
    tag: int = 0                 #: the requester's token, echoed in the snapshot (e.g. its generation)
    requested_s: float = 0.0     #: time.monotonic() of the request


@dataclass(frozen=True)
class RegionSnapshot:
    """A served request (immutable; handed to the requesting thread)."""

    request: SnapshotRequest
    region: CoarseRegion
    frames_integrated: int       #: every chunk reflects at least this many fused frames
    frame_index: int             #: index of the last fused frame when it was completed (-1: none)
    served_s: float              #: time.monotonic() when it was completed
    serve_ms: float              #: fusion-thread time it cost (over all the calls that served it)


class CoarseCache:
    """Coarse sites of each chunk (core only) with the frame count they were computed at.

    Thread: whichever holds the pipeline's volume lock (it reads the volume's buffers in place)."""

    def __init__(self, volume: TsdfVolume, chunk_size_m: float):
        self.volume = volume
        self.chunk_size_m = chunk_size_m
        self.touched_at: dict[tuple, int] = {}            # chunk -> frames integrated when last touched
        self.entries: dict[CoarseGridConfig, dict] = {}   # grid (halo 0) -> chunk -> (count, coords, features)
        self._seeded = False  # chunks of blocks that existed before the first integration (a loaded session)

    def touch(self, blocks: np.ndarray) -> None:
        count = self.volume.frames_integrated
        for key in chunk_keys_of_blocks(blocks, self.volume.config.block_size_m, self.chunk_size_m):
            self.touched_at[key] = count

    def fits(self, grid: CoarseGridConfig) -> bool:
        return abs(grid.chunk_size_m - self.chunk_size_m) <= 1e-9

    def near(self, keys: tuple, grid: CoarseGridConfig) -> list:
        """The chunks a region of `keys` reads: the keys first, then their halo chunks."""
        reach = -(-grid.halo_voxels // grid.chunk_voxels)
        span = range(-reach, reach + 1)
        halo = {(k[0] + dx, k[1] + dy, k[2] + dz) for k in keys for dx in span for dy in span for dz in span}
        return list(keys) + sorted(halo - set(keys))

    def stale(self, key: tuple, grid: CoarseGridConfig, since_count: int) -> bool:
        """Missing, or computed before `since_count` and touched after it was computed."""
        entry = self.entries.get(_cells_only(grid), {}).get(key)
        return entry is None or (entry[0] < since_count and entry[0] < self.touched_at.get(key, -1))

    def refresh(self, key: tuple, grid: CoarseGridConfig) -> None:
        """Summarise one chunk; a chunk no integration or load ever touched has no blocks: no sites."""
        if not self._seeded:
            for k in chunk_keys_of_blocks(self.volume.active_keys(), self.volume.config.block_size_m, self.chunk_size_m):
                self.touched_at.setdefault(k, 0)
            self._seeded = True
        if key in self.touched_at:
            r = coarse_region(self.volume, [key], grid, halo_voxels=0)
            coords, feats = r.coords, r.features
        else:
            coords, feats = np.zeros((0, 3), np.int32), np.zeros((0, len(FEATURES)), np.float32)
        self.entries.setdefault(_cells_only(grid), {})[key] = (self.volume.frames_integrated, coords, feats)

    def assemble(self, keys: tuple, grid: CoarseGridConfig) -> tuple[CoarseRegion, int]:
        """The region of `keys` from cached entries (all present), and the oldest frame count it reflects."""
        entries = self.entries[_cells_only(grid)]
        now = self.volume.frames_integrated
        near = self.near(keys, grid)
        count = min(now if entries[k][0] >= self.touched_at.get(k, -1) else entries[k][0] for k in near)
        coords = np.concatenate([entries[k][1] for k in near])
        feats = np.concatenate([entries[k][2] for k in near])
        in_region, core = region_membership(coords, np.asarray(keys, np.int64), grid.chunk_voxels, grid.halo_voxels)
        coords, feats, core = coords[in_region], feats[in_region], core[in_region]
        order = np.lexsort(coords.T[::-1])  # x, then y, then z: coarse_region's order
        return CoarseRegion(keys, coords[order], feats[order], core[order], grid), count


def _cells_only(grid: CoarseGridConfig) -> CoarseGridConfig:
    """What a chunk's cached sites depend on: the grid without its halo (regions of any halo share them)."""
    return dataclasses.replace(grid, halo_voxels=0)


class SnapshotServer:
    """Request queue, budgeted serving and outbox. `request`/`cancel`/`take`/`pending`: any thread;
    `touch`/`serve`/`serve_now`/`reset_cache`: one thread at a time, the one holding the pipeline's volume lock
    (which also keeps the volume still meanwhile). The own lock is held only to move requests and snapshots."""

    def __init__(self, volume: TsdfVolume, chunk_size_m: float, halo_lag_frames: int = 0):
        self.volume = volume
        self.halo_lag_frames = halo_lag_frames
        self.cache = CoarseCache(volume, chunk_size_m)
        self._cond = threading.Condition()
        self._requests: deque[SnapshotRequest] = deque()
        self._outbox: list[RegionSnapshot] = []
        self._serving: list | None = None  # [request, frame count when serving began, ms spent]

    def touch(self, blocks: np.ndarray) -> None:
        self.cache.touch(blocks)

    def reset_cache(self) -> None:
        """Forget every cached chunk (the volume was rebuilt in another world); requests stay."""
        self.cache = CoarseCache(self.volume, self.cache.chunk_size_m)

    def request(self, groups, grid: CoarseGridConfig, tag: int = 0) -> None:
        reqs = _requests_of(groups, grid, tag)
        with self._cond:
            self._requests.extend(reqs)

    def serve_now(self, groups, grid: CoarseGridConfig, tag: int, frame_index: int) -> int:
        """Serve live regions of `groups` at once, never queued (so `serve` never sees them); the caller holds
        the volume lock. Returns the regions served."""
        reqs = _requests_of(groups, grid, tag)
        for req in reqs:
            t0 = time.perf_counter()
            self._prepare(req, self.volume.frames_integrated, t0, None, live=True)
            snap = self._snapshot(req, frame_index, _ms_since(t0))
            with self._cond:
                self._outbox.append(snap)
                self._cond.notify_all()
        return len(reqs)

    def cancel(self, tag: int | None = None) -> int:
        """Drop pending requests and unread snapshots (all, or those of `tag`); returns how many."""
        def keep(item_tag: int) -> bool:
            return tag is not None and item_tag != tag

        with self._cond:
            n = len(self._requests) + len(self._outbox)
            self._requests = deque(r for r in self._requests if keep(r.tag))
            self._outbox = [s for s in self._outbox if keep(s.request.tag)]
            return n - len(self._requests) - len(self._outbox)

    def pending(self) -> int:
        with self._cond:
            return len(self._requests)

    def take(self, timeout_s: float = 0.0) -> list[RegionSnapshot]:
        with self._cond:
            if not self._outbox and timeout_s > 0:
                self._cond.wait(timeout_s)
            out, self._outbox = self._outbox, []
        return out

    def serve(self, max_regions: int | None, budget_ms: float | None, frame_index: int, live: bool = False) -> int:
        """Work on pending requests, oldest first, until `max_regions` are served or `budget_ms` is spent
        (at least one chunk of work per call); live: reuse recent halo chunks. Returns the regions completed."""
        t0 = time.perf_counter()
        served = 0
        while max_regions is None or served < max_regions:
            with self._cond:
                req = self._requests[0] if self._requests else None
            if req is None or (budget_ms is not None and served and _ms_since(t0) >= budget_ms):
                break
            if self._serving is None or self._serving[0] is not req:
                self._serving = [req, self.volume.frames_integrated, 0.0]
            t1 = time.perf_counter()
            done = self._prepare(req, self._serving[1], t0, budget_ms, live)
            self._serving[2] += _ms_since(t1)
            if not done:
                break
            served += self._complete(req, frame_index)
        return served

    def _prepare(self, req: SnapshotRequest, since_count: int, t0: float, budget_ms: float | None, live: bool) -> bool:
        """Refresh the request's stale chunks within the budget; True when none is left."""
        if not self.cache.fits(req.grid):
            return True
        worked = False
        halo_since = since_count - (self.halo_lag_frames if live else 0)
        for i, key in enumerate(self.cache.near(req.keys, req.grid)):
            if not self.cache.stale(key, req.grid, since_count if i < len(req.keys) else halo_since):
                continue
            if worked and budget_ms is not None and _ms_since(t0) >= budget_ms:
                return False
            self.cache.refresh(key, req.grid)
            worked = True
        return True

    def _complete(self, req: SnapshotRequest, frame_index: int) -> int:
        snap = self._snapshot(req, frame_index, self._serving[2])
        self._serving = None
        with self._cond:
            if not self._requests or self._requests[0] is not req:  # cancelled meanwhile
                return 0
            self._requests.popleft()
            self._outbox.append(snap)
            self._cond.notify_all()
        return 1

    def _snapshot(self, req: SnapshotRequest, frame_index: int, spent_ms: float) -> RegionSnapshot:
        """The request's region from its prepared chunks (`spent_ms`: the work so far, assembly is added)."""
        t1 = time.perf_counter()
        if self.cache.fits(req.grid) and req.keys:
            region, count = self.cache.assemble(req.keys, req.grid)
        else:
            region, count = coarse_region(self.volume, req.keys, req.grid), self.volume.frames_integrated
        return RegionSnapshot(req, region, count, frame_index, time.monotonic(), spent_ms + _ms_since(t1))


def _requests_of(groups, grid: CoarseGridConfig, tag: int) -> list[SnapshotRequest]:
    now = time.monotonic()
    return [SnapshotRequest(tuple(sorted({tuple(int(v) for v in k) for k in g})), grid, tag, now)
            for g in groups if len(g)]


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3
