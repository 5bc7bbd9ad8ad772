"""Map rebuild from keyframes: meshed in paced batches it is the same map as meshed at once; a stop during
meshing abandons it; the worker's pacer says when to stop; a worker slower than the scan hands its map over
without chasing every new keyframe; a rebuild reuses the memory of the map it replaced."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np

from fusion.meshing import ChunkMesher, MeshConfig
from fusion.sources.synthetic import SyntheticSource
from fusion.volume import TsdfVolume, VolumeConfig
from loopclosure.closer import LoopCloser
from loopclosure.config import LoopClosureConfig
from loopclosure.detect import MapKeyframe
from loopclosure.pacing import WorkerPacer
from loopclosure.rebuild import SpareVolume, presized, rebuild

VOLUME = VolumeConfig(voxel_size_m=0.02, initial_blocks=500)


def _keyframes(n: int = 6):
    src = SyntheticSource(0, n_frames=60)
    kfs, poses = [], []
    for kid, i in enumerate(range(0, 60, 60 // n)):
        f = src.frame(i)
        depth_mm = np.round(f.depth_m * 1000).astype(np.uint16)
        kfs.append(MapKeyframe(kid, f.index, f.timestamp_s, f.color, depth_mm, f.intrinsics))
        poses.append(src.poses[i])
    return kfs, np.array(poses)


def _sorted_vertices(mesher) -> np.ndarray:
    v = mesher.full_mesh().positions_m
    return v[np.lexsort(v.T[::-1])]


def test_batched_meshing_gives_the_map_meshed_at_once():
    kfs, poses = _keyframes()
    calls = []
    batched = rebuild(kfs, poses, TsdfVolume(VOLUME), MeshConfig(), pace=lambda: calls.append(1) and False, mesh_batch_blocks=16)
    whole = rebuild(kfs, poses, TsdfVolume(VOLUME), MeshConfig(), mesh_batch_blocks=0)
    try:
        assert batched.kids == whole.kids == [k.kid for k in kfs]
        assert len(calls) > len(kfs) + 1          # paced between keyframes and between mesh batches
        a, b = _sorted_vertices(batched.mesher), _sorted_vertices(whole.mesher)
        assert len(a) > 1000 and a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-6)
    finally:
        batched.mesher.close()
        whole.mesher.close()


def test_stop_while_meshing_abandons_the_rebuild():
    kfs, poses = _keyframes(3)
    calls = []

    def pace():  # stops at the second mesh batch
        calls.append(1)
        return len(calls) > len(kfs) + 1

    assert rebuild(kfs, poses, TsdfVolume(VOLUME), MeshConfig(), pace=pace, mesh_batch_blocks=8) is None
    assert len(calls) == len(kfs) + 2


def test_pacer_reports_a_stop():
    stop = threading.Event()
    pace = WorkerPacer(1.0, stop)
    assert pace() is False
    stop.set()
    assert pace() is True
    assert WorkerPacer(0.25, stop)() is True   # a set stop ends its sleep at once


def test_a_held_pacer_waits_until_released():
    stop, hold, passed = threading.Event(), threading.Event(), threading.Event()
    hold.set()
    pace = WorkerPacer(1.0, stop, hold)
    worker = threading.Thread(target=lambda: pace() or passed.set())
    worker.start()
    assert not passed.wait(0.2)                 # held: it has not returned (a bound on a wait, not a timing)
    hold.clear()
    assert passed.wait(30)
    worker.join()
    hold.set()
    stop.set()
    assert pace() is True                       # a stop ends a hold at once


def test_catching_up_stops_chasing_a_scan_faster_than_the_worker():
    """A scan that takes a keyframe at every pause of the worker is never caught up at its pace: once a round left
    no fewer keyframes than the one before, one round runs unpaced and catching up ends with the few the scan took
    during it left over; keyframes taken meanwhile join at their corrected poses. A moved world ends it (stale)."""
    kfs, poses = _keyframes(4)
    built = rebuild(kfs[:2], poses[:2], TsdfVolume(VOLUME), MeshConfig(), mesh_batch_blocks=0)
    held, C = list(zip(kfs, poses)), np.eye(4)
    C[:3, 3] = 0.05
    paces = []

    def pace():   # each pause, the scan takes one more keyframe (a copy of the last, a new id), 60 at most
        paces.append(1)
        if len(held) < 60:
            held.append((dataclasses.replace(kfs[-1], kid=len(held)), poses[-1]))
        return False

    new_by_kid = {}
    try:
        assert built.catch_up(lambda: tuple(zip(*held)), new_by_kid, C, 1, pace, lambda: False)
        assert len(paces) == 2       # a paced round took 2 keyframes while the scan took 2: no fewer left ...
        assert built.kids == [k.kid for k, _ in held]             # ... so an unpaced round took every one so far
        assert np.allclose(new_by_kid[held[-1][0].kid], C @ poses[-1])
        assert not built.catch_up(lambda: None, {}, C, 1, pace, lambda: False)
    finally:
        built.mesher.close()


def test_a_worker_slower_than_the_scan_hands_its_map_over():
    """The scan adds a keyframe each time the worker pauses, so paced catching up never ends: once a round left no
    fewer keyframes than the one before, one more round runs unpaced and the map is handed over; the fusion
    thread's apply_ready adds the keyframes taken after that, and the live mesher that adopts the map meshes
    them over its next updates (not in the swap): then it holds the map's whole mesh."""
    kfs, poses = _keyframes(4)
    lc = LoopCloser(LoopClosureConfig(enabled=True, handover_keyframes=1), VOLUME, MeshConfig())
    for kf, T in zip(kfs, poses):
        lc._store.add(kf, T)
    added = []

    def pace():  # the scan goes on: one more keyframe (a copy of the last, a new id) per pause
        if len(added) < 200:
            added.append(dataclasses.replace(kfs[-1], kid=len(kfs) + len(added)))
            with lc._lock:
                lc._store.add(added[-1], poses[-1])
        return False

    info = dict(max_shift_m=0.0, loops=0, optimise_s=0.0)
    assert lc._hand_over(kfs, poses, poses, 0, info, pace=pace)
    built = lc._ready[0]
    assert len(added) < 40                                 # handed over while the scan still went on
    assert built.kids == [k.kid for k in lc._store.kfs]    # the unpaced round took every keyframe so far
    pace()                                                 # one more before the fusion thread swaps the map in
    got, event = lc.apply_ready(frame_index=100)
    live, whole = ChunkMesher(got.volume, MeshConfig()), ChunkMesher(got.volume, MeshConfig())
    try:
        assert got is built and got.kids == [k.kid for k in lc._store.kfs]
        assert len(event.corrections) == len(lc._store.kfs)
        queued = got.mesher.pending_blocks
        assert queued > 0                                  # the late keyframe is integrated, not meshed yet
        live.adopt(got.mesher)
        assert live.pending_blocks == queued
        while live.pending_blocks:
            live.update(np.zeros((0, 3), np.int32))
        whole.update(got.volume.active_keys())
        whole.flush()
        a, b = _sorted_vertices(live), _sorted_vertices(whole)
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-6)
    finally:
        for m in (got.mesher, live, whole):
            m.close()


def test_a_rebuild_reuses_the_map_it_replaced():
    """Open3D holds the GIL while it allocates a grid (seconds for a room at 1 cm: the live loop stalls): a rebuild
    goes into the spare volume, allocated before the scan, and the map a correction replaced becomes the next
    spare. Emptied and rebuilt, it is the same map as a fresh volume's (no value left from the blocks it held);
    too small for the live map, a new one is sized for it (`presized`, never above the cap)."""
    assert presized(VOLUME, 1000).initial_blocks == 1250
    assert presized(VOLUME, 100).initial_blocks == VOLUME.initial_blocks
    assert presized(dataclasses.replace(VOLUME, max_blocks=900), 1000).initial_blocks == 900
    kfs, poses = _keyframes(3)
    moved = poses.copy()
    moved[:, :3, 3] += 0.3                                       # other blocks, and some of the same ones
    spare = SpareVolume(VOLUME)
    volume = spare.take(live_blocks=100)
    grid = volume.grid
    first = rebuild(kfs, moved, volume, MeshConfig())
    spare.give(first.volume)
    reused = spare.take(live_blocks=first.volume.n_blocks)
    again = rebuild(kfs, poses, reused, MeshConfig())
    fresh = rebuild(kfs, poses, TsdfVolume(VOLUME), MeshConfig())
    try:
        assert reused.grid is grid and spare.memory_bytes() == 0
        np.testing.assert_array_equal(np.sort(again.volume.active_keys(), 0), np.sort(fresh.volume.active_keys(), 0))
        a, b = _sorted_vertices(again.mesher), _sorted_vertices(fresh.mesher)
        assert len(a) > 1000 and a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-6)
        spare.give(again.volume)
        bigger = spare.take(live_blocks=4 * VOLUME.initial_blocks)
        assert bigger.grid is not grid and bigger.capacity_blocks == 5 * VOLUME.initial_blocks
    finally:
        for m in (first.mesher, again.mesher, fresh.mesher):
            m.close()
