"""Faults of issue 7 not covered elsewhere: disk full / read-only during export, a full volume, tracking
lost for 100 frames, a stalling source, and the process killed while it saves a session."""
from __future__ import annotations

import builtins
import dataclasses
import errno
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import storage.atomic as atomic_mod
from fusion.errors import SourceError, UserError
from storage.export import LabeledMesh, export_mesh
from fusion.frame import Frame
from fusion.pipeline import FusionPipeline, PipelineConfig
from storage.session import load_session, save_session
from fusion.sources.base import FrameSource
from fusion.sources.stall import StallGuardConfig, guarded_frames
from fusion.tracking import relative_motion
from fusion.volume import VolumeConfig
from tests.scenes import SMALL, look_at, orbit, render

ROOT = Path(__file__).resolve().parents[1]
CPU_2CM = PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, device="cpu"))


# --- disk full / read-only during export --------------------------------------------------------
class _Filling:
    """A file that takes `left` more bytes, then fails with ENOSPC (None: never fails)."""

    def __init__(self, f, left: int | None):
        self._f, self._left = f, left

    def write(self, data):
        if self._left is not None and len(data) > self._left:
            self._f.write(data[: self._left])  # what fits reaches the disk, then it is full
            self._f.flush()
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self._left is not None:
            self._left -= len(data)
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def fill_disk(monkeypatch, folder: Path, nth: int, budget_bytes: int) -> None:
    """Temp files written in `folder`: the first `nth` complete, the next ones fail after `budget_bytes`."""
    real_open, opened = builtins.open, []

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        p = Path(file) if isinstance(file, (str, os.PathLike)) else None
        if p is None or not set(mode) & set("wax") or p.parent != folder or not p.name.endswith(".tmp"):
            return f
        opened.append(p)
        return _Filling(f, budget_bytes if len(opened) > nth else None)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)  # pathlib's write_text/write_bytes


@pytest.fixture(scope="module")
def meshes():
    """(previous export, new export) of the same small scan: other labels, other trajectory."""
    frames = orbit(6, SMALL, step_deg=3.0)
    p = FusionPipeline(CPU_2CM)
    res = [p.process(f, T_start=f.T_world_cam_gt) for f in frames]
    mesh = p.final_mesh()
    p.close()
    poses = np.array([r.T_world_cam for r in res])
    stamps = [r.timestamp_s for r in res]
    labels = np.where(mesh.positions_m[:, 1] > 0.4, 2, 5).astype(np.uint16)
    old = (LabeledMesh.from_mesh(mesh), stamps, poses + 0.01)
    return old, (LabeledMesh.from_mesh(mesh, labels), stamps, poses)


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("name,nth", [("scan.ply", 0), ("scan.ply", 1), ("scan.ply", 3), ("scan.ply", 4),
                                      ("scan.obj", 0), ("scan.obj", 1), ("scan.glb", 0)])
def test_disk_full_mid_export_keeps_previous_files(meshes, tmp_path, monkeypatch, name, nth):
    old, new = meshes
    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    out.mkdir()
    export_mesh(ref / name, *new)
    export_mesh(out / name, *old)
    before, after = _snapshot(out), _snapshot(ref)
    assert before.keys() == after.keys() and all(before[k] != after[k] for k in before)
    fill_disk(monkeypatch, out, nth, budget_bytes=100)
    with pytest.raises(UserError) as ei:
        export_mesh(out / name, *new)
    monkeypatch.undo()
    assert "No space left on device" in str(ei.value) and "\n" not in str(ei.value)
    now = _snapshot(out)
    assert now.keys() == before.keys()  # no temp file left behind
    replaced = [k for k in now if now[k] == after[k]]
    assert len(replaced) == nth and all(now[k] == before[k] for k in now if k not in replaced)


def test_read_only_file_system_during_export_keeps_previous_files(meshes, tmp_path, monkeypatch):
    old, new = meshes
    export_mesh(tmp_path / "scan.ply", *old)
    before = _snapshot(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic_mod.tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match="Read-only file system"):
        export_mesh(tmp_path / "scan.ply", *new)
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before


# --- out of block capacity ----------------------------------------------------------------------
def test_full_volume_warns_once_and_fusion_goes_on(caplog):
    frames = orbit(14, SMALL, step_deg=4.0)
    vol_cfg = VolumeConfig(voxel_size_m=0.02, block_resolution=8, initial_blocks=16, device="cpu")
    probe = FusionPipeline(PipelineConfig(volume=vol_cfg))
    probe.process(frames[0], T_start=frames[0].T_world_cam_gt)
    cap = probe.volume.n_blocks + 8  # full after a frame or two of the orbit
    probe.close()
    p = FusionPipeline(PipelineConfig(volume=dataclasses.replace(vol_cfg, max_blocks=cap)))
    with caplog.at_level(logging.WARNING):
        results = [p.process(f, T_start=frames[0].T_world_cam_gt) for f in frames]
    try:
        assert p.volume.is_full and p.volume.n_blocks <= cap
        assert sum("volume is full" in r.getMessage() for r in caplog.records) == 1
        assert all(r.integrated and r.state == "ok" for r in results), [r.reason for r in results]
        assert relative_motion(results[-1].T_world_cam, frames[-1].T_world_cam_gt)[0] < 0.01
        assert p.volume.frames_integrated == len(frames) and len(p.final_mesh().positions_m) > 100
    finally:
        p.close()


# --- tracking lost for 100 frames, then recovered -----------------------------------------------
def garbage_frames(n: int, start: int) -> list[Frame]:
    """`n` frames a tracker must not register: depth noise, a wall at 40 cm, the scene from far away,
    a covered lens (no depth)."""
    rng = np.random.default_rng(7)
    h, w = SMALL.height, SMALL.width
    far = render(look_at(np.array([1.5, -1.0, 0.2])), SMALL)
    out = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            depth = rng.uniform(0.3, 4.0, (h, w)).astype(np.float32)
        elif kind == 1:
            depth = np.full((h, w), 0.4, np.float32)
        elif kind == 2:
            depth = far.depth_m.copy()
        else:
            depth = np.zeros((h, w), np.float32)
        color = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        i = start + k
        out.append(Frame(color, depth, SMALL, i / 30.0, i))
    return out


def test_tracking_lost_for_100_frames_then_recovered():
    path = orbit(30, SMALL, step_deg=2.0)
    n_bad = 100
    resumed = [dataclasses.replace(f, timestamp_s=(f.index + n_bad) / 30.0, index=f.index + n_bad) for f in path[10:]]
    frames = path[:10] + garbage_frames(n_bad, 10) + resumed
    p = FusionPipeline(CPU_2CM)
    try:
        results = [p.process(f, T_start=path[0].T_world_cam_gt) for f in frames]
        blocks_when_lost = results[9].n_blocks
        assert all(r.integrated for r in results[:10])
        bad = results[10:10 + n_bad]
        assert bad[0].state == "lost" and all(r.state != "ok" and not r.integrated for r in bad)
        assert all(r.n_blocks == blocks_when_lost for r in bad)  # nothing of the garbage was fused
        assert p.tracker.failures >= 3 * n_bad // 4  # every frame with depth was rejected
        after = results[10 + n_bad:]
        first_ok = next(i for i, r in enumerate(after) if r.state == "ok")
        assert first_ok == 0 and p.tracker.relocalisations == 1  # relocalises on the first good frame
        assert all(r.integrated and r.state == "ok" for r in after[first_ok:]), [r.reason for r in after]
        assert p.volume.frames_integrated == 10 + len(after) - first_ok
        for r, f in zip(after[first_ok:], resumed[first_ok:]):
            assert relative_motion(r.T_world_cam, f.T_world_cam_gt)[0] < 0.01
    finally:
        p.close()


# --- a source that stalls ------------------------------------------------------------------------
class StallingSource(FrameSource):
    """Yields `n` frames, then blocks (a hung network drive) until `release` is set, then ends."""

    kind = "stalling-test"

    def __init__(self, frames, n: int, max_block_s: float = 3.0):
        self.frames, self.n, self.max_block_s = frames, n, max_block_s
        self.release = threading.Event()

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        yield from self.frames[: self.n]
        self.release.wait(self.max_block_s)
        yield from self.frames[self.n:]


def test_guarded_source_times_out_with_a_clear_message():
    src = StallingSource(orbit(5, SMALL), n=3)
    got = []
    t0 = time.monotonic()
    with pytest.raises(SourceError) as ei:
        for f in guarded_frames(src, StallGuardConfig(frame_timeout_s=0.3, join_timeout_s=0.1)):
            got.append(f.index)
    src.release.set()
    assert got == [0, 1, 2] and time.monotonic() - t0 < 2.5
    assert "no frame for 0.3 s after 3 frames" in str(ei.value) and "stalled" in str(ei.value)


def test_guarded_source_passes_frames_errors_and_the_end_through():
    frames = orbit(4, SMALL)
    assert [f.index for f in guarded_frames(StallingSource(frames, n=4, max_block_s=0))] == [0, 1, 2, 3]

    class Broken(StallingSource):
        def __iter__(self):
            yield self.frames[0]
            raise SourceError("frame 1: bad file")

    with pytest.raises(SourceError, match="bad file"):
        list(guarded_frames(Broken(frames, n=0)))
    it = guarded_frames(StallingSource(frames, n=4), StallGuardConfig(prefetch_frames=1))
    assert next(it).index == 0
    it.close()  # the consumer stops early: the reader ends too (the leaked-thread fixture checks)
    live = StallingSource(frames, n=2, max_block_s=0)
    live.kind = "realsense"  # times out by itself and keeps only the newest frame: read directly, no thread
    it = guarded_frames(live)
    assert next(it).index == 0 and not [t for t in threading.enumerate() if t.name == "source-reader"]
    it.close()


def test_reconstruct_stops_on_a_stalled_source_and_writes_what_was_fused(tmp_path, monkeypatch):
    from fusion import reconstruct as rec_mod

    src = StallingSource(orbit(6, SMALL), n=4, max_block_s=3.0)
    monkeypatch.setattr(rec_mod, "open_source", lambda spec, max_frames=None: src)
    req = rec_mod.ReconstructRequest("stalling", tmp_path / "out", CPU_2CM, progress=False,
                                     stall=StallGuardConfig(frame_timeout_s=0.5))
    try:
        with pytest.raises(UserError, match="stalled"):
            rec_mod.reconstruct(req)
    finally:
        src.release.set()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["frames"] == 4 and not stats["completed"] and "stalled" in stats["error"]


def test_recording_replay_that_stalls_fails_with_a_message(tmp_path):
    """A .db3 whose playback stays 'playing' but delivers nothing (a hung SDK read)."""
    rs = pytest.importorskip("pyrealsense2")
    from fusion.sources.recording import RecordingConfig, RecordingSource
    from tests.test_realsense import TINY, make_recording

    path = make_recording(tmp_path / "rec.db3", n=3, intr=TINY)
    src = RecordingSource(path, config=RecordingConfig(stall_timeout_s=0.3))

    class HungPipe:
        def start(self, cfg):
            pass

        def stop(self):
            pass

        def try_wait_for_frames(self, timeout_ms):
            time.sleep(timeout_ms / 1000)
            return False, None

    class Playing:
        def current_status(self):
            return rs.playback_status.playing

    src._pipe, src._playback = HungPipe(), Playing()
    with pytest.raises(SourceError, match="replay stalled after 0 frames"):
        list(src)


# --- the process killed while saving a session -------------------------------------------------
CHILD = """
import sys
import numpy as np
from fusion.pipeline import FusionPipeline, PipelineConfig
from storage.session import save_session
from fusion.volume import VolumeConfig
from tests.scenes import SMALL, orbit

p = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.04, device="cpu")))
f = orbit(1, SMALL)[0]
p.process(f, T_start=f.T_world_cam_gt)
big = np.random.default_rng(0).integers(0, 2**62, size=64 * 2**20 // 8)  # 64 MB that does not compress
save_session(sys.argv[1], p, [0.0], [np.eye(4)], extras={"big": big})
"""


def test_killed_during_session_save_leaves_previous_session_loadable(tmp_path):
    path = tmp_path / "scan.session"
    frames = orbit(3, SMALL)
    p = FusionPipeline(CPU_2CM)
    res = [p.process(f, T_start=f.T_world_cam_gt) for f in frames]
    save_session(path, p, [r.timestamp_s for r in res], [r.T_world_cam for r in res])
    p.close()
    before = path.read_bytes()
    env = dict(os.environ, NUMBA_THREADING_LAYER="omp", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, partial = time.monotonic() + 120, []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [t for t in tmp_path.glob(".scan.session.*.tmp") if t.stat().st_size > 2**20]
            if partial:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and not partial:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the save was not caught midway: {err.decode()[-2000:]}"
    assert path.read_bytes() == before
    s = load_session(path)
    assert len(s.poses) == 3 and "big" not in s.extras
    s.pipeline.close()
    (left,) = tmp_path.glob(".scan.session.*.tmp")  # the half-written temp file (SIGKILL runs no cleanup)
    with pytest.raises(UserError, match="corrupted"):
        load_session(left)
