"""ScanNet: `.sens` scans read through `open_source`, the label-map TSV, labeled meshes and scene folders."""
from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from fusion.errors import UserError
from fusion.sources import open_source
from fusion.sources.images import resize_color
from fusion.sources.sens import FRAME_HEAD, SensSource, read_header
from nets.scannet import (LabeledMesh, ScanNetScene, read_label_map, read_labeled_mesh, to_labeled_classes)
from tests.conftest import one_line_error
from tests.fixtures_rgbd import TINY
from tests.scenes import orbit
from tests.sens_fixture import depth_to_raw, write_sens

N_FRAMES = 5
INVALID_POSE_FRAME = 2
COLOR_INTR = TINY.scaled(2.0)  # 128x96 colour beside 64x48 depth, same field of view


@pytest.fixture(scope="module")
def scan():
    """Depth frames at TINY, colour rendered along the same path at twice the size, and raw depth."""
    depth_frames = orbit(N_FRAMES, TINY, step_deg=3.0)
    color_frames = orbit(N_FRAMES, COLOR_INTR, step_deg=3.0)
    raws = [depth_to_raw(f.depth_m) for f in depth_frames]
    raws[0][:4, :6] = 0  # a patch of invalid depth
    poses = [None if i == INVALID_POSE_FRAME else f.T_world_cam_gt for i, f in enumerate(depth_frames)]
    return {"colors": [f.color for f in color_frames], "raws": raws, "poses": poses, "depth_frames": depth_frames}


def _write(path, scan, **kw):
    kw.setdefault("color_intr", COLOR_INTR)
    return write_sens(path, scan["colors"], scan["raws"], scan["poses"], TINY, **kw)




# --- .sens ----------------------------------------------------------------------------------------

def test_sens_round_trip_zlib_jpeg(tmp_path, scan):
    path = _write(tmp_path / "scene0000_00.sens", scan)
    src = open_source(str(path))
    assert isinstance(src, SensSource) and len(src) == N_FRAMES
    assert src.intrinsics == TINY
    assert src.has_gt_poses
    np.testing.assert_allclose(src.first_gt_pose(), scan["poses"][0], atol=1e-6)
    frames, depth_frames = list(src), scan["depth_frames"]
    assert [f.index for f in frames] == list(range(N_FRAMES))
    for i, f in enumerate(frames):
        assert f.intrinsics == TINY and f.color.shape == (48, 64, 3) and f.depth_m.dtype == np.float32
        expected = scan["raws"][i].astype(np.float32) / np.float32(1000.0)
        np.testing.assert_array_equal(f.depth_m, expected)
        want_color = resize_color(scan["colors"][i], TINY.width, TINY.height)
        assert np.abs(f.color.astype(int) - want_color).mean() < 1.5  # jpeg, then the same resize
        assert np.abs(f.color.astype(int) - depth_frames[i].color).mean() < 6  # aligned with depth
        assert f.timestamp_s == pytest.approx(i / 30.0)  # the file's timestamps are all 0
        if i == INVALID_POSE_FRAME:
            assert f.T_world_cam_gt is None
        else:
            np.testing.assert_allclose(f.T_world_cam_gt, scan["poses"][i], atol=1e-6)
    assert np.all(frames[0].depth_m[:4, :6] == 0)
    assert src.frames_without_pose == 1 and src.describe()["color"]["codec"] == "jpeg"
    src.close()


def test_sens_raw_codecs_recorded_stamps_and_max_frames(tmp_path, scan):
    colors = [resize_color(c, TINY.width, TINY.height) for c in scan["colors"]]
    stamps = [1_000_000 + 33_333 * i for i in range(N_FRAMES)]
    path = write_sens(tmp_path / "s.sens", colors, scan["raws"], scan["poses"], TINY, TINY,
                      color_codec="raw", depth_codec="raw_ushort", stamps_us=stamps)
    src = open_source(str(path), max_frames=3)
    frames = list(src)
    assert len(src) == len(frames) == 3
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f.color, colors[i])
        np.testing.assert_array_equal(f.depth_m, scan["raws"][i].astype(np.float32) / np.float32(1000.0))
        assert f.timestamp_s == pytest.approx(stamps[i] * 1e-6)


def test_sens_png_colour_and_close_mid_iteration(tmp_path, scan):
    path = _write(tmp_path / "s.sens", scan, color_codec="png")
    src = SensSource(path)
    it = iter(src)
    first = next(it)
    np.testing.assert_array_equal(first.color, resize_color(scan["colors"][0], TINY.width, TINY.height))
    src.close()
    assert next(it, None) is None  # closed: the iteration is over and its file closed
    src.close()


def test_sens_truncated_frame_names_it_after_earlier_frames(tmp_path, scan):
    path = _write(tmp_path / "s.sens", scan)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])  # cuts into the last frame's data
    got = []
    msg = one_line_error(lambda: got.extend(open_source(str(path))), str(path), f"frame {N_FRAMES - 1}", "truncated")
    assert len(got) == N_FRAMES - 1, msg
    offset = read_header(path).data_offset
    path.write_bytes(data[: offset + FRAME_HEAD.size // 2])  # frame 0's head cut short: fails at open
    one_line_error(lambda: open_source(str(path)), "frame 0", "truncated")


def test_sens_bad_headers(tmp_path, scan):
    path = _write(tmp_path / "s.sens", scan)
    data = path.read_bytes()
    path.write_bytes(data[:40])
    one_line_error(lambda: open_source(str(path)), str(path), "header")
    path.write_bytes((3).to_bytes(4, "little") + data[4:])
    one_line_error(lambda: open_source(str(path)), "version")
    occi = _write(tmp_path / "occi.sens", scan, depth_codec="raw_ushort")
    raw = bytearray(occi.read_bytes())
    offset = read_header(occi).data_offset
    raw[offset - 32 : offset - 28] = (2).to_bytes(4, "little", signed=True)  # depth codec -> occi_ushort
    occi.write_bytes(bytes(raw))
    one_line_error(lambda: open_source(str(occi)), "occi_ushort", "not supported")
    one_line_error(lambda: open_source(str(tmp_path / "absent.sens")), "absent.sens")


# --- label map, labeled mesh, scene folder --------------------------------------------------------

TSV = ("id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\n"
       "1\twall\twall\t8277\t1\t12\twall\twall\n"
       "2\tchair\tchair\t4646\t5\t4\tchair\tchair\n"
       "22\tceiling\tceiling\t806\t22\t3\tceiling\tceiling\n")


def test_read_label_map(tmp_path):
    path = tmp_path / "scannetv2-labels.combined.tsv"
    path.write_text(TSV)
    assert read_label_map(path) == {1: 1, 2: 5, 22: 22}
    path.write_text(TSV.replace("\t5\t4\t", "\tfive\t4\t"))
    one_line_error(lambda: read_label_map(path), f"{path}:3", "nyu40id", kind=UserError)
    path.write_text(TSV.replace("nyu40id", "nyu"))
    one_line_error(lambda: read_label_map(path), "nyu40id", kind=UserError)
    one_line_error(lambda: read_label_map(tmp_path / "none.tsv"), "none.tsv", kind=UserError)


def _write_labeled_ply(path, labels):
    n = len(labels)
    verts = np.zeros(n, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                         ("blue", "u1"), ("alpha", "u1"), ("label", "u2")])
    verts["x"], verts["y"], verts["z"] = np.arange(n), np.arange(n) * 2, 1.5
    verts["red"], verts["alpha"], verts["label"] = 10, 255, labels
    faces = np.zeros(n - 2, [("vertex_indices", "i4", (3,))])
    faces["vertex_indices"] = [(i, i + 1, i + 2) for i in range(n - 2)]
    PlyData([PlyElement.describe(verts, "vertex"), PlyElement.describe(faces, "face")]).write(str(path))


def test_read_labeled_mesh_and_scannet20(tmp_path):
    labels = np.array([1, 5, 22, 13, 39, 40, 0], np.uint16)
    _write_labeled_ply(tmp_path / "m.ply", labels)
    mesh = read_labeled_mesh(tmp_path / "m.ply")
    assert isinstance(mesh, LabeledMesh)
    assert mesh.positions_m.dtype == np.float32 and mesh.positions_m.shape == (7, 3)
    np.testing.assert_array_equal(mesh.positions_m[:, 1], np.arange(7) * 2)
    assert mesh.colors.dtype == np.uint8 and np.all(mesh.colors[:, 0] == 10)
    assert mesh.labels.dtype == np.uint16 and mesh.labels.tolist() == labels.tolist()
    assert mesh.faces.shape == (5, 3) and mesh.faces[4].tolist() == [4, 5, 6]
    assert to_labeled_classes(labels).tolist() == [1, 5, 22, 0, 39, 0, 0]  # 22: the ceiling
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    one_line_error(lambda: read_labeled_mesh(tmp_path / "bad.ply"), "bad.ply", kind=UserError)


def test_scannet_scene_pairs_scan_and_target(tmp_path, scan):
    folder = tmp_path / "scene0007_00"
    folder.mkdir()
    one_line_error(lambda: ScanNetScene(folder), "scene0007_00.sens", kind=UserError)
    _write(folder / "scene0007_00.sens", scan)
    one_line_error(lambda: ScanNetScene(folder), "scene0007_00_vh_clean_2.labels.ply", kind=UserError)
    _write_labeled_ply(folder / "scene0007_00_vh_clean_2.labels.ply", np.array([3, 30, 34, 1], np.uint16))
    scene = ScanNetScene(folder)
    src = scene.source(max_frames=2)
    assert isinstance(src, SensSource) and len(list(src)) == 2
    target = scene.target()
    assert target.labels.tolist() == [3, 0, 34, 1] and target.positions_m.shape == (4, 3)  # 30 (whiteboard): not labeled
    one_line_error(lambda: ScanNetScene(tmp_path / "nope"), "nope", kind=UserError)
