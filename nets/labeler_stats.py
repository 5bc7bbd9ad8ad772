"""Owns the incremental labeler's work and latency counters: label latency per labelled change, and per
region the queue wait of its changes, the snapshot wait, the fusion thread's serve time, the inference and
the region's size, with their percentiles; and how busy the worker thread was (its CPU time over its wall
time: the share of a core the nets took from fusion), with the part spent refreshing halo-stale chunks.

Thread-safe: the labeler's worker (or stepping) thread counts, any thread reads `summary`/`latencies_s`."""
from __future__ import annotations

import threading
from collections import deque

import numpy as np

#: sampled per region (queue_wait_ms: per labelled chunk change), reported as p50/p95
SPREADS = ("infer_ms", "snapshot_wait_ms", "serve_ms", "region_sites", "queue_wait_ms")


class LabelerStats:
    """Counters of one labeler generation (a reset starts new ones)."""

    def __init__(self, max_samples: int):
        self._lock = threading.Lock()
        self._latencies_s: deque[float] = deque(maxlen=max_samples)
        self._spread = {name: deque(maxlen=max_samples) for name in SPREADS}
        self.chunks = self.sites = self.core_sites = self.regions = self.dropped = self.skipped = 0
        self.infer_s = self.refresh_infer_s = 0.0
        self.refresh_regions = 0
        self.worker_cpu_s = self.worker_wall_s = 0.0
        self.queue, self.oldest_wait_s = 0, 0.0

    def region(self, keys, region, infer_ms: float, latencies, snap, queued_s) -> None:
        """One inferred region: its chunks' label latencies and how long their changes queued (s). A region
        none of whose chunks had a change waiting (`queued_s` empty) only refreshed halo-stale chunks."""
        with self._lock:
            if not queued_s:
                self.refresh_regions += 1
                self.refresh_infer_s += infer_ms / 1e3
            s = self._spread
            s["queue_wait_ms"].extend(q * 1e3 for q in queued_s)
            s["snapshot_wait_ms"].append((snap.served_s - snap.request.requested_s) * 1e3)
            s["serve_ms"].append(snap.serve_ms)
            s["region_sites"].append(len(region))
            s["infer_ms"].append(infer_ms)
            self.chunks += len(keys)
            self.sites += len(region)
            self.core_sites += int(np.count_nonzero(region.core))
            self.regions += 1
            self.infer_s += infer_ms / 1e3
            self._latencies_s.extend(latencies)

    def skipped_chunks(self, keys, latencies) -> None:
        """Chunks that kept their labels (input barely changed) or were labelled outside a region."""
        with self._lock:
            self.skipped += len(keys)
            self._latencies_s.extend(latencies)

    def worker_time(self, cpu_s: float, wall_s: float) -> None:
        """Add one turn of the worker's loop: the thread's CPU seconds and the wall seconds it took."""
        with self._lock:
            self.worker_cpu_s += cpu_s
            self.worker_wall_s += wall_s

    def dropped_result(self) -> None:
        with self._lock:
            self.dropped += 1

    def set_queue(self, queue: int, oldest_wait_s: float) -> None:
        with self._lock:
            self.queue, self.oldest_wait_s = queue, oldest_wait_s

    def latencies_s(self) -> list[float]:
        with self._lock:
            return list(self._latencies_s)

    def summary(self) -> dict:
        """Queue, oldest wait (s), work counters, latency p50/p95 (s) and each spread's p50/p95."""
        with self._lock:
            lat = np.asarray(self._latencies_s, float)
            spread = {name: np.asarray(v, float) for name, v in self._spread.items()}
            out = {"queue": self.queue, "oldest_wait_s": round(self.oldest_wait_s, 3),
                   "chunks_inferred": self.chunks, "sites_inferred": self.sites, "core_sites_inferred": self.core_sites,
                   "regions_inferred": self.regions, "stale_results_dropped": self.dropped,
                   "chunks_skipped_unchanged": self.skipped, "infer_s_total": round(self.infer_s, 3),
                   "refresh_regions": self.refresh_regions, "refresh_infer_s": round(self.refresh_infer_s, 3),
                   "worker_cpu_s": round(self.worker_cpu_s, 3), "worker_wall_s": round(self.worker_wall_s, 3),
                   "worker_busy_share": (round(self.worker_cpu_s / self.worker_wall_s, 3) if self.worker_wall_s
                                         else None),
                   "latency_samples": len(lat)}
        for p in (50, 95):
            out[f"latency_p{p}_s"] = round(float(np.percentile(lat, p)), 4) if len(lat) else None
            for name, a in spread.items():
                out[f"{name}_p{p}"] = round(float(np.percentile(a, p)), 2) if len(a) else None
        return out
