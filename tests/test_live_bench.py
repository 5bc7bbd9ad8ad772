"""The live-camera benchmark: real-time replay into the newest-only capture slot, honest counting, CLI."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from bench import live_bench
from bench.make_recording import make_recording
from bench.replay import ReplayCamera, play_list, replay
from tests.scenes import SMALL, orbit


@pytest.fixture(scope="module")
def frames():
    return orbit(8, SMALL, step_deg=2.0)


def test_a_loop_that_keeps_up_fuses_every_frame_in_order(frames):
    seen = []
    rep = replay(play_list(frames, 1, 60.0), 60.0, lambda f: seen.append(f.index))
    assert rep.fused == seen == list(range(len(frames)))
    assert rep.slot_dropped == 0


def test_a_busy_loop_skips_to_the_newest_frame_and_counts_it(frames):
    """The loop is busy with the first frame until the camera has handed out every other one: it then
    gets only the newest, and every frame in between is counted as replaced in the slot."""
    camera = ReplayCamera(play_list(frames, 1, 200.0), 200.0)
    first = threading.Event()

    def fuse(frame):
        if not first.is_set():
            first.set()
            assert camera.finished.wait(30.0)

    rep = replay(camera.frames, 200.0, fuse, camera=camera)
    assert len(rep.fused) == 2 and rep.fused[-1] == len(frames) - 1
    assert rep.slot_dropped == len(frames) - 2


def test_play_list_goes_back_and_forth_on_the_camera_clock(frames):
    seq = play_list(frames, 3, 30.0)
    assert len(seq) == 3 * len(frames) - 2
    assert [f.index for f in seq] == list(range(len(seq)))
    np.testing.assert_allclose([f.timestamp_s for f in seq], np.arange(len(seq)) / 30.0)
    np.testing.assert_array_equal(seq[len(frames)].T_world_cam_gt, frames[-2].T_world_cam_gt)


def test_skipped_frames_count_in_the_ate_with_the_pose_held(frames):
    gt = {i: f.T_world_cam_gt for i, f in enumerate(frames)}
    every = live_bench._ate(frames, gt)
    assert every["ate_rmse_m"] == pytest.approx(0.0, abs=1e-6)
    sparse = live_bench._ate(frames, {i: gt[i] for i in (0, 3, 7)})
    assert sparse["ate_fused_rmse_m"] == pytest.approx(0.0, abs=1e-6)
    assert sparse["ate_rmse_m"] > 0.005  # frames 1-2 and 4-6 held an older pose


@pytest.mark.parametrize("labels", ["none", "incremental"])
def test_cli_on_a_realsense_recording_writes_every_key(tmp_path, frames, labels):
    rec, gt = make_recording(frames, tmp_path / "room.db3")
    out = tmp_path / "live.json"
    code = live_bench.main([str(rec), "--gt", str(gt), "--fps", "10", "--voxel-size", "0.02",
                            "--labels", labels, "--out", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    for key in ("fused_fps", "frames_skipped", "tracking_losses", "ate_rmse_m", "fused_fps_without_nets",
                "open3d_fused_fps", "open3d_ate_rmse_m"):
        assert r[key] is not None, key
    assert set(r["label_latency_s"]) == {"p50", "p95"}
    ours = r["runs"]["ours"]
    assert ours["frames_fused"] + ours["frames_skipped"] == ours["frames"] == 2 * r["source_frames"]  # two runs
    assert 0 < r["source_frames"] <= len(frames)
    assert len(ours["repeats"]) == 2 and r["repeats"] == 2
    assert ours["longest_frame_ms"] == max(run["longest_frame_ms"] for run in ours["repeats"]) > 0
    frame_ms = (ours["timing_ms_p50"]["frame"], ours["timing_ms_p95"]["frame"], ours["timing_ms_total"]["frame"])
    assert 0 < frame_ms[0] <= frame_ms[1] <= frame_ms[2] and ours["timing_ms_p95"]["frame"] <= ours["longest_frame_ms"]
    if labels == "incremental":
        assert ours["label_changes"] > 0 and r["label_latency_s"]["p95"] is not None


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    assert live_bench.main([str(tmp_path / "missing"), "--out", str(tmp_path / "x.json")]) == 2
    assert live_bench.main(["synthetic:1", "--fps", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert live_bench.main(["synthetic:1", "--labels", "final", "--out", str(tmp_path / "x.json")]) == 2
    assert live_bench.main(["synthetic:1", "--max-frames", "5", "--max-preload-mb", "1",  # a 640x480 frame: 2 MB
                            "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    assert "--max-frames" in err[-1]
    assert not (tmp_path / "x.json").exists()


def test_set_reaches_the_nets_workers_config_and_its_scheduler():
    import argparse

    from bench.settings import setting_parser, with_settings
    from nets.incremental import LabelerConfig

    args = live_bench._parse(["room.db3", "--set", "scheduler.halo_refresh_live=false", "--set", "skip_change_below=0.1"])
    config = with_settings(LabelerConfig(), args.set)
    assert config.scheduler.halo_refresh_live is False and config.skip_change_below == 0.1
    assert config.scheduler.settle_s == LabelerConfig().scheduler.settle_s  # the rest as it was
    parse = setting_parser(LabelerConfig())
    for bad in ("scheduler=1", "scheduler.nope=1", "nope.settle_s=1", "skip_change_below=", "poll_s=fast"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected FIELD=VALUE|is not a"):
            parse(bad)


def test_the_worker_stats_count_busy_time_and_halo_refreshes():
    from types import SimpleNamespace

    from nets.labeler_stats import LabelerStats

    class Region:
        core = np.ones(10, bool)

        def __len__(self):
            return 10

    stats = LabelerStats(100)
    snap = SimpleNamespace(served_s=1.0, serve_ms=5.0, request=SimpleNamespace(requested_s=0.9))
    stats.region(((0, 0, 0),), Region(), 200.0, [0.5], snap, [0.1])
    stats.region(((1, 0, 0),), Region(), 300.0, [], snap, [])  # no change waited: a halo refresh
    stats.worker_time(0.6, 1.0)
    stats.worker_time(0.2, 1.0)
    s = stats.summary()
    assert s["regions_inferred"] == 2 and s["infer_s_total"] == pytest.approx(0.5)
    assert s["refresh_regions"] == 1 and s["refresh_infer_s"] == pytest.approx(0.3)
    assert s["worker_busy_share"] == pytest.approx(0.4)
