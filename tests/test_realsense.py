"""RealSense without a camera: recordings made with the SDK's software device, replayed through the
app's own sources; the live source's capture path fed from a software device; faults."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyrealsense2 as rs
import pytest

from fusion.errors import SourceError, UserError
from fusion.frame import Intrinsics
from fusion.sources import open_source
from fusion.sources.capture import NewestSlot
from fusion.sources.realsense import LiveConfig, LiveSource
from fusion.sources.recording import RecordingSource
from fusion.sources.rs_common import DEPTH_ONLY_GREY, stream_info, list_devices
from tests.conftest import shared_data
from tests.scenes import SMALL, orbit

ROOT = Path(__file__).resolve().parents[1]
DEPTH_SCALE = 0.001
TINY = Intrinsics(fx=40.0, fy=40.0, cx=31.5, cy=23.5, width=64, height=48)
D435 = "realsense-d435-single"


class SoftCam:
    """A software RealSense: depth z16 and/or colour rgb8 sensors with known intrinsics."""

    def __init__(self, intr: Intrinsics, depth=True, color=True, fps=30):
        self.intr, self.dev, self.bufs = intr, rs.software_device(), []
        self.dev.register_info(rs.camera_info.name, "Software D4xx")
        self.dev.register_info(rs.camera_info.serial_number, "0000")
        self.sensors, self.profiles = {}, {}
        for kind, on, fmt, bpp, uid in (("depth", depth, rs.format.z16, 2, 0), ("color", color, rs.format.rgb8, 3, 1)):
            if on:
                sensor = self.dev.add_sensor("Stereo Module" if kind == "depth" else "RGB Camera")
                self.sensors[kind] = sensor
                self.profiles[kind] = sensor.add_video_stream(self._stream(kind, fmt, bpp, uid, fps))
        if depth:
            self.sensors["depth"].add_read_only_option(rs.option.depth_units, DEPTH_SCALE)
        if depth and color:
            ex = rs.extrinsics()
            ex.rotation, ex.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
            self.profiles["depth"].register_extrinsics_to(self.profiles["color"], ex)

    def _stream(self, kind, fmt, bpp, uid, fps):
        s = rs.video_stream()
        s.type, s.index, s.uid, s.fmt, s.bpp, s.fps = getattr(rs.stream, kind), 0, uid, fmt, bpp, fps
        s.width, s.height = self.intr.width, self.intr.height
        i = rs.intrinsics()
        i.width, i.height, i.fx, i.fy, i.ppx, i.ppy = (self.intr.width, self.intr.height, self.intr.fx,
                                                       self.intr.fy, self.intr.cx, self.intr.cy)
        i.model, i.coeffs = rs.distortion.none, [0.0] * 5
        s.intrinsics = i
        return s

    def start(self, sink=lambda f: None):
        for kind, sensor in self.sensors.items():
            sensor.open(self.profiles[kind])
            sensor.start(sink)

    def push(self, index: int, depth_raw: np.ndarray | None, color: np.ndarray | None):
        for kind, pixels, bpp in (("depth", depth_raw, 2), ("color", color, 3)):
            if kind not in self.sensors:
                continue
            pixels = np.ascontiguousarray(pixels)
            self.bufs.append(pixels)
            f = rs.software_video_frame()
            f.pixels, f.stride, f.bpp = pixels, self.intr.width * bpp, bpp
            f.timestamp, f.domain, f.frame_number = index * 1000.0 / 30, rs.timestamp_domain.hardware_clock, index
            f.profile = self.profiles[kind].as_video_stream_profile()
            self.sensors[kind].on_video_frame(f)

    def stop(self):
        for sensor in self.sensors.values():
            sensor.stop()
            sensor.close()


def raw_depth(frame) -> np.ndarray:
    return np.round(frame.depth_m / DEPTH_SCALE).astype(np.uint16)


def expected_depth_m(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.float32) * np.float32(DEPTH_SCALE)


def make_recording(path: Path, frames=None, n=None, intr=SMALL, depth=True, color=True) -> Path:
    """Record `frames` (scene Frames) or `n` frames whose depth encodes the index, with a software device."""
    cam = SoftCam(intr, depth, color)
    rec = rs.recorder(str(path), cam.dev)
    cam.start()
    count = len(frames) if frames is not None else n
    for i in range(count):
        if frames is not None:
            d, c = raw_depth(frames[i]), frames[i].color
        else:
            d = np.full((intr.height, intr.width), 500 + i, np.uint16)
            c = np.full((intr.height, intr.width, 3), i % 256, np.uint8)
        cam.push(i, d, c)
    cam.stop()
    del rec
    return path


@pytest.fixture(scope="module")
def scene_frames():
    return orbit(12, SMALL, step_deg=3.0)


@pytest.fixture(scope="module")
def scene_db3(tmp_path_factory, scene_frames):
    return make_recording(tmp_path_factory.mktemp("rs") / "scene.db3", scene_frames)


@pytest.fixture(scope="module")
def long_db3(tmp_path_factory):
    return make_recording(tmp_path_factory.mktemp("rs") / "long.db3", n=300, intr=TINY)


# ---------------------------------------------------------------- replay
def test_replay_every_pixel_intrinsics_and_count(scene_db3, scene_frames):
    src = open_source(str(scene_db3))
    assert isinstance(src, RecordingSource)
    got = list(src)
    assert len(got) == len(scene_frames)
    for i, (g, want) in enumerate(zip(got, scene_frames)):
        assert g.index == i and g.intrinsics == SMALL
        np.testing.assert_array_equal(g.color, want.color)
        np.testing.assert_array_equal(g.depth_m, expected_depth_m(raw_depth(want)))
        assert g.timestamp_s == pytest.approx(i / 30, abs=1e-6)
    d = src.describe()
    assert d["frames"] == 12 and d["depth_scale_m_per_unit"] == pytest.approx(DEPTH_SCALE)
    assert src.info.depth_to_color_translation_m == (0.0, 0.0, 0.0)


def test_300_frames_replay_with_no_frame_lost_20_of_20(long_db3):
    want = expected_depth_m(500 + np.arange(300)).astype(np.float32)
    for run in range(20):
        src = RecordingSource(long_db3)
        got = [f.depth_m[0, 0] for f in src]
        assert len(got) == 300, f"run {run}: {len(got)} frames, {src.describe()}"
        np.testing.assert_array_equal(np.array(got, np.float32), want)


def test_max_frames_stops_early(long_db3):
    assert len(list(RecordingSource(long_db3, max_frames=7))) == 7


def test_real_d435_bag_intrinsics_and_depth_scale():
    folder = shared_data(D435)
    ref = json.loads((folder / "intrinsics_from_bag.json").read_text())
    src = RecordingSource(folder / "single_depth_color_640x480.bag")
    assert src.info.depth_scale_m_per_unit == pytest.approx(ref["depth_scale_m_per_unit"], rel=1e-7)
    for name, intr in (("depth", src.info.depth_intrinsics), ("color", src.info.color_intrinsics)):
        s = ref["streams"][name]
        assert (intr.fx, intr.fy, intr.cx, intr.cy) == pytest.approx((s["fx"], s["fy"], s["ppx"], s["ppy"]), rel=1e-6)
        assert (intr.width, intr.height) == (s["width"], s["height"])
    ex = ref["extrinsics_depth_to_color"]
    assert src.info.depth_to_color_rotation == pytest.approx(ex["rotation_col_major"], abs=1e-6)
    assert src.info.depth_to_color_translation_m == pytest.approx(ex["translation_m"], abs=1e-7)
    frames = list(src)
    assert len(frames) == 1
    f = frames[0]
    assert f.intrinsics == src.info.color_intrinsics  # depth aligned to colour
    valid = f.depth_m[f.depth_m > 0]
    assert valid.size > 0.3 * f.depth_m.size and 0.1 < np.median(valid) < 10
    assert src.describe()["device"]["name"] == ref["device"]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_reconstructs_software_db3_and_real_bag(scene_db3, tmp_path):
    sources = [scene_db3]
    folder = shared_data(D435) if (ROOT.parent / "shared" / "data" / D435).exists() else None
    if folder is not None:
        sources.append(folder / "single_depth_color_640x480.bag")
    for i, src in enumerate(sources):
        out = tmp_path / f"out{i}"
        proc = run_cli("reconstruct", src, "--out", out, "--voxel-size", "0.02", "--no-progress")
        assert proc.returncode == 0, proc.stderr
        stats = json.loads((out / "stats.json").read_text())
        assert stats["completed"] and stats["source"]["kind"] == "realsense-recording"
        assert stats["mesh"]["vertices"] > 500
    assert stats["frames"] == (1 if folder is not None else 12)


# ---------------------------------------------------------------- faults in files
def test_truncated_and_corrupted_files_fail_with_one_line(scene_db3, tmp_path):
    data = scene_db3.read_bytes()
    trunc = tmp_path / "trunc.db3"
    trunc.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.db3"
    corrupt.write_bytes(data[:4096] + bytes(range(256)) * ((len(data) - 4096) // 256))
    for path in (trunc, corrupt):
        with pytest.raises(SourceError) as err:
            list(open_source(str(path)))
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_real_bag_fails_cleanly_or_yields_nothing_wrong(tmp_path):
    bag = shared_data(D435) / "single_depth_color_640x480.bag"
    trunc = tmp_path / "trunc.bag"
    trunc.write_bytes(bag.read_bytes()[: bag.stat().st_size // 2])
    try:
        frames = list(RecordingSource(trunc))
    except SourceError as exc:
        assert "\n" not in str(exc)
    else:
        assert len(frames) <= 1


def test_unsupported_formats(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (tmp_path / "notes.bag").write_text("hello, not a bag\n")
    (tmp_path / "notes.db3").write_text("hello, not a database\n")
    for name, word in (("clip.mp4", "video"), ("notes.bag", "not a RealSense recording"),
                       ("notes.db3", "not a RealSense recording"), ("missing.bag", "no such recording")):
        with pytest.raises(SourceError, match=word):
            open_source(str(tmp_path / name))
    proc = run_cli("reconstruct", tmp_path / "notes.bag", "--out", tmp_path / "o")
    assert "not a RealSense recording" in one_error_line(proc)


def test_depth_only_recording_gives_grey_frames_with_depth_intrinsics(tmp_path, scene_frames):
    path = make_recording(tmp_path / "depth_only.db3", scene_frames[:3], color=False)
    src = RecordingSource(path)
    frames = list(src)
    assert len(frames) == 3 and src.describe()["depth_only"]
    for f, want in zip(frames, scene_frames):
        assert f.intrinsics == SMALL and np.all(f.color == DEPTH_ONLY_GREY)
        np.testing.assert_array_equal(f.depth_m, expected_depth_m(raw_depth(want)))


def test_colour_only_recording_is_refused(tmp_path, scene_frames):
    path = make_recording(tmp_path / "colour_only.db3", scene_frames[:3], depth=False)
    with pytest.raises(SourceError, match="no depth stream"):
        RecordingSource(path)


# ---------------------------------------------------------------- live path (software device)
def wait_for(cond, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)


class LiveRig:
    """A LiveSource reading an rs.syncer that a software device feeds: the app's live code path."""

    def __init__(self, intr=SMALL, **cfg):
        self.cam = SoftCam(intr)
        self.sync = rs.syncer(10)
        self.cam.start(self.sync)
        info = stream_info([self.cam.profiles["depth"], self.cam.profiles["color"]], DEPTH_SCALE, None)
        self.source = LiveSource(self.sync, info, LiveConfig(**cfg))
        self.source.start()
        # the SDK syncer hands out the very first depth and colour unpaired: push one pair and drain it
        self.cam.push(0, np.zeros((intr.height, intr.width), np.uint16), np.zeros((intr.height, intr.width, 3), np.uint8))
        wait_for(lambda: self.source.slot.delivered >= 2)
        while self.source.slot.take(0.05) is not None:
            pass
        self.dropped0 = self.source.slot.dropped

    def close(self):
        self.source.close()
        self.cam.stop()


def test_live_source_converts_every_pixel_in_lockstep(scene_frames):
    rig = LiveRig()
    try:
        it = iter(rig.source)
        for i, want in enumerate(scene_frames[:6]):
            rig.cam.push(i + 1, raw_depth(want), want.color)
            got = next(it)
            np.testing.assert_array_equal(got.color, want.color)
            np.testing.assert_array_equal(got.depth_m, expected_depth_m(raw_depth(want)))
            assert got.intrinsics == SMALL and got.index == i
        it.close()
    finally:
        rig.close()
    assert rig.source.describe()["frames"] == 6


def test_live_source_keeps_only_the_newest_and_counts_drops():
    rig = LiveRig(TINY)
    try:
        it = iter(rig.source)
        for i in range(10):
            rig.cam.push(i + 1, np.full((48, 64), 500 + i, np.uint16), np.zeros((48, 64, 3), np.uint8))
        wait_for(lambda: rig.source.slot.delivered >= 12)
        got = next(it)
        it.close()
    finally:
        rig.close()
    assert got.depth_m[0, 0] == expected_depth_m(np.array(509))
    d = rig.source.describe()
    assert d["framesets_received"] == 12 and d["frames_dropped_capture"] - rig.dropped0 == 9 and d["frames"] == 1


def test_newest_slot_raises_producer_error_after_pending_item():
    slot = NewestSlot()
    slot.put("a")
    slot.put("b")
    slot.put_error(SourceError("gone"))
    assert slot.take(0.1) == "b" and slot.dropped == 1
    with pytest.raises(SourceError, match="gone"):
        slot.take(0.1)


def test_camera_unplugged_mid_scan_keeps_what_was_fused(tmp_path, monkeypatch, scene_frames):
    from fusion import reconstruct as rec_mod
    from fusion.pipeline import PipelineConfig
    from fusion.volume import VolumeConfig

    rig = LiveRig(frame_timeout_s=0.5)
    consumed = rig.source.slot

    ended = threading.Event()  # the scan ended (on a loaded machine it may end before all 8 are taken)

    def feed():  # delivers 8 frames, one after the other is taken, then stops (the "unplug")
        for i, f in enumerate(scene_frames[:8]):
            if ended.is_set():
                return
            rig.cam.push(i + 1, raw_depth(f), f.color)
            wait_for(lambda: consumed.delivered >= i + 3 or ended.is_set())
            time.sleep(0.05)

    feeder = threading.Thread(target=feed, name="test-feeder")
    monkeypatch.setattr(rec_mod, "open_source", lambda spec, max_frames=None: rig.source)
    req = rec_mod.ReconstructRequest("realsense", tmp_path / "out", PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02)),
                                     progress=False)
    feeder.start()
    try:
        with pytest.raises(UserError, match="no frame for 0.5 s"):
            rec_mod.reconstruct(req)
    finally:
        ended.set()
        feeder.join(10)
        rig.close()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert not stats["completed"] and stats["frames"] >= 1 and "unplugged" in stats["error"]
    assert stats["mesh"]["vertices"] > 100 and "frames_dropped_capture" in stats["source"]


# ---------------------------------------------------------------- no camera
def test_record_and_live_reconstruct_without_camera_say_so_in_one_line(tmp_path):
    if list_devices():
        pytest.skip("a RealSense camera is attached")
    line = one_error_line(run_cli("record", "--out", tmp_path / "x.db3", "--seconds", "1"))
    assert "no RealSense camera attached (found: none)" in line
    line = one_error_line(run_cli("reconstruct", "realsense:12345", "--out", tmp_path / "o"))
    assert "serial 12345" in line


def test_recording_extension_follows_the_sdk(caplog):
    from fusion.recorder import recording_path, sdk_extension

    assert sdk_extension("2.59.1") == ".db3" and sdk_extension("2.57.7") == ".bag"
    with caplog.at_level("WARNING"):
        assert recording_path(Path("scan.bag"), "2.59.1") == Path("scan.db3")
    assert "writes .db3 files, not .bag" in caplog.text
    assert recording_path(Path("scan.db3"), "2.54.2") == Path("scan.bag")
    assert recording_path(Path("scan"), "2.59.1") == Path("scan.db3")


def test_sdk_post_filters_fill_holes_on_real_depth():
    from fusion.sources.recording import RecordingConfig
    from fusion.sources.rs_common import PostFilterConfig

    bag = shared_data(D435) / "single_depth_color_640x480.bag"
    plain = list(RecordingSource(bag))[0]
    cfg = RecordingConfig(filters=PostFilterConfig(spatial=True, temporal=True, hole_filling=True))
    filtered = list(RecordingSource(bag, config=cfg))[0]
    assert filtered.intrinsics == plain.intrinsics
    assert (filtered.depth_m > 0).mean() > (plain.depth_m > 0).mean()


def test_a_replay_that_lost_its_first_framesets_is_started_again(scene_db3, scene_frames, monkeypatch, caplog):
    calls = []

    def late_once(self, fs):
        calls.append(fs.as_frameset().get_depth_frame().get_timestamp())
        return len(calls) == 1  # the first attempt reports a late start, as when the SDK dropped frames

    monkeypatch.setattr(RecordingSource, "_started_late", late_once)
    with caplog.at_level(logging.INFO, logger="fusion.sources.recording"):
        got = list(RecordingSource(scene_db3))
    assert len(calls) == 2 and any("lost its first frames" in m for m in caplog.messages)
    assert len(got) == len(scene_frames) and [g.index for g in got] == list(range(len(scene_frames)))
    np.testing.assert_array_equal(got[0].depth_m, expected_depth_m(raw_depth(scene_frames[0])))


def test_the_start_of_a_recording_is_read_from_its_sensors_and_a_late_first_frameset_is_seen(scene_db3):
    from fusion.sources.recording_start import RecordingStart, read_start

    start = read_start(scene_db3, fps=30)
    assert (start.depth_ms, start.color_ms) == (0.0, 0.0) and start.period_ms == pytest.approx(1000 / 30)
    assert not start.missed(0.0, 0.0)
    assert start.missed(4 * 1000 / 30, 4 * 1000 / 30)  # the first 4 framesets lost, as the SDK did under load
    assert start.missed(2 * 1000 / 30, None)
    # the syncer pairing the first colour frame with the second depth frame is not a loss (the real D435 bag)
    assert not RecordingStart(360815.089, 360713.523, 1000 / 6).missed(360981.765, 360713.523)
    src = RecordingSource(scene_db3)
    frames = list(src)
    assert src._file_start == start and len(frames) == 12 and frames[0].timestamp_s == 0.0
