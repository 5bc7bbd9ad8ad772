"""Incremental labeling: snapshot requests, scheduling, consistency with a final pass, no lost or stale
work, thread hygiene, and `reconstruct --labels` outputs (with the untrained model: plumbing only)."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from fusion.coarse import CoarseGridConfig, all_chunk_keys, coarse_region
from fusion.dirty import chunk_keys_of_blocks
from fusion.pipeline import FusionPipeline, PipelineConfig
from storage.plyio import read_labeled_ply
from storage.session import load_session
from fusion.sources.synthetic import SyntheticConfig, SyntheticSource
from synth.render import RenderConfig
from fusion.volume import VolumeConfig
from nets.incremental import IncrementalLabeler, LabelerConfig
from nets.infer import ChunkModel
from nets.labels import CLASS_IDS, has_label_arrays
from nets.scheduler import ChunkScheduler, SchedulerConfig

GRID = CoarseGridConfig()


@pytest.fixture(scope="module")
def frames():
    """40 frames of a synthetic room at 160x120, every 5th of a 200-frame path (covers several chunks)."""
    cfg = SyntheticConfig(render=RenderConfig(intrinsics=RenderConfig().intrinsics.scaled(0.25)))
    src = SyntheticSource(3, n_frames=200, config=cfg)
    return [src.frame(i) for i in range(0, 200, 5)]


@pytest.fixture(scope="module")
def model():
    return ChunkModel.untrained(seed=0)


@pytest.fixture(scope="module")
def confident_model():
    """An untrained net whose class probabilities are peaked (above the label store's confidence floor)."""
    m = ChunkModel.untrained(seed=0)
    with torch.no_grad():
        m.net.sem.weight.mul_(50.0)
    return m


def make_pipeline(**kw) -> FusionPipeline:
    return FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu"), poses="gt", **kw))


@pytest.fixture()
def pipeline():
    p = make_pipeline()
    yield p
    p.close()


class Recording:
    """Wraps a model: records the chunk keys of every prediction; optional hook inside predict."""

    def __init__(self, model, during=None):
        self.model, self.grid, self.during = model, model.grid, during
        self.calls: list[tuple] = []

    def predict(self, region):
        self.calls.append(region.keys)
        if self.during is not None:
            self.during(region)
        return self.model.predict(region)

    def count(self, key) -> int:
        return sum(key in keys for keys in self.calls)



def serve_until(pipeline, done, deadline: float) -> bool:
    """Serve the pipeline's snapshot requests (as the fusion thread does) until done() or the deadline."""
    while not done() and time.monotonic() < deadline:
        pipeline.serve_requests()
        time.sleep(0.01)
    return done()


def test_class_order_matches_the_model():
    import nets.infer

    assert np.array_equal(np.asarray(nets.infer.CLASS_IDS), CLASS_IDS)


def test_snapshot_requests_served_at_the_end_of_process(frames):
    pipeline = make_pipeline(snapshot_budget_ms=1e4)
    try:
        _check_requests(frames, pipeline)
    finally:
        pipeline.close()


def _check_requests(frames, pipeline):
    pipeline.process(frames[0])
    keys = sorted(pipeline.dirty.take("semantics"))
    assert len(keys) >= 2
    pipeline.request_regions([[k] for k in keys[:3]], GRID, tag=7)
    res = pipeline.process(frames[1])
    assert "snapshot" in res.timings_ms
    snaps = pipeline.take_snapshots()
    assert len(snaps) == 1  # snapshot_regions_per_frame
    s = snaps[0]
    assert s.request.tag == 7 and s.request.keys == (keys[0],) and s.frames_integrated == 2
    assert s.frame_index == frames[1].index and s.region.keys == (keys[0],) and s.region.core.any()
    assert pipeline.serve_requests() == min(2, len(keys) - 1)
    assert pipeline.pending_requests() == 0 and len(pipeline.take_snapshots(timeout_s=0.01)) == min(2, len(keys) - 1)
    pipeline.request_regions([[keys[0]]], GRID, tag=8)
    pipeline.request_regions([[keys[0]]], GRID, tag=9)
    assert pipeline.cancel_requests(8) == 1 and pipeline.pending_requests() == 1
    keys2, stamps = pipeline.take_dirty(("semantics",), 1)
    assert [s.count for s in stamps] == [2] and keys2


def test_big_regions_are_served_over_several_frames_within_the_budget(frames):
    pipeline = make_pipeline(snapshot_budget_ms=1e-3, snapshot_budget_share=0.0)  # one chunk of work per frame
    try:
        pipeline.process(frames[0])
        present = set(all_chunk_keys(pipeline.volume, GRID))

        def neighbours(k) -> int:
            return sum((k[0] + a, k[1] + b, k[2] + c) in present for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1))

        keys = [max(sorted(present), key=neighbours)]  # the chunk whose halo holds the most chunks to summarise
        pipeline.request_regions([keys], GRID)
        n = 1
        while not (snaps := pipeline.take_snapshots()):
            pipeline.process(frames[n])
            n += 1
        assert n > 5  # took several frames
        snap = snaps[0]
        assert 1 <= snap.frames_integrated <= n and snap.serve_ms > 0
        ref = coarse_region(pipeline.volume, keys, GRID)  # chunks touched since their entry was computed
        assert len(snap.region) > 0.5 * len(ref) and snap.region.keys == ref.keys  # ...are a few frames old
    finally:
        pipeline.close()


def test_served_regions_equal_coarse_region_of_the_volume(frames, pipeline):
    """Served regions come from per-chunk caches (only touched chunks recomputed): same sites as
    `coarse_region` on the current volume, also after later frames changed some chunks."""
    for f in frames[:6]:
        pipeline.process(f)
    keys = sorted(all_chunk_keys(pipeline.volume, GRID))
    groups = [keys[:1], keys[1:3], [keys[0], keys[-1]]]
    for round_ in range(2):
        pipeline.request_regions(groups, GRID)
        pipeline.serve_requests()
        for snap, group in zip(pipeline.take_snapshots(), groups):
            ref = coarse_region(pipeline.volume, group, GRID)
            assert np.array_equal(snap.region.coords, ref.coords) and np.array_equal(snap.region.core, ref.core)
            assert np.allclose(snap.region.features, ref.features) and snap.region.keys == ref.keys
        for f in frames[6 + 3 * round_:9 + 3 * round_]:
            pipeline.process(f)


def test_scheduler_settles_orders_and_groups():
    cfg = SchedulerConfig(settle_s=0.2, max_wait_s=1.2, max_group_extent_chunks=2)
    s = ChunkScheduler(1.6, cfg)
    s.add([(0, 0, 0), (1, 0, 0), (5, 0, 0)], since_s=0.0, last_s=0.0, count=1)
    s.add([(5, 0, 0)], since_s=0.05, last_s=0.9, count=2)  # (5,0,0) is still being scanned
    groups = s.next_groups(now_s=1.0, camera_m=np.zeros(3), limit=10)
    assert groups == [((0, 0, 0), (1, 0, 0))]       # neighbours share one region; (5,0,0) waits
    assert s.next_groups(now_s=1.21, camera_m=np.zeros(3), limit=10) == [((5, 0, 0),)]  # waited max_wait_s
    assert s.done([(0, 0, 0), (1, 0, 0)], snapshot_count=1, now_s=1.5) == [1.5, 1.5]
    s.add([(9, 0, 0), (2, 0, 0)], since_s=2.0, last_s=2.0, count=3)
    near_first = s.next_groups(now_s=3.0, camera_m=np.array([16.0, 0, 0]), limit=1)
    assert near_first == [((9, 0, 0),)]             # nearest the camera first
    # a mark that arrives while in flight: inferred again unless the snapshot already held it
    s.add([(9, 0, 0)], since_s=3.1, last_s=3.1, count=4)
    s.done([(9, 0, 0)], snapshot_count=3, now_s=3.5)
    assert (9, 0, 0) in s.pending
    s.next_groups(now_s=4.0, camera_m=None, limit=5)
    s.add([(9, 0, 0)], since_s=4.1, last_s=4.1, count=5)
    s.done([(9, 0, 0)], snapshot_count=5, now_s=4.5)
    assert (9, 0, 0) not in s.pending
    assert s.halo_stale(now_s=100.0) == [(1, 0, 0)]  # its neighbour (2,0,0) changed after its snapshot


def step_through(frames, labeler, pipeline, every: int = 1):
    for i, f in enumerate(frames):
        pipeline.process(f)
        if i % every == 0:
            labeler.step()


def shipped_or_skip():
    from nets.infer import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"no shipped weights at {DEFAULT_WEIGHTS}")
    return ChunkModel.load()


@pytest.mark.parametrize("weights", ["untrained", "shipped"])
def test_incremental_labels_match_a_final_pass(frames, model, weights):
    model = model if weights == "untrained" else shipped_or_skip()
    p_inc, p_fin = make_pipeline(), make_pipeline()
    try:
        inc = IncrementalLabeler(p_inc, model)
        step_through(frames, inc, p_inc, every=2)
        inc.drain()
        fin = IncrementalLabeler(p_fin, model)
        for f in frames:
            p_fin.process(f)
        fin.drain()
        cells, final = fin.labels.cells()
        got, _ = inc.labels.labels_of_cells(cells)
        assert len(cells) > 2000 and np.all(final > 0)
        agree = float(np.mean(got == final))
        assert agree >= 0.99, agree
        assert len(inc.labels) == len(fin.labels)
        s_inc, s_fin = inc.stats(), fin.stats()
        assert s_inc["chunks_inferred"] > s_fin["chunks_inferred"] > 0 and s_inc["queue"] == 0
        assert s_inc["latency_p95_s"] is not None and s_inc["latency_samples"] > 0
        mesh = inc.completion.mesh()
        assert len(mesh.labels) == len(mesh.mesh.positions_m)
    finally:
        p_inc.close()
        p_fin.close()


def test_a_final_pass_after_live_labels_gives_the_final_labels(frames, confident_model):
    """final_pass(4) after live labeling labels the scene as `reconstruct --labels final` does (a fresh
    labeler with the four-turn model, one pass over the same volume), corrections kept; the live worker
    resumes with its one-pass model and finds nothing left to do."""
    pipeline = make_pipeline()
    try:
        live = IncrementalLabeler(pipeline, confident_model)
        step_through(frames[:16], live, pipeline, every=2)
        cell = live.labels.cells()[0][:1]
        live.labels.apply(live.labels.correct(cell, 7))
        pipeline.process(frames[16])  # a change not labelled yet
        live.start()
        assert live.final_pass(4) > 0 and live.running and live.model is confident_model
        stats = live.stats()
        assert stats["queue"] == 0 and stats["latency_samples"] > 0
        fresh = IncrementalLabeler(pipeline, confident_model.with_turns(4))
        fresh.scheduler.requeue(sorted(all_chunk_keys(pipeline.volume, GRID)), time.monotonic(), 0)
        fresh.step()
        cells, final = fresh.labels.cells()
        got, _ = live.labels.labels_of_cells(cells)
        single = IncrementalLabeler(pipeline, confident_model)
        single.scheduler.requeue(sorted(all_chunk_keys(pipeline.volume, GRID)), time.monotonic(), 0)
        single.step()
        one_pass, _ = single.labels.labels_of_cells(cells)
        corrected = np.all(cells == cell[0], axis=1)
        assert len(cells) > 1000 and np.all(got[corrected] == 7)
        assert np.mean(got[~corrected] == final[~corrected]) >= 0.99
        assert np.mean(one_pass == final) < 0.95  # the four turns do change the labels
    finally:
        live.stop()
        live.join(5.0)
        pipeline.close()


def test_chunk_changed_during_inference_is_inferred_again(frames, model, pipeline):
    pipeline.process(frames[0])
    todo = iter(frames[1:3])
    fused_during = set()

    def integrate_meanwhile(region):  # the fusion thread integrates while this region is inferred
        f = next(todo, None)
        if f is not None:
            pipeline.process(f)
            touched = chunk_keys_of_blocks(pipeline.volume.last_blocks, pipeline.config.volume.block_size_m,
                                           GRID.chunk_size_m)
            fused_during.update(set(region.keys) & touched)

    rec = Recording(model, integrate_meanwhile)
    labeler = IncrementalLabeler(pipeline, rec)
    labeler.step()
    assert fused_during
    for key in fused_during:
        assert rec.count(key) >= 2, key
    assert labeler.stats()["queue"] == 0


def test_threaded_worker_reinfers_a_chunk_changed_meanwhile(frames, model, pipeline):
    entered, release = threading.Event(), threading.Event()

    def block(region):
        if len(rec.calls) == 1:
            entered.set()
            release.wait(5.0)

    rec = Recording(model, block)
    labeler = IncrementalLabeler(pipeline, rec)
    pipeline.process(frames[0])
    labeler.start()
    try:
        deadline = time.monotonic() + 10
        assert serve_until(pipeline, entered.is_set, deadline)
        first = rec.calls[0]
        pipeline.process(frames[1])            # changes chunks while the first region is inferred
        release.set()
        while time.monotonic() < deadline and not all(rec.count(k) >= 2 for k in first):
            pipeline.serve_requests()
            time.sleep(0.01)
        assert all(rec.count(k) >= 2 for k in first), (first, rec.calls)
    finally:
        release.set()
        labeler.stop()
        assert labeler.join(5.0)


@pytest.mark.parametrize("prefetch", [True, False])
def test_the_next_region_is_requested_while_one_is_inferred(frames, model, pipeline, prefetch):
    """When fusion serves the snapshots, with prefetch the worker asks for the next ready region before it
    infers the one it got, so fusion serves it meanwhile; without, it asks only after the inference."""
    entered, release, outstanding = threading.Event(), threading.Event(), []

    def block(region):
        if len(rec.calls) == 1:
            outstanding.append(len(labeler._requested))  # the worker's own requests not yet served
            entered.set()
            release.wait(10.0)

    rec = Recording(model, block)
    one_chunk_groups = SchedulerConfig(settle_s=0.0, max_wait_s=0.0, max_group_extent_chunks=1, ride_along=False)
    labeler = IncrementalLabeler(pipeline, rec, config=LabelerConfig(prefetch=prefetch, serve_in_worker=False,
                                                                     scheduler=one_chunk_groups))
    pipeline.process(frames[0])
    assert len(all_chunk_keys(pipeline.volume, GRID)) >= 2
    labeler.start()
    try:
        assert serve_until(pipeline, entered.is_set, time.monotonic() + 20)
        assert outstanding == [1 if prefetch else 0]
        release.set()
        assert serve_until(pipeline, lambda: len(set(rec.calls)) >= 2, time.monotonic() + 20)
    finally:
        release.set()
        labeler.stop()
        assert labeler.join(5.0)


def test_the_worker_serves_its_own_snapshots_while_fusion_runs(frames, model, pipeline):
    """By default the worker serves its own requests between integrations: fusion fuses frames and never
    serves one (nothing is left pending for it), and every chunk it fused gets labelled."""
    labeler = IncrementalLabeler(pipeline, model, config=LabelerConfig(
        scheduler=SchedulerConfig(settle_s=0.0, max_wait_s=0.0)))
    labeler.start()
    try:
        results = []
        for frame in frames[:12]:
            results.append(pipeline.process(frame))
            assert pipeline.pending_requests() == 0
        keys = all_chunk_keys(pipeline.volume, GRID)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (keys <= labeler.labels.chunk_keys() and labeler.stats()["queue"] == 0):
            time.sleep(0.02)
        assert keys <= labeler.labels.chunk_keys()
        assert not any("snapshot" in r.timings_ms for r in results)
        assert labeler.stats()["regions_inferred"] > 0 and labeler.error is None
    finally:
        labeler.stop()
        assert labeler.join(10.0)
    s = labeler.stats()  # the worker's own CPU time, within its wall time: the share of a core it took
    assert 0 < s["worker_cpu_s"] <= s["worker_wall_s"] + 0.05 and 0 < s["worker_busy_share"] <= 1.05


def test_live_regions_carry_a_shorter_halo_than_the_drain(frames, model, pipeline):
    """Live requests carry `live_halo_cells` of context; step/drain (and the final pass) the model's full
    receptive field; both are assembled from the same cached chunk summaries."""
    regions = []
    rec = Recording(model, regions.append)
    one_chunk = SchedulerConfig(settle_s=0.0, max_wait_s=0.0, max_group_extent_chunks=1, ride_along=False)
    labeler = IncrementalLabeler(pipeline, rec, config=LabelerConfig(live_halo_cells=8, scheduler=one_chunk))
    pipeline.process(frames[0])
    labeler.start()
    try:
        assert serve_until(pipeline, lambda: len(regions) >= 3, time.monotonic() + 30)
    finally:
        labeler.stop()
        assert labeler.join(5.0)
    live = list(regions)
    pipeline.process(frames[1])
    labeler.drain()
    drained = regions[len(live):]

    def reach(region) -> int:  # farthest a site lies outside the region's chunks, in cells
        n = GRID.chunk_voxels
        lo, hi = np.asarray(region.keys).min(0) * n, (np.asarray(region.keys).max(0) + 1) * n
        return int(np.max(np.maximum(lo - region.coords, region.coords - (hi - 1)).clip(0)))

    assert drained and all(r.grid.halo_voxels == 8 for r in live)
    assert all(r.grid.halo_voxels == model.grid.halo_voxels for r in drained)
    assert 0 < max(map(reach, live)) <= 8 < max(map(reach, drained)) <= model.grid.halo_voxels


def test_start_stop_reset_100_times_leaves_no_thread_and_no_stale_result(frames, model, pipeline):
    labeler = IncrementalLabeler(pipeline, model)
    pipeline.process(frames[0])
    for i in range(100):
        labeler.start()
        if i % 10 == 0:
            pipeline.serve_requests()
        labeler.reset()
        labeler.stop()
        assert labeler.join(5.0)
    assert not any(t.name == "nets-labeler" for t in threading.enumerate())
    # a result inferred across a reset is dropped, never fused
    entered, release = threading.Event(), threading.Event()

    def block(region):
        entered.set()
        release.wait(5.0)

    labeler = IncrementalLabeler(pipeline, Recording(model, block))
    pipeline.process(frames[1])
    labeler.start()
    try:
        deadline = time.monotonic() + 10
        assert serve_until(pipeline, entered.is_set, deadline)
        labeler.reset()
        release.set()
        while labeler.stats()["stale_results_dropped"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        release.set()
        labeler.stop()
        assert labeler.join(5.0)
    assert labeler.stats()["stale_results_dropped"] == 1
    assert len(labeler.labels) == 0 and labeler.completion.n_sites() == 0


def test_step_refuses_while_the_worker_runs(model, pipeline):
    labeler = IncrementalLabeler(pipeline, model)
    labeler.start()
    try:
        with pytest.raises(RuntimeError):
            labeler.step()
    finally:
        labeler.stop()
        assert labeler.join(5.0)


@pytest.mark.parametrize("mode", ["final", "incremental"])
def test_reconstruct_writes_labels_completion_and_session(tmp_path, confident_model, mode):
    import main
    from fusion.reconstruct import ReconstructRequest, reconstruct
    from nets.reconstruct_labels import label_hook_factory
    from tests.fixtures_rgbd import write_sevenscenes
    from tests.scenes import SMALL, orbit

    ds = write_sevenscenes(tmp_path / "seq", orbit(10, SMALL, step_deg=3.0))
    cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu"))
    out = tmp_path / "out"
    stats = reconstruct(ReconstructRequest(str(ds), out, cfg, labels=mode, progress=False,
                                           label_hook=label_hook_factory(mode, confident_model)))
    mesh = read_labeled_ply(out / "mesh.ply")
    # the final pass averages four quarter turns; this untrained net's turns disagree, so fewer of its
    # averaged labels clear the confidence floor than of its single-pass ones
    labeled_share = {"incremental": 0.95, "final": 0.85}[mode]
    assert np.mean(mesh["labels"] > 0) > labeled_share
    assert set(np.unique(mesh["labels"])) <= set(CLASS_IDS.tolist()) | {0}
    assert (out / "completed.ply").is_file()
    saved = json.loads((out / "stats.json").read_text())
    assert saved["labels"] == mode == stats["labels"]
    work = saved["label_work"]
    assert work["chunks_inferred"] > 0 and work["sites_inferred_per_frame"] > 0
    if mode == "incremental":
        assert set(saved["label_latency_s"]) == {"p50", "p95"}
    s = load_session(out / "session")
    s.pipeline.close()
    assert has_label_arrays(s.extras)
    assert main.main(["export", str(out / "session"), "--out", str(tmp_path / "x.ply")]) == 0
    exported = read_labeled_ply(tmp_path / "x.ply")
    assert np.array_equal(exported["labels"], mesh["labels"])


def test_skipped_chunks_are_inferred_in_the_drain():
    s = ChunkScheduler(1.6, SchedulerConfig())
    s.add([(0, 0, 0)], since_s=0.0, last_s=0.0, count=1)
    s.next_groups(now_s=5.0, camera_m=None, limit=1)
    s.done([(0, 0, 0)], snapshot_count=1, now_s=5.1)
    s.add([(0, 0, 0)], since_s=6.0, last_s=6.0, count=2)
    s.next_groups(now_s=7.0, camera_m=None, limit=1)
    assert s.done([(0, 0, 0)], snapshot_count=2, now_s=7.1, inferred=False) == [pytest.approx(1.1)]
    assert s.halo_stale(now_s=7.2, force=True) == [(0, 0, 0)] and s.inferred_at[(0, 0, 0)] == 1


def test_input_memory_measures_how_much_a_chunk_changed():
    from fusion.coarse import CoarseRegion
    from nets.scheduler import InputMemory

    coords = np.array([[1, 1, 1], [2, 1, 1], [3, 1, 1], [40, 1, 1]], np.int32)
    feats = np.zeros((4, 7), np.float32)
    core = np.array([True, True, True, False])
    region = CoarseRegion(((0, 0, 0),), coords, feats, core, GRID)
    memory = InputMemory(32)
    assert memory.change(region, (0, 0, 0)) == float("inf")
    memory.remember(region)
    assert memory.change(region, (0, 0, 0)) == 0.0
    moved = CoarseRegion(((0, 0, 0),), coords, feats + np.float32(0.01), core, GRID)
    assert memory.change(moved, (0, 0, 0)) == pytest.approx(0.01)
    grown = CoarseRegion(((0, 0, 0),), np.concatenate([coords, [[4, 1, 1]]]).astype(np.int32),
                         np.zeros((5, 7), np.float32), np.append(core, True), GRID)
    assert memory.change(grown, (0, 0, 0)) == pytest.approx(1 / 3)


@pytest.mark.parametrize("ride_along", [True, False])
def test_pending_neighbours_ride_along_with_a_ready_chunk(ride_along):
    s = ChunkScheduler(1.6, SchedulerConfig(settle_s=0.2, max_wait_s=1.0, ride_along=ride_along))
    s.add([(0, 0, 0)], since_s=0.0, last_s=0.0, count=1)
    s.add([(1, 0, 0)], since_s=0.9, last_s=0.95, count=2)  # still changing: not ready by itself
    groups = s.next_groups(now_s=1.0, camera_m=None, limit=1)
    assert groups == ([((0, 0, 0), (1, 0, 0))] if ride_along else [((0, 0, 0),)])
    assert s.next_groups(now_s=1.01, camera_m=None, limit=1) == []  # nothing ready
