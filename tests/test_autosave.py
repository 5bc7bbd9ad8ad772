"""Autosave: interval, atomic rewrites, in-progress markers, crash recovery, write errors that never stop a scan."""
from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

import storage.atomic as atomic_mod
from storage.autosave import (AutosaveConfig, Autosaver, default_folder, discard, find_recoverable,
                             pid_alive)


def dead_pid() -> int:
    """The pid of a process that has already exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Writer:
    """Stands in for a captured session's `write_session`: writes a versioned payload."""

    def __init__(self):
        self.version = 0
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        self.version += 1
        path.write_bytes(f"session v{self.version}".encode() * 100)


def make(tmp_path, interval_s=10.0, keep=3, name="scan-a", writer=None):
    writer = writer or Writer()
    return Autosaver(lambda: writer, AutosaveConfig(interval_s=interval_s, folder=tmp_path, keep=keep),
                     info={"source": "synthetic:0"}, name=name)


def crash(saver: Autosaver) -> None:
    """Make `saver`'s marker look like its process died (what a crash leaves behind)."""
    doc = json.loads(saver.marker_path.read_text()) | {"pid": dead_pid()}
    saver.marker_path.write_text(json.dumps(doc))


def test_saves_once_per_interval_and_only_when_changed(tmp_path):
    w = Writer()
    s = make(tmp_path, interval_s=10.0, writer=w)
    s.start(100.0)
    assert not s.maybe_save(105.0) and w.calls == 0
    assert s.maybe_save(110.0) and s.wait() and s.path.read_bytes().startswith(b"session v1")
    assert not s.maybe_save(115.0)
    assert not s.maybe_save(121.0, changed=False)  # paused scan: nothing new to save
    assert s.maybe_save(122.0) and s.wait() and w.calls == 2 and s.saves == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan-a.lock", "scan-a.session"]  # no temp files
    s.close()


def test_marker_holds_pid_and_clean_exit_removes_it(tmp_path):
    s = make(tmp_path)
    s.save_now(0.0)
    doc = json.loads(s.marker_path.read_text())
    assert doc["pid"] == os.getpid() and doc["source"] == "synthetic:0" and doc["session"] == "scan-a.session"
    assert find_recoverable(tmp_path) == []  # this process is alive: its scan is in progress, not a crash
    s.close()
    assert not s.marker_path.exists() and s.path.is_file()
    assert find_recoverable(tmp_path) == [] and not s.save_now(1.0)


def test_crashed_scan_is_offered_for_recovery(tmp_path):
    old = make(tmp_path, name="scan-old")
    old.save_now(0.0)
    crash(old)
    live = make(tmp_path, name="scan-live")
    live.save_now(0.0)
    (rec,) = find_recoverable(tmp_path)
    assert rec.session_path == old.path and rec.info["source"] == "synthetic:0"
    assert rec.size_bytes == old.path.stat().st_size and rec.pid != os.getpid()
    discard(rec)
    assert find_recoverable(tmp_path) == [] and old.path.is_file()
    live.close()


def test_reused_pid_is_not_mistaken_for_the_scanning_process(tmp_path):
    s = make(tmp_path)
    s.save_now(0.0)
    doc = json.loads(s.marker_path.read_text())
    if doc["start_ticks"] is None:
        pytest.skip("no /proc on this system")
    assert pid_alive(os.getpid(), doc["start_ticks"])
    s.marker_path.write_text(json.dumps(doc | {"start_ticks": doc["start_ticks"] - 1}))  # same pid, other process
    assert [r.session_path for r in find_recoverable(tmp_path)] == [s.path]


def test_marker_without_autosave_or_unreadable_is_ignored(tmp_path):
    (tmp_path / "scan-x.lock").write_text(json.dumps({"pid": dead_pid()}))  # crashed before its first save
    (tmp_path / "scan-y.lock").write_text("{not json")
    (tmp_path / "scan-y.session").write_bytes(b"x")
    assert find_recoverable(tmp_path) == []
    assert find_recoverable(tmp_path / "missing") == []


@pytest.mark.parametrize("fault", ["enospc", "target-is-a-folder", "writer-bug", "capture-bug", "folder-is-a-file"])
def test_write_errors_warn_once_keep_previous_and_never_raise(tmp_path, monkeypatch, caplog, fault):
    w = Writer()
    s = make(tmp_path / "auto", interval_s=1.0, writer=w)
    if fault != "folder-is-a-file":
        assert s.save_now(0.0)
    before = s.path.read_bytes() if s.path.is_file() else None
    if fault == "enospc":
        def full(*args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(atomic_mod.os, "replace", full)
    elif fault == "target-is-a-folder":
        s.path.unlink()
        s.path.mkdir()
    elif fault == "writer-bug":  # fails on the autosaver's thread
        monkeypatch.setattr(s, "_capture", lambda: lambda path: 1 / 0)
    elif fault == "capture-bug":  # fails on the owning (fusion) thread
        monkeypatch.setattr(s, "_capture", lambda: 1 / 0)
    else:
        (tmp_path / "auto").write_text("a file where the folder should be")
        s.start(0.0)
    with caplog.at_level(logging.WARNING, logger="storage.autosave"):
        for now_s in (5.0, 10.0, 10.5):  # two attempts (the third is not due), neither raises
            s.maybe_save(now_s)
            assert s.wait()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "autosave" in warnings[0] and "scanning goes on" in warnings[0], warnings
    assert s.failures == 2 and s.last_error
    if fault == "enospc":
        assert "No space left" in warnings[0] and s.path.read_bytes() == before
        assert sorted(p.name for p in s.folder.iterdir()) == ["scan-a.lock", "scan-a.session"]
        monkeypatch.undo()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="storage.autosave"):
            assert s.maybe_save(20.0) and s.wait() and s.last_error is None  # space again: autosaving resumes
        assert any("works again" in r.getMessage() for r in caplog.records)
    s.close()


def test_keeps_the_newest_autosaves_and_never_a_live_one(tmp_path):
    savers = []
    for i in range(5):
        s = make(tmp_path, keep=2, name=f"scan-{i}")
        s.save_now(0.0)
        os.utime(s.path, (1000 + i, 1000 + i))
        savers.append(s)
        if i != 1:
            s.close()  # scan 1 stays in progress (alive), the others exited cleanly
    newest = make(tmp_path, keep=2, name="scan-new")
    newest.save_now(0.0)
    names = sorted(p.name for p in tmp_path.glob("*.session"))
    assert names == ["scan-1.session", "scan-4.session", "scan-new.session"], names
    newest.close()
    savers[1].close()


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_folder().parent.parent == tmp_path and default_folder().name == "autosave"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert str(default_folder()).endswith("/.local/share/" + default_folder().parent.name + "/autosave")
    with pytest.raises(ValueError):
        AutosaveConfig(interval_s=0)


def test_autosaved_session_loads_after_a_crash(tmp_path):
    """The real capture and writer: a pipeline autosaved in the background while it goes on fusing is
    recovered with `load_session` exactly as it was when captured."""
    import functools

    from fusion.pipeline import FusionPipeline, PipelineConfig
    from storage.session import capture_session, load_session, write_session
    from fusion.volume import VolumeConfig
    from tests.scenes import SMALL, orbit

    frames = orbit(6, SMALL)
    p = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.04, device="cpu")))
    stamps, poses, captured = [], [], []

    def capture():
        captured.append((len(poses), p.volume.frames_integrated, p.volume.n_blocks))
        return functools.partial(write_session, capture=capture_session(p, stamps, poses, {"kind": "test"}))

    s = Autosaver(capture, AutosaveConfig(interval_s=1.0, folder=tmp_path), name="scan-real")
    s.start(0.0)
    try:
        for i, f in enumerate(frames):
            r = p.process(f, T_start=f.T_world_cam_gt)  # fusion goes on while a capture is written
            stamps.append(r.timestamp_s)
            poses.append(r.T_world_cam)
            s.maybe_save(float(i))
        assert s.wait() and s.saves >= 1 and s.failures == 0
        crash(s)
        (rec,) = find_recoverable(tmp_path)
        loaded = load_session(rec.session_path)
        n_poses, n_frames, n_blocks = captured[-1]
        assert len(loaded.poses) == n_poses and loaded.pipeline.volume.frames_integrated == n_frames
        assert loaded.pipeline.volume.n_blocks == n_blocks
        loaded.pipeline.close()
    finally:
        p.close()


def test_background_write_never_holds_the_scan_and_close_does_not_wait(tmp_path):
    release = threading.Event()
    calls = []

    def slow_writer(path):
        calls.append(threading.current_thread().name)
        release.wait(10.0)
        path.write_bytes(b"session")

    s = Autosaver(lambda: slow_writer, AutosaveConfig(interval_s=1.0, folder=tmp_path), name="scan-slow")
    s.start(0.0)
    t0 = time.perf_counter()
    assert s.maybe_save(1.0) and s.writing
    assert not s.maybe_save(2.5)  # due, but the previous write still runs: skipped
    assert time.perf_counter() - t0 < 1.0 and s.marker_path.is_file()
    s.close(delete_session=True)   # a clean exit while writing: returns at once
    assert not s.marker_path.exists() and find_recoverable(tmp_path) == []
    release.set()
    assert s.wait(10.0)
    assert calls == ["autosave-writer"] and not s.path.exists() and not list(tmp_path.glob("*.tmp"))


def test_temp_files_of_a_save_killed_midway_are_cleaned_up(tmp_path):
    old = make(tmp_path, name="scan-old")
    old.save_now(0.0)
    crash(old)
    stale = tmp_path / ".scan-old.session.k1ll3d.tmp"  # what SIGKILL during a save leaves behind
    stale.write_bytes(b"half a zip")
    live = make(tmp_path, name="scan-live")
    live.save_now(0.0)
    busy = tmp_path / ".scan-live.session.wr1t1ng.tmp"  # a live scan's save in progress: kept
    busy.write_bytes(b"being written")
    make(tmp_path, name="scan-new").save_now(0.0)
    assert not stale.exists() and busy.exists() and old.path.is_file()
    live.close()
