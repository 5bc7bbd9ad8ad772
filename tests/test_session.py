"""Sessions: save -> load round trip, scanning on after a load, refusal of corrupt/newer files, atomic saves."""
from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest

import storage.session as session_mod
from fusion.errors import UserError
from fusion.pipeline import FusionPipeline, PipelineConfig
from storage.session import FORMAT_VERSION, load_session, save_session
from fusion.volume import VolumeConfig
from tests.scenes import SMALL, orbit

N_FIRST = 10


@pytest.fixture(scope="module")
def frames():
    return orbit(N_FIRST + 6, SMALL, step_deg=2.0)


@pytest.fixture()
def fused(frames):
    p = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu")))
    res = [p.process(f, T_start=f.T_world_cam_gt) for f in frames[:N_FIRST]]
    yield p, [r.timestamp_s for r in res], [r.T_world_cam for r in res]
    p.close()


def _sorted_voxels(volume):
    keys = volume.active_keys()
    order = np.lexsort(keys.T[::-1])
    return keys[order], volume.voxel_arrays(volume.lookup(keys[order]))


def _canonical_faces(faces):
    f = np.asarray(faces)
    start = np.argmin(f, 1)[:, None]
    rolled = np.take_along_axis(f, (start + np.arange(3)) % 3, 1)  # same cyclic order, smallest index first
    return rolled[np.lexsort(rolled.T[::-1])]


def test_round_trip_voxels_mesh_trajectory(fused, tmp_path):
    p, stamps, poses = fused
    mesh = p.final_mesh()
    path = tmp_path / "scan.session"
    size = save_session(path, p, stamps, poses, {"kind": "test"}, {"note": "x"}, {"labels": np.arange(5)})
    assert size == path.stat().st_size > 0
    s = load_session(path)
    try:
        (k1, a1), (k2, a2) = _sorted_voxels(p.volume), _sorted_voxels(s.pipeline.volume)
        assert np.array_equal(k1, k2) and len(k1) == p.volume.n_blocks
        for x, y in zip(a1, a2):
            assert np.array_equal(x, y)
        m2 = s.pipeline.final_mesh()
        assert np.array_equal(mesh.positions_m, m2.positions_m) and np.array_equal(mesh.colors, m2.colors)
        assert np.array_equal(_canonical_faces(mesh.faces), _canonical_faces(m2.faces))
        assert np.array_equal(s.timestamps_s, stamps) and np.array_equal(s.poses, np.array(poses))
        assert s.source == {"kind": "test"} and s.settings == {"note": "x"}
        assert np.array_equal(s.extras["labels"], np.arange(5))
        assert s.manifest["format_version"] == FORMAT_VERSION
        assert s.pipeline.config == p.config
        assert s.pipeline.last_timestamp_s == p.last_timestamp_s
        assert np.allclose(s.pipeline.tracker._motion.last_good, p.tracker._motion.last_good)
        assert s.pipeline.tracker.state.value == "lost"  # the next frame relocalises, whatever its source
        saved, loaded = p.tracker.relocaliser.keyframes, s.pipeline.tracker.relocaliser.keyframes
        assert len(loaded) == len(saved) and all(
            np.array_equal(a.descriptors, b.descriptors) and np.array_equal(a.points_world_m, b.points_world_m)
            and np.array_equal(a.T_world_cam, b.T_world_cam) for a, b in zip(saved, loaded))
        assert s.pipeline.dirty.take("mesh")  # everything was re-meshed and marked
    finally:
        s.pipeline.close()


def test_scanning_continues_after_load(fused, frames, tmp_path):
    p, stamps, poses = fused
    save_session(tmp_path / "s.session", p, stamps, poses)
    s = load_session(tmp_path / "s.session")
    try:
        n0 = s.pipeline.volume.frames_integrated
        for f in frames[N_FIRST:]:
            r = s.pipeline.process(f)
            assert r.integrated and r.state == "ok", r.reason
            err_m = np.linalg.norm(r.T_world_cam[:3, 3] - f.T_world_cam_gt[:3, 3])
            assert err_m < 0.005, err_m
        assert s.pipeline.volume.frames_integrated == n0 + len(frames) - N_FIRST
    finally:
        s.pipeline.close()


def _assert_refused(path, *words):
    with pytest.raises(UserError) as ei:
        load_session(path)
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_truncated_and_corrupted_sessions_are_refused(fused, tmp_path):
    p, stamps, poses = fused
    good = tmp_path / "good.session"
    save_session(good, p, stamps, poses)
    data = good.read_bytes()
    (tmp_path / "cut.session").write_bytes(data[: len(data) // 2])
    _assert_refused(tmp_path / "cut.session", "corrupted")
    flipped = bytearray(data)
    for i in range(len(data) // 4, len(data) // 4 + 64):
        flipped[i] ^= 0xFF
    (tmp_path / "flip.session").write_bytes(bytes(flipped))
    _assert_refused(tmp_path / "flip.session", "corrupted")
    (tmp_path / "text.session").write_text("hello")
    _assert_refused(tmp_path / "text.session")
    _assert_refused(tmp_path / "missing.session", "no such session")


def _rewrite_manifest(src, dst, **changes):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "manifest.json":
                data = json.dumps(json.loads(data) | changes).encode()
            zout.writestr(item, data)


def test_newer_format_version_and_other_apps_are_refused(fused, tmp_path):
    p, stamps, poses = fused
    save_session(tmp_path / "a.session", p, stamps, poses)
    _rewrite_manifest(tmp_path / "a.session", tmp_path / "new.session", format_version=FORMAT_VERSION + 1)
    _assert_refused(tmp_path / "new.session", "format_version", "not supported")
    _rewrite_manifest(tmp_path / "a.session", tmp_path / "other.session", app="someone-else")
    _assert_refused(tmp_path / "other.session", "not a session of this app")


def test_failed_save_keeps_previous_session(fused, frames, tmp_path, monkeypatch):
    p, stamps, poses = fused
    path = tmp_path / "scan.session"
    save_session(path, p, stamps, poses)
    before = path.read_bytes()
    real = session_mod._write_zip

    def dying(tmp, manifest, arrays, level):
        real(tmp, manifest, dict(list(arrays.items())[:2]), level)  # half a file on disk, then the crash
        raise RuntimeError("disk died")

    monkeypatch.setattr(session_mod, "_write_zip", dying)
    with pytest.raises(RuntimeError):
        save_session(path, p, stamps, poses)
    assert path.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["scan.session"]  # no temp file left
    s = load_session(path)
    assert len(s.poses) == N_FIRST
    s.pipeline.close()


def test_reconstruct_saves_session_also_on_a_failing_source(tmp_path):
    from fusion.reconstruct import ReconstructRequest, reconstruct
    from fusion.trajectory import read_tum
    from tests.fixtures_rgbd import write_sevenscenes

    ds = write_sevenscenes(tmp_path / "seq", orbit(8, SMALL, step_deg=2.0))
    bad = ds / "rgbd-frames" / "frame-000005.depth.png"
    bad.write_bytes(bad.read_bytes()[:60])
    cfg = PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu"))
    with pytest.raises(UserError, match="frame-000005"):
        reconstruct(ReconstructRequest(str(ds), tmp_path / "o", cfg, progress=False))
    s = load_session(tmp_path / "o" / "session")
    try:
        stamps, poses = read_tum(tmp_path / "o" / "trajectory.txt")
        assert len(s.poses) == 5 and np.allclose(s.poses, poses, atol=1e-6)
        assert s.settings["command"] == "reconstruct" and not s.settings["completed"]
        assert s.source["kind"] and s.pipeline.volume.n_blocks > 0
    finally:
        s.pipeline.close()


def test_a_loaded_session_continued_from_the_start_of_its_recording_relocalises(tmp_path):
    """Save partway, load, replay the source from frame 0: the first frame finds its place in the model."""
    from fusion.sources.synthetic import SyntheticSource

    src = SyntheticSource(7, n_frames=16)
    frames = [src.frame(i) for i in range(16)]
    p = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu"), incremental_mesh=False))
    res = [p.process(f, T_start=frames[0].T_world_cam_gt) for f in frames]
    save_session(tmp_path / "s.session", p, [r.timestamp_s for r in res], [r.T_world_cam for r in res])
    p.close()
    s = load_session(tmp_path / "s.session")
    try:
        t0 = s.pipeline.last_timestamp_s + 1.0
        again = [dataclasses.replace(f, timestamp_s=t0 + f.timestamp_s, T_world_cam_gt=None) for f in frames[:4]]
        out = [s.pipeline.process(f) for f in again]
        assert out[0].integrated and out[0].reason == "relocalised", out[0].reason
        assert all(r.integrated and r.state == "ok" for r in out), [r.reason for r in out]
        for r, f in zip(out, frames):
            assert np.linalg.norm(r.T_world_cam[:3, 3] - f.T_world_cam_gt[:3, 3]) < 0.01
    finally:
        s.pipeline.close()
