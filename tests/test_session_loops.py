"""Sessions keep the loop closer's state: a saved scan's keyframes and loop edges come back on load and a
continued scan closes a loop against the earlier part; sessions without them (loop closure off, or saved
before they were kept) load as before."""
from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np

from fusion.loop_closure import LoopClosureConfig
from fusion.pipeline import FusionPipeline
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
