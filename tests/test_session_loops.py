"""Sessions keep the loop closer's state: a saved scan's keyframes and loop edges come back on load and a
continued scan closes a loop against the earlier part; sessions without them (loop closure off, or saved
before they were kept) load as before."""
from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np

from fusion.pipeline import FusionPipeline
from loopclosure.config import LoopClosureConfig
from storage.session import load_session, save_session
from tests.test_loop_closure import _config, drifting_scan  # noqa: F401 (a fixture)

SPLIT = 30        # frames of the first part: about 1.3 m of room 0's loop, which closes near frame 55


def _fuse(pipeline: FusionPipeline, frames) -> list:
    results = [pipeline.process(f) for f in frames]
    assert pipeline.finish_loops(120.0)
    return results


def _save(path, pipeline: FusionPipeline, results) -> None:
    done = [r for r in results if r.T_world_cam is not None]
    save_session(path, pipeline, [r.timestamp_s for r in done], [r.T_world_cam for r in done])


def _without_loops(path, out):
    """The session as a build from before loop keyframes were saved wrote it (no loops/ arrays)."""
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        manifest = json.loads(zin.read("manifest.json"))
        manifest["arrays"] = {k: v for k, v in manifest["arrays"].items() if not k.startswith("loops/")}
        for name in zin.namelist():
            if name != "manifest.json" and not name.startswith("loops/"):
                zout.writestr(name, zin.read(name))
        zout.writestr("manifest.json", json.dumps(manifest))
    return out


def test_a_continued_scan_closes_a_loop_against_the_saved_part(drifting_scan, tmp_path):
    frames, _, _ = drifting_scan
    first = FusionPipeline(_config())
    try:
        results = _fuse(first, frames[:SPLIT])
        assert not first.loops.events and first.loops.stats.keyframes >= 5
        saved = first.loops.to_arrays()
        _save(tmp_path / "a.session", first, results)
    finally:
        first.close()
    loaded = load_session(tmp_path / "a.session").pipeline
    try:
        back = loaded.loops.to_arrays()
        assert back.keys() == saved.keys() and all(np.array_equal(back[k], saved[k]) for k in saved)
        assert loaded.loops.last_frame_index() == int(saved["index"][-1])
        _fuse(loaded, frames[SPLIT:])
        back_to_start = [e for e in loaded.loops.accepted if e.old_frame < SPLIT]
        assert back_to_start, list(loaded.loops.verdicts)[-8:]
        assert loaded.loops.stats.corrections >= 1
        again = loaded.loops.to_arrays()                          # the next save holds the loop edges too
        assert len(again["edge_kids"]) >= 1 and again["kid"][0] == saved["kid"][0]
    finally:
        loaded.close()


def test_sessions_without_loop_keyframes_load_as_before(drifting_scan, tmp_path):
    frames, _, _ = drifting_scan
    plain = FusionPipeline(dataclasses.replace(_config(), loop=LoopClosureConfig()))   # loop closure off
    try:
        results = _fuse(plain, frames[:6])
        _save(tmp_path / "off.session", plain, results)
    finally:
        plain.close()
    with zipfile.ZipFile(tmp_path / "off.session") as zf:
        assert not [n for n in zf.namelist() if n.startswith("loops/")]
    loaded = load_session(tmp_path / "off.session")
    assert loaded.pipeline.loops is None and len(loaded.poses) == 6
    loaded.pipeline.close()

    on = FusionPipeline(_config())
    try:
        _save(tmp_path / "on.session", on, _fuse(on, frames[:6]))
    finally:
        on.close()
    old = load_session(_without_loops(tmp_path / "on.session", tmp_path / "old.session")).pipeline
    try:
        assert old.loops is not None and old.loops.stats.keyframes == 0 and old.loops.last_frame_index() == -1
        _fuse(old, frames[6:10])                                   # scanning goes on, keyframes start anew
        assert old.loops.stats.keyframes >= 1
    finally:
        old.close()


def _run_worker(worker, state: str = "finished", max_steps: int = 10_000) -> list:
    """Step the GUI's fusion worker (in this thread) until it reaches `state`; the events it published."""
    events = []
    for _ in range(max_steps):
        worker.step()
        snap = worker.outbox.take()
        events += list(snap.events) if snap is not None else []
        if worker.state == state and worker.pipeline.loops is not None and not worker.pipeline.loops.correcting:
            return events
    raise AssertionError(f"the worker did not reach {state!r}: {worker.state}")


def test_gui_worker_continues_a_loaded_scan_after_its_frames_and_its_path_follows_a_correction(tmp_path):
    """The GUI's fusion worker (driven by step(), no window): a loaded session continued with a source that
    numbers its frames from 0 again fuses them after the saved ones, so keyframes stay in frame order; a
    correction then moves the loaded camera path too (by the nearest keyframe) and the user is told."""
    from app.fusion_worker import FusionWorker, FusionWorkerConfig
    from app.nets_hookup import NetsConfig, NetsHookup
    from fusion.pipeline import PipelineConfig
    from fusion.volume import VolumeConfig
    from storage.autosave import AutosaveConfig
    from storage.session import capture_session, write_session

    cfg = PipelineConfig(poses="gt", volume=VolumeConfig(voxel_size_m=0.04),
                         loop=LoopClosureConfig(enabled=True, worker_duty=1.0, keyframe_step_m=0.05))
    wcfg = FusionWorkerConfig(autosave=AutosaveConfig(folder=tmp_path / "autosave", interval_s=3600.0))

    def worker():
        return FusionWorker(lambda: None, NetsHookup(NetsConfig(enabled=False)), cfg, wcfg)

    first = worker()
    try:
        first.command("start", "synthetic:3", 8)
        _run_worker(first)
        write_session(tmp_path / "a.session", capture_session(first.pipeline, *first.trajectory()))
    finally:
        first.shutdown()
    second = worker()
    try:
        second.command("load", load_session(tmp_path / "a.session"), "a")
        second.command("start", "synthetic:3", 4)
        _run_worker(second)
        assert second.path.frames[:8] == [-1] * 8 and second.path.frames[8:] == [8, 9, 10, 11]
        index = second.pipeline.loops.to_arrays()["index"]
        assert len(index) > 3 and (np.diff(index) > 0).all()     # the continued part's keyframes come after
        before = second.trajectory()[1]
        shift = np.eye(4)
        shift[:3, 3] = (0.1, 0.0, 0.0)
        loops = second.pipeline.loops
        assert loops.offer(np.array([shift @ T for T in loops.keyframe_poses()]))
        events = _run_worker(second)
        assert [e.text for e in events if e.text.startswith("loop closed")] == \
            ["loop closed: map corrected (moved up to 10.0 cm)"]
        after = second.trajectory()[1]
        assert np.allclose(after[:, :3, 3] - before[:, :3, 3], (0.1, 0.0, 0.0), atol=1e-6)
    finally:
        second.shutdown()
