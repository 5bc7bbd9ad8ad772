"""Owns the order in which changed chunks are re-inferred: merging marks, settling, priorities, grouping.

A chunk enters `pending` when fusion marks it dirty (repeated marks merge: first-change time, last-change
time, number of marks). It is ready once it has not changed for `settle_s` (a chunk still being scanned
every frame waits a little) or has waited `max_wait_s`. Ready chunks are ordered by distance to the
camera, how often they changed and how long they waited, and neighbours are grouped into one region
(a box at most `max_group_extent_chunks` wide) so they share the halo work. A chunk is in flight from
its request until its result lands; marks that arrive meanwhile make it pending again, unless the
snapshot it was inferred from already contained them (no lost work, no redundant work).
A chunk whose neighbours changed after its snapshot is "halo-stale": its prediction may differ from one
on the current volume; those are refreshed when idle (at most every `halo_refresh_min_s`) and in a drain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nets.cells import pack_cells

_NEIGHBOURS = [(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1) if (x, y, z) != (0, 0, 0)]


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduling policy."""

    settle_s: float = 0.2               #: a chunk marked within this long waits (it is still being scanned)...
    max_wait_s: float = 0.3             #: ...unless it has waited this long since its first unlabelled change
    max_group_extent_chunks: int = 8    #: a region groups ready chunks inside a box this many chunks wide
    distance_gain_per_m: float = 1.0    #: order: + this * distance (m) from the camera to the chunk centre
    change_gain: float = 0.5            #: order: - this * log2(1 + marks)
    age_gain_per_s: float = 2.0         #: order: - this * seconds waited
    ride_along: bool = True             #: a region also takes pending chunks not ready yet (they share its halo)
    halo_refresh_live: bool = True      #: refresh halo-stale chunks when nothing else is ready
    halo_refresh_min_s: float = 3.0     #: a chunk is refreshed live at most once in this long


@dataclass
class _Entry:
    since_s: float      # time of the first frame whose change is not labelled yet
    last_s: float       # time of the newest frame that may have marked it
    marks: int          # takes that found it dirty
    count: int          # frames integrated when it was last found dirty (its marks come from frames <= count)


class ChunkScheduler:
    """Pending/in-flight bookkeeping for chunk inference. Thread: one at a time (the nets thread)."""

    def __init__(self, chunk_size_m: float, config: SchedulerConfig = SchedulerConfig()):
        self.chunk_size_m = chunk_size_m
        self.config = config
        self.clear()

    def clear(self) -> None:
        self.pending: dict[tuple, _Entry] = {}
        self.in_flight: dict[tuple, _Entry] = {}
        self.changed_at: dict[tuple, int] = {}      # newest frame count that marked the chunk
        self.inferred_at: dict[tuple, int] = {}     # frame count of the snapshot of its latest prediction
        self.inferred_s: dict[tuple, float] = {}    # when that prediction landed (or a live refresh was skipped)
        self.deferred: set = set()                   # skipped (input barely changed) since their last inference

    # --- input ---------------------------------------------------------------------------------
    def add(self, keys, since_s: float, last_s: float, count: int) -> None:
        """Merge the chunks of one take of the dirty set (their marks came from frames <= count)."""
        for key in keys:
            key = tuple(key)
            self.changed_at[key] = max(self.changed_at.get(key, 0), count)
            e = self.pending.get(key)
            if e is None:
                self.pending[key] = _Entry(since_s, last_s, 1, count)
            else:
                e.since_s, e.last_s = min(e.since_s, since_s), max(e.last_s, last_s)
                e.marks, e.count = e.marks + 1, max(e.count, count)

    def queue_length(self) -> int:
        return len(self.pending) + len(self.in_flight)

    def waiting(self) -> list:
        """The entries of every chunk pending or in flight (their `since_s`, `marks`)."""
        return list(self.pending.values()) + list(self.in_flight.values())

    def oldest_since_s(self) -> float | None:
        times = [e.since_s for e in self.pending.values()] + [e.since_s for e in self.in_flight.values()]
        return min(times) if times else None

    # --- choosing work -------------------------------------------------------------------------
    def next_groups(self, now_s: float, camera_m, limit: int, force: bool = False) -> list[tuple]:
        """Up to `limit` groups of ready chunks (moved to in flight). force: every pending chunk is
        ready, ordered by key (deterministic, for step/drain)."""
        cfg = self.config
        idle = [k for k in self.pending if k not in self.in_flight]  # in flight: wait for that result first
        riders = []
        if force:
            ready = sorted(idle)
        else:
            idle.sort(key=lambda k: (self._score(k, now_s, camera_m), k))
            ready = [k for k in idle if now_s - self.pending[k].last_s >= cfg.settle_s
                     or now_s - self.pending[k].since_s >= cfg.max_wait_s]
            riders = [k for k in idle if k not in set(ready)] if cfg.ride_along and ready else []
        groups = self._group(ready, limit, riders)
        for group in groups:
            for key in group:
                self.in_flight[key] = self.pending.pop(key)
        return groups

    def _score(self, key, now_s: float, camera_m) -> float:
        cfg, e = self.config, self.pending[key]
        dist = 0.0 if camera_m is None else float(np.linalg.norm(
            (np.asarray(key, float) + 0.5) * self.chunk_size_m - camera_m))
        return (cfg.distance_gain_per_m * dist - cfg.change_gain * math.log2(1 + e.marks)
                - cfg.age_gain_per_s * (now_s - e.since_s))

    def _group(self, ready: list, limit: int, riders: list) -> list[tuple]:
        """Groups seeded by ready chunks (in order), joined by ready chunks and then riders that keep the
        group's box within `max_group_extent_chunks`."""
        extent = self.config.max_group_extent_chunks
        used: set = set()
        groups = []
        for seed in ready:
            if len(groups) >= limit:
                break
            if seed in used:
                continue
            lo = hi = np.asarray(seed)
            group = [seed]
            for key in ready + riders:
                k = np.asarray(key)
                if key in used or key == seed or np.abs(k - seed).max() >= extent:
                    continue
                nlo, nhi = np.minimum(lo, k), np.maximum(hi, k)
                if (nhi - nlo).max() < extent:
                    group.append(key)
                    lo, hi = nlo, nhi
            used.update(group)
            groups.append(tuple(sorted(group)))
        return groups

    def halo_stale(self, now_s: float, force: bool = False) -> list:
        """Idle predicted chunks whose neighbours changed after their snapshot, or whose own small change
        was deferred, sorted; live only those inferred longer than `halo_refresh_min_s` ago."""
        out = []
        for key, at in self.inferred_at.items():
            if key in self.pending or key in self.in_flight:
                continue
            if not force and now_s - self.inferred_s.get(key, 0.0) < self.config.halo_refresh_min_s:
                continue
            if key in self.deferred or any(self.changed_at.get((key[0] + dx, key[1] + dy, key[2] + dz), 0) > at
                                           for dx, dy, dz in _NEIGHBOURS):
                out.append(key)
        return sorted(out)

    def requeue(self, keys, now_s: float, count: int) -> None:
        """Make idle chunks pending again (halo refresh), ready at once."""
        for key in keys:
            self.pending.setdefault(tuple(key), _Entry(now_s, now_s - self.config.settle_s, 0, count))

    # --- results -------------------------------------------------------------------------------
    def done(self, keys, snapshot_count: int, now_s: float, inferred: bool = True) -> list[float]:
        """Results for `keys` (inferred from a snapshot of `snapshot_count` frames) landed at now_s;
        inferred False: their input barely changed and they keep their labels (deferred to a drain).

        Returns the label latency (s) of each chunk whose change it covered. Pending marks the
        snapshot already contained are dropped."""
        latencies = []
        for key in map(tuple, keys):
            e = self.in_flight.pop(key, None)
            if e is not None and e.marks:
                latencies.append(now_s - e.since_s)
            again = self.pending.get(key)
            if again is not None and again.count <= snapshot_count:
                del self.pending[key]
                if again.marks:
                    latencies.append(now_s - again.since_s)
            if not inferred:
                self.deferred.add(key)
                self.inferred_s[key] = now_s  # looked at now: a live refresh waits halo_refresh_min_s again
                continue
            self.deferred.discard(key)
            self.inferred_at[key] = max(self.inferred_at.get(key, 0), snapshot_count)
            self.inferred_s[key] = now_s
        return latencies

    def cancel(self, keys=None) -> None:
        """Put in-flight chunks (all, or `keys`) back into pending (their request was dropped)."""
        for key in list(self.in_flight if keys is None else map(tuple, keys)):
            e = self.in_flight.pop(key, None)
            if e is None:
                continue
            p = self.pending.get(key)
            if p is None:
                self.pending[key] = e
            else:
                p.since_s, p.last_s = min(p.since_s, e.since_s), max(p.last_s, e.last_s)
                p.marks, p.count = p.marks + e.marks, max(p.count, e.count)


class InputMemory:
    """The core input sites each chunk was last inferred from, to tell how much a new snapshot changed.

    Thread: one at a time (the nets thread)."""

    def __init__(self, chunk_voxels: int):
        self.chunk_voxels = chunk_voxels
        self.inputs: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # key -> (sorted packed cells, features)

    def clear(self) -> None:
        self.inputs.clear()

    def _core_sites(self, region, key) -> tuple[np.ndarray, np.ndarray]:
        core = region.core & np.all(np.floor_divide(region.coords, self.chunk_voxels) == np.asarray(key), axis=1)
        packed = pack_cells(region.coords[core])
        order = np.argsort(packed)
        return packed[order], region.features[core][order]

    def change(self, region, key) -> float:
        """Share of the chunk's core sites added or removed plus the mean absolute feature change of
        the others, since its last inference; inf when it was never inferred."""
        old = self.inputs.get(tuple(key))
        if old is None:
            return float("inf")
        packed, feats = self._core_sites(region, key)
        common, i_old, i_new = np.intersect1d(old[0], packed, assume_unique=True, return_indices=True)
        moved = (len(old[0]) + len(packed) - 2 * len(common)) / max(len(old[0]), 1)
        drift = float(np.abs(old[1][i_old] - feats[i_new]).mean()) if len(common) else 0.0
        return moved + drift

    def remember(self, region) -> None:
        for key in region.keys:
            self.inputs[tuple(key)] = self._core_sites(region, key)
