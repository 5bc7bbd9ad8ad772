"""Owns map correction by rebuilding: a fresh volume and mesh integrated from stored keyframes at corrected poses.

Why rebuild rather than submaps or de-integration: the pipeline, tracker, mesher, snapshot server and the
nets all read one `TsdfVolume`; submaps would change that contract everywhere. De-integration needs the
exact frames that were fused (every frame at full resolution: unbounded memory) or leaves residue. A
rebuild from the keyframes' reduced RGB-D (bounded by the keyframe cap) runs on the loop-closure worker
into a volume nobody else sees; the fusion thread only swaps it in (`TsdfVolume.adopt`,
`ChunkMesher.adopt`) between two frames. Frames that were not keyframes are not in the rebuilt map; keyframes are dense
enough (every `keyframe_step_m`) that their views cover the scan.

`rebuild` runs on the worker; the adopting on the fusion thread, which owns the live volume and mesher.
"""
from __future__ import annotations

import dataclasses
import logging
import threading

import numpy as np

from fusion.meshing import ChunkMesher, MeshConfig
from fusion.volume import TsdfVolume, VolumeConfig
from loopclosure.detect import MapKeyframe

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RebuiltMap:
    """A volume and its mesh built off the fusion thread (handed over once, then owned by the fusion thread)."""

    volume: TsdfVolume
    mesher: ChunkMesher
    kids: list                    #: keyframe ids integrated, in order
    poses: np.ndarray             #: (N,4,4) the poses they were integrated with

    def add_many(self, keyframes: list, poses: list, pace=lambda: False, mesh: bool = True) -> bool:
        """Integrate keyframes, then mesh what they touched once (meshing after every keyframe would re-mesh
        blocks many times), one mesher batch per update; `pace()` is called between keyframes and batches
        (True stops: False is returned, and the map is then unusable). mesh False: what they touched is only
        queued (`ChunkMesher.queue`: the mesher that adopts this one meshes it within its budget)."""
        touched = []
        for kf, T in zip(keyframes, poses):
            if pace():
                return False
            touched.append(self.volume.integrate(kf.frame(), T))
            self.kids.append(kf.kid)
            self.poses = np.concatenate([self.poses, np.asarray(T, float)[None]])
        if not mesh:
            if touched:
                self.mesher.queue(np.concatenate(touched))
            return True
        if touched:
            self.mesher.update(np.concatenate(touched))
        while self.mesher.pending_blocks:
            if pace():
                return False
            self.mesher.update(np.zeros((0, 3), np.int32))
        return True

    def catch_up(self, taken, new_by_kid: dict, C_last: np.ndarray, handover_keyframes: int, pace, stopped) -> bool:
        """Integrate the keyframes taken while this map was rebuilt (`taken()`: the keyframes and poses held now,
        None when the world moved meanwhile), moved like the newest one it holds (C_last), round after round, so
        that the fusion thread has few left to add (what it adds stalls the live loop); `new_by_kid` gains their
        poses. False when stopped or stale. It is done once at most `handover_keyframes` are left. When a paced
        round did not shrink what is left (the scan adds keyframes faster than the paced worker integrates them:
        chasing them would hold the correction back until the scan ends), one last round runs unpaced (only
        `stopped()` ends it early) and it is done after that."""
        left, hurry = None, False
        while True:
            now = taken()
            if now is None:
                return False
            extra = [(k, C_last @ T) for k, T in zip(*now) if k.kid > self.kids[-1]]
            if len(extra) <= handover_keyframes or hurry:
                return True
            hurry, left = left is not None and len(extra) >= left, len(extra)
            if not self.add_many([k for k, _ in extra], [T for _, T in extra], stopped if hurry else pace):
                return False
            new_by_kid.update((k.kid, T) for k, T in extra)


def presized(config: VolumeConfig, live_blocks: int) -> VolumeConfig:
    """A rebuilt map's volume settings: its hash map starts at the live map's block count and a quarter more, or
    at the configured start if that is larger (never above the cap).
    Open3D holds the GIL while it allocates or grows a hash map (a grow copies every block: 4,000 to 8,000 blocks
    at 1 cm took 1.6 s alone and 3.4-3.8 s inside a live frame beside the nets, in one-off probes on 2-core
    machines; 3.9 s to 16,000), which stalls the live loop's Python; allocating once at the size needed costs
    less than growing to it (1.9 s for 16,000)."""
    blocks = min(max(int(1.25 * live_blocks), config.start_blocks), config.max_blocks)
    return dataclasses.replace(config, initial_blocks=blocks)


class SpareVolume:
    """The volume the next rebuilt map is integrated into, allocated before the scan starts and then recycled:
    the live map a correction replaces becomes the spare (`give`). Allocating a map's grid mid-scan would stall
    every thread: Open3D holds the GIL while it allocates a grid and first touches its memory (4 s for the
    15,000 blocks of room 1's first correction, one live frame of 4.1 s). Memory: one more grid of the live
    map's size for the whole scan (a rebuild needed it anyway while it ran). Thread: any (a lock guards it)."""

    def __init__(self, config: VolumeConfig):
        self._config = config
        self._lock = threading.Lock()
        self._spare: TsdfVolume | None = TsdfVolume(presized(config, 0))

    def take(self, live_blocks: int) -> TsdfVolume:
        """An empty volume for a map of about `live_blocks` blocks: the spare when it holds that many without
        growing and keeps its memory when emptied, else a new one (`presized`)."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare.reusable and spare.capacity_blocks >= live_blocks:
            spare.empty()
            return spare
        log.info("a new volume for the rebuilt map (%d blocks; the scan waits while it is allocated)", live_blocks)
        return TsdfVolume(presized(self._config, live_blocks))

    def give(self, volume: TsdfVolume) -> None:
        """Keep `volume` (no longer used by anyone) for the next rebuild."""
        with self._lock:
            self._spare = volume

    def memory_bytes(self) -> int:
        with self._lock:
            return 0 if self._spare is None else self._spare.memory_bytes()


def rebuild(keyframes: list[MapKeyframe], poses: np.ndarray, volume: TsdfVolume, mesh_config: MeshConfig,
            pace=lambda: False, mesh_batch_blocks: int = 256) -> RebuiltMap | None:
    """Every keyframe integrated at its pose into the empty `volume`, meshed. `pace()` is called between
    keyframes and between batches of `mesh_batch_blocks` blocks meshed (0: all at once; it may sleep to leave the live loop
    its share of the CPU; meshing a whole room at once is a second of CPU or more); True stops early (None)."""
    vol = volume
    mesher = ChunkMesher(vol, dataclasses.replace(mesh_config, threads=1, max_blocks_per_update=max(0, mesh_batch_blocks),
                                                  min_interval_updates=1))
    out = RebuiltMap(vol, mesher, [], np.zeros((0, 4, 4)))
    if not out.add_many(keyframes, poses, pace):
        mesher.close()
        return None
    return out
