"""Frame-to-model tracking: accuracy on exact frames, rejection of bad frames, recovery."""
from __future__ import annotations

import numpy as np

from fusion.frame import Frame
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.tracking import TrackState, downsample_depth, relative_motion
from fusion.trajectory import ate_rmse_m
from fusion.volume import VolumeConfig
from tests.scenes import VGA, look_at, orbit, render

CFG = PipelineConfig(volume=VolumeConfig(voxel_size_m=0.01, device="cpu"))


def _run(frames, cfg=CFG):
    pipe = FusionPipeline(cfg)
    results = [pipe.process(f, T_start=frames[0].T_world_cam_gt) for f in frames]
    pipe.close()
    return pipe, results


def test_tracks_an_orbit_to_millimetres():
    frames = orbit(20, VGA, step_deg=1.5)
    pipe, results = _run(frames)
    assert all(r.integrated for r in results)
    est = np.array([r.T_world_cam for r in results])
    gt = np.array([f.T_world_cam_gt for f in frames])
    assert ate_rmse_m(est, gt) < 0.003
    assert relative_motion(est[-1], gt[-1])[0] < 0.006


def test_rejects_an_implausible_frame_and_recovers():
    frames = orbit(14, VGA, step_deg=1.5)
    # frame 8 is seen from a far-away pose: registering it would corrupt the volume
    bad = render(look_at(np.array([1.5, -1.0, 0.2])), VGA, 8)
    frames[8] = Frame(bad.color, bad.depth_m, VGA, frames[8].timestamp_s, 8, frames[8].T_world_cam_gt)
    pipe, results = _run(frames)
    assert not results[8].integrated and results[8].state == TrackState.LOST.value
    assert pipe.tracker.failures >= 1
    assert results[-1].state == TrackState.OK.value and results[-1].integrated
    est = results[-1].T_world_cam
    assert relative_motion(est, frames[-1].T_world_cam_gt)[0] < 0.01


def test_frame_without_depth_is_skipped_not_fused():
    frames = orbit(4, VGA)
    empty = Frame(frames[2].color, np.zeros_like(frames[2].depth_m), VGA, frames[2].timestamp_s, 2)
    frames[2] = empty
    pipe, results = _run(frames)
    assert not results[2].integrated and results[2].reason == "no valid depth"
    assert results[3].integrated


def test_downsample_keeps_agreeing_pixels_only():
    d = np.zeros((4, 4), np.float32)
    d[:2, :2] = [[1.0, 1.01], [1.02, 0]]     # three agree -> mean
    d[:2, 2:] = [[1.0, 2.0], [0, 0]]          # disagree -> invalid
    d[2:, :2] = [[1.0, 0], [0, 0]]            # one pixel -> invalid
    out = downsample_depth(d)
    assert abs(out[0, 0] - 1.01) < 1e-6 and out[0, 1] == 0 and out[1, 0] == 0
