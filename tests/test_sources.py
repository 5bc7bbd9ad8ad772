"""Dataset-folder sources: 7-Scenes, TUM RGB-D and Open3D/Redwood layouts, bad input, real data."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from fusion.frame import Intrinsics
from fusion.sources import open_source
from fusion.sources.images import read_color, read_depth_m
from fusion.sources.redwood import RedwoodSource
from fusion.sources.sevenscenes import SevenScenesSource
from fusion.sources.tum import FREIBURG_K, TumConfig, TumSource, interpolate_pose
from tests.conftest import one_line_error
from tests.fixtures_rgbd import (TINY, quantised_depth_m, scene_frames, write_redwood, write_sevenscenes,
                                 write_tum)
from tests.conftest import shared_data
from tests.scenes import orbit


@pytest.fixture(scope="module")
def frames():
    return scene_frames(4)


def _check_frames(source, expected, units_per_m, timestamps, exact_color=True):
    got = list(source)
    assert len(got) == len(source) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.index == i
        assert g.intrinsics == e.intrinsics
        assert g.depth_m.dtype == np.float32 and g.color.dtype == np.uint8
        np.testing.assert_allclose(g.depth_m, quantised_depth_m(e.depth_m, units_per_m), atol=0.51 / units_per_m)
        if exact_color:
            np.testing.assert_array_equal(g.color, e.color)
        else:
            assert np.abs(g.color.astype(int) - e.color).mean() < 8
        assert g.timestamp_s == pytest.approx(timestamps[i], abs=1e-6)
    return got




# --- 7-Scenes -------------------------------------------------------------------------------------

def test_sevenscenes_round_trip(tmp_path, frames):
    root = write_sevenscenes(tmp_path / "seq", frames)
    src = open_source(str(root))
    assert isinstance(src, SevenScenesSource) and src.kind == "7scenes"
    assert src.intrinsics == TINY and src.has_gt_poses
    got = _check_frames(src, frames, 1000.0, [i / 30 for i in range(4)])
    for g, e in zip(got, frames):
        np.testing.assert_allclose(g.T_world_cam_gt, e.T_world_cam_gt, atol=1e-8)
    np.testing.assert_allclose(src.first_gt_pose(), frames[0].T_world_cam_gt, atol=1e-8)
    assert src.describe()["frames"] == 4 and src.describe()["kind"] == "7scenes"


def test_sevenscenes_flat_jpg_without_poses_and_max_frames(tmp_path, frames):
    root = write_sevenscenes(tmp_path / "flat", frames, subfolder=None, color_ext=".jpg", poses=False,
                             first_number=150)
    src = open_source(str(root), max_frames=2)
    assert len(src) == 2 and not src.has_gt_poses and src.first_gt_pose() is None
    got = _check_frames(src, frames[:2], 1000.0, [0.0, 1 / 30], exact_color=False)
    assert all(g.T_world_cam_gt is None for g in got)


def test_sevenscenes_65535_is_invalid(tmp_path, frames):
    root = write_sevenscenes(tmp_path / "s", frames[:1])
    path = root / "rgbd-frames" / "frame-000000.depth.png"
    raw = np.asarray(Image.open(path)).copy()
    raw[:5] = 65535
    Image.fromarray(raw).save(path)
    depth = next(iter(SevenScenesSource(root))).depth_m
    assert np.all(depth[:5] == 0) and np.all(depth[5:] == quantised_depth_m(frames[0].depth_m, 1000)[5:])


def test_sevenscenes_several_frame_folders(tmp_path, frames):
    write_sevenscenes(tmp_path / "scene", frames[:1], subfolder="seq-01")
    write_sevenscenes(tmp_path / "scene", frames[:1], subfolder="seq-02")
    one_line_error(lambda: open_source(str(tmp_path / "scene")), "seq-01", "seq-02")


def test_sevenscenes_missing_colour_partner(tmp_path, frames):
    root = write_sevenscenes(tmp_path / "s", frames[:2])
    (root / "rgbd-frames" / "frame-000001.color.png").unlink()
    one_line_error(lambda: SevenScenesSource(root), "frame-000001")


# --- TUM ------------------------------------------------------------------------------------------

def test_tum_round_trip(tmp_path, frames):
    root = write_tum(tmp_path / "rgbd_dataset_freiburg3_tiny", frames)
    src = open_source(str(root))
    assert isinstance(src, TumSource) and src.kind == "tum"
    assert src.intrinsics == TINY and src.has_gt_poses
    stamps = [1305031102.175304 + i / 30 for i in range(4)]
    got = _check_frames(src, frames, 5000.0, stamps)
    for g, e in zip(got, frames):
        np.testing.assert_allclose(g.T_world_cam_gt, e.T_world_cam_gt, atol=1e-6)
    assert len(open_source(str(root), max_frames=3)) == 3


def test_tum_intrinsics_json_and_unmatched_rgb_dropped(tmp_path, frames):
    root = write_tum(tmp_path / "t", frames, camera_file="intrinsics.json", groundtruth=False)
    lines = (root / "rgb.txt").read_text().splitlines()
    (root / "rgb.txt").write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # drop rgb of frame 1
    src = TumSource(root)
    assert src.intrinsics == TINY and not src.has_gt_poses and len(src) == 3
    got = list(src)
    np.testing.assert_array_equal(got[1].color, frames[2].color)


def test_tum_no_rgb_within_tolerance(tmp_path, frames):
    root = write_tum(tmp_path / "t", frames, rgb_offset_s=0.5)
    one_line_error(lambda: TumSource(root), "0.02")


def test_tum_intrinsics_from_folder_name(tmp_path, caplog):
    fr1 = Intrinsics(*FREIBURG_K[1], 640, 480)
    vga = orbit(1, fr1)
    src = TumSource(write_tum(tmp_path / "rgbd_dataset_freiburg1_xyz", vga, camera_file=None))
    assert src.intrinsics == fr1
    with caplog.at_level(logging.WARNING):
        src = TumSource(write_tum(tmp_path / "my_scan", vga, camera_file=None))
    assert src.intrinsics == Intrinsics(*FREIBURG_K[3], 640, 480)
    assert "fr3" in caplog.text


def test_tum_gt_interpolation_and_gap():
    stamps = np.array([0.0, 0.01, 1.0])
    poses = np.repeat(np.eye(4)[None], 3, 0)
    poses[1, :3, 3] = (1.0, 0, 0)
    T = interpolate_pose(stamps, poses, 0.004, TumConfig())
    np.testing.assert_allclose(T[:3, 3], (0.4, 0, 0), atol=1e-12)
    assert interpolate_pose(stamps, poses, 0.5, TumConfig()) is None  # gap too long, nearest too far
    np.testing.assert_allclose(interpolate_pose(stamps, poses, 0.985, TumConfig()), poses[2])


def test_tum_gt_far_from_frames(tmp_path, frames):
    root = write_tum(tmp_path / "t", frames)
    gt = (root / "groundtruth.txt").read_text().splitlines()
    shifted = [gt[0]] + [f"{float(l.split()[0]) + 5:.6f} " + " ".join(l.split()[1:]) for l in gt[1:]]
    (root / "groundtruth.txt").write_text("\n".join(shifted) + "\n")
    src = TumSource(root)
    assert not src.has_gt_poses and src.first_gt_pose() is None


@pytest.mark.parametrize("list_name", ["rgb.txt", "depth.txt"])
def test_tum_non_monotonic_timestamps(tmp_path, frames, list_name):
    root = write_tum(tmp_path / "t", frames)
    lines = (root / list_name).read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    (root / list_name).write_text("\n".join(lines) + "\n")
    one_line_error(lambda: open_source(str(root)), f"{list_name}:4", "does not increase")


# --- Open3D / Redwood ----------------------------------------------------------------------------

def test_redwood_round_trip(tmp_path, frames):
    root = write_redwood(tmp_path / "r", frames)
    src = open_source(str(root))
    assert isinstance(src, RedwoodSource) and src.kind == "redwood"
    assert src.intrinsics == TINY and src.has_gt_poses
    got = _check_frames(src, frames, 1000.0, [i / 30 for i in range(4)])
    for g, e in zip(got, frames):
        np.testing.assert_allclose(g.T_world_cam_gt, e.T_world_cam_gt, atol=1e-8)
    assert len(open_source(str(root), max_frames=1)) == 1


def test_redwood_camera_intrinsic_json_jpg_no_log(tmp_path, frames):
    root = write_redwood(tmp_path / "r", frames, log_name=None, intrinsic_name="camera_intrinsic.json",
                         color_ext=".jpg")
    src = RedwoodSource(root)
    assert src.intrinsics == TINY and not src.has_gt_poses
    _check_frames(src, frames, 1000.0, [i / 30 for i in range(4)], exact_color=False)


def test_redwood_default_intrinsics(tmp_path, caplog):
    vga = orbit(1, Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480))
    with caplog.at_level(logging.WARNING):
        src = RedwoodSource(write_redwood(tmp_path / "r", vga, intrinsic_name=None))
    assert src.intrinsics == Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)
    assert "PrimeSense" in caplog.text


def test_redwood_not_detected_with_synth_json(tmp_path, frames):
    root = write_redwood(tmp_path / "r", frames[:1])
    assert RedwoodSource.detect(root)
    (root / "synth.json").write_text("{}")
    assert not RedwoodSource.detect(root)


def test_redwood_count_mismatch(tmp_path, frames):
    root = write_redwood(tmp_path / "r", frames, log_name=None)
    (root / "color" / "000003.png").unlink()
    one_line_error(lambda: open_source(str(root)), "color/ holds 3", "depth/ holds 4")


def test_redwood_log_count_mismatch(tmp_path, frames):
    root = write_redwood(tmp_path / "r", frames)
    lines = (root / "trajectory.log").read_text().splitlines()
    (root / "trajectory.log").write_text("\n".join(lines[:15]) + "\n")
    one_line_error(lambda: RedwoodSource(root), "trajectory.log", "3 poses")


# --- bad input ------------------------------------------------------------------------------------

def test_open_source_missing_empty_unknown(tmp_path):
    one_line_error(lambda: open_source(str(tmp_path / "nope")), "nope", "no such")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: open_source(str(tmp_path / "empty")), "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("hello")
    one_line_error(lambda: open_source(str(tmp_path / "odd")), "odd", "unknown dataset layout")


def test_max_frames_must_be_positive(tmp_path, frames):
    root = write_sevenscenes(tmp_path / "s", frames[:1])
    one_line_error(lambda: open_source(str(root), max_frames=0), "max_frames")


@pytest.mark.parametrize("kind", ["depth", "color"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_bad_image_fails_at_that_frame(tmp_path, frames, kind, damage):
    root = write_sevenscenes(tmp_path / "s", frames)
    bad = root / "rgbd-frames" / f"frame-000002.{kind}.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not an image at all" * 10)
    src = open_source(str(root))  # opening reads no pixels
    it = iter(src)
    assert [next(it).index for _ in range(2)] == [0, 1]
    msg = one_line_error(lambda: next(it), "frame-000002")
    assert "cannot read" in msg


def test_missing_image_at_iteration(tmp_path, frames):
    root = write_redwood(tmp_path / "r", frames)
    src = RedwoodSource(root)
    (root / "depth" / "000001.png").unlink()
    one_line_error(lambda: list(src), "000001.png", "missing")


def test_all_zero_depth_is_yielded(tmp_path, frames):
    root = write_sevenscenes(tmp_path / "s", frames[:2])
    Image.fromarray(np.zeros((48, 64), np.uint16)).save(root / "rgbd-frames" / "frame-000001.depth.png")
    got = list(open_source(str(root)))
    assert len(got) == 2 and not got[1].depth_m.any()


def test_colour_of_other_size_is_resized_to_depth(tmp_path, frames, caplog):
    root = write_redwood(tmp_path / "r", frames[:2])
    for i, f in enumerate(frames[:2]):
        big = Image.fromarray(f.color).resize((128, 96), Image.Resampling.NEAREST)
        big.save(root / "color" / f"{i:06d}.png")
    with caplog.at_level(logging.INFO):
        got = list(RedwoodSource(root))
    assert got[0].color.shape == (48, 64, 3) and got[0].intrinsics == TINY
    assert np.abs(got[1].color.astype(int) - frames[1].color).mean() < 3
    assert caplog.text.count("resizing colour") == 1


def test_depth_of_other_size_fails_naming_file(tmp_path, frames):
    root = write_sevenscenes(tmp_path / "s", frames[:3])
    path = root / "rgbd-frames" / "frame-000001.depth.png"
    Image.fromarray(np.ones((24, 32), np.uint16)).save(path)
    it = iter(open_source(str(root)))
    next(it)
    one_line_error(lambda: next(it), "frame-000001.depth.png", "32x24")


def test_depth_size_differs_from_intrinsics_json(tmp_path, frames):
    root = write_redwood(tmp_path / "r", frames[:1])
    (root / "intrinsic.json").write_text(
        '{"width": 32, "height": 24, "intrinsic_matrix": [30, 0, 0, 0, 30, 0, 15.5, 11.5, 1]}')
    one_line_error(lambda: RedwoodSource(root), "000000.png", "intrinsic.json")


@pytest.mark.parametrize("image, expected", [
    (np.zeros((48, 64), np.uint8), "16-bit"),
    (np.zeros((48, 64, 3), np.uint8), "1 channel"),
])
def test_depth_wrong_format(tmp_path, frames, image, expected):
    root = write_sevenscenes(tmp_path / "s", frames[:2])
    Image.fromarray(image).save(root / "rgbd-frames" / "frame-000001.depth.png")
    one_line_error(lambda: list(SevenScenesSource(root)), "frame-000001.depth.png", expected)


def test_colour_wrong_channel_count(tmp_path, frames):
    root = write_sevenscenes(tmp_path / "s", frames[:1])
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(root / "rgbd-frames" / "frame-000000.color.png")
    one_line_error(lambda: list(SevenScenesSource(root)), "frame-000000.color.png", "1 channel")


def test_nan_in_pose_files(tmp_path, frames):
    root = write_sevenscenes(tmp_path / "s", frames[:2])
    pose = root / "rgbd-frames" / "frame-000001.pose.txt"
    pose.write_text(pose.read_text().replace(pose.read_text().split()[0], "nan", 1))
    one_line_error(lambda: open_source(str(root)), "frame-000001.pose.txt:1", "NaN")

    root = write_tum(tmp_path / "t", frames)
    lines = (root / "groundtruth.txt").read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:2] + ["nan"] + lines[2].split()[3:])
    (root / "groundtruth.txt").write_text("\n".join(lines) + "\n")
    one_line_error(lambda: open_source(str(root)), "groundtruth.txt:3")

    root = write_redwood(tmp_path / "r", frames)
    lines = (root / "trajectory.log").read_text().splitlines()
    lines[7] = "0 nan 0 1"
    (root / "trajectory.log").write_text("\n".join(lines) + "\n")
    one_line_error(lambda: open_source(str(root)), "trajectory.log:8", "NaN")


@pytest.mark.parametrize("text, expected", [
    ("60 0 31.5\n0 sixty 23.5\n0 0 1\n", "camera-intrinsics.txt:2"),
    ("60 0 31.5\n0 60 23.5\n", "3 rows of 3"),
    ("60 0 31.5 0\n0 60 23.5 0\n0 0 1 0\n", "3 rows of 3"),
    ("0 0 31.5\n0 60 23.5\n0 0 1\n", "focal lengths must be positive"),
    ("-60 0 31.5\n0 60 23.5\n0 0 1\n", "focal lengths must be positive"),
    ("60 0 320\n0 60 240\n0 0 1\n", "principal point"),
    ("60 0 31.5\n0 60 nan\n0 0 1\n", "non-finite"),
])
def test_wrong_sevenscenes_intrinsics(tmp_path, frames, text, expected):
    root = write_sevenscenes(tmp_path / "s", frames[:1])
    (root / "camera-intrinsics.txt").write_text(text)
    one_line_error(lambda: open_source(str(root)), "camera-intrinsics.txt", expected)


@pytest.mark.parametrize("text, expected", [
    ("{not json", "not valid JSON"),
    ('{"width": 64, "height": 48, "intrinsic_matrix": [60, 0, 0, 0, 60, 0, 31.5, 23.5]}', "9 numbers"),
    ('{"width": 64, "height": 48, "intrinsic_matrix": [60, 0, 0, 0, "a", 0, 31.5, 23.5, 1]}', "non-numeric"),
    ('{"width": 64, "height": 48, "intrinsic_matrix": [0, 0, 0, 0, 60, 0, 31.5, 23.5, 1]}', "focal"),
    ('{"width": 64, "height": 48, "intrinsic_matrix": [60, 0, 0, 0, 60, 0, 99, 23.5, 1]}', "principal point"),
    ('{"height": 48, "intrinsic_matrix": [60, 0, 0, 0, 60, 0, 31.5, 23.5, 1]}', "'width'"),
])
def test_wrong_redwood_intrinsics(tmp_path, frames, text, expected):
    root = write_redwood(tmp_path / "r", frames[:1])
    (root / "intrinsic.json").write_text(text)
    one_line_error(lambda: open_source(str(root)), "intrinsic.json", expected)


@pytest.mark.parametrize("text, expected", [
    ("60 60 31.5\n", "fx fy cx cy"),
    ("60 60 31.5 x\n", "camera.txt:1"),
    ("60 0 31.5 23.5\n", "focal"),
])
def test_wrong_tum_camera_file(tmp_path, frames, text, expected):
    root = write_tum(tmp_path / "t", frames[:2])
    (root / "camera.txt").write_text(text)
    one_line_error(lambda: open_source(str(root)), "camera.txt", expected)


def test_malformed_tum_list_line_and_missing_image(tmp_path, frames):
    root = write_tum(tmp_path / "t", frames[:2])
    next((root / "depth").iterdir()).unlink()
    one_line_error(lambda: TumSource(root), "depth.txt", "missing")
    with open(root / "depth.txt", "a") as fh:
        fh.write("1305031103.5\n")
    one_line_error(lambda: TumSource(root), "depth.txt:4")


# --- real data ------------------------------------------------------------------------------------

def test_real_sevenscenes_redkitchen():
    root = shared_data("7scenes-redkitchen-50")  # skips when ../shared/data is absent
    src = open_source(str(root))
    assert isinstance(src, SevenScenesSource) and len(src) == 50 and src.has_gt_poses
    assert src.intrinsics == Intrinsics(585.0, 585.0, 320.0, 240.0, 640, 480)
    first_pose = np.loadtxt(root / "rgbd-frames" / "frame-000150.pose.txt")
    np.testing.assert_allclose(src.first_gt_pose(), first_pose)
    lo, hi = np.inf, 0.0
    for i, f in enumerate(src):
        valid = f.depth_m[f.depth_m > 0]
        lo, hi = min(lo, valid.min()), max(hi, valid.max())
        assert f.color.shape == (480, 640, 3) and f.timestamp_s == pytest.approx(i / 30)
    assert 0.9 < lo < 1.0 and 3.0 < hi < 3.1


def test_real_tum_single_frame():
    root = shared_data("tum-single-frame")
    color = read_color(root / "TUM_color.png")
    depth = read_depth_m(root / "TUM_depth.png", 5000.0)
    assert color.shape == (480, 640, 3) and depth.shape == (480, 640) and depth.dtype == np.float32
    valid = depth[depth > 0]
    assert 0.5 * depth.size < valid.size < depth.size
    assert 0.2 < valid.min() and valid.max() < 10.0
