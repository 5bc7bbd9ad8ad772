"""The headless contract: `main.py reconstruct` outputs, read back by other libraries, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import trimesh
from plyfile import PlyData

from tests.fixtures_rgbd import write_sevenscenes, write_tum
from tests.scenes import SMALL, orbit

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc, *words):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def kitchen_like(tmp_path_factory):
    return write_sevenscenes(tmp_path_factory.mktemp("ds") / "seq", orbit(12, SMALL, step_deg=2.0))


def test_reconstruct_writes_mesh_trajectory_stats(kitchen_like, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("reconstruct", kitchen_like, "--out", out, "--voxel-size", "0.02")
    assert proc.returncode == 0, proc.stderr
    ply = PlyData.read(str(out / "mesh.ply"))
    assert not ply.text and ply.byte_order == "<"
    names = [p.name for p in ply["vertex"].properties]
    assert names == ["x", "y", "z", "red", "green", "blue", "alpha", "label"]
    assert ply["vertex"]["label"].dtype == np.uint16 and ply["vertex"]["x"].dtype == np.float32
    n = len(ply["vertex"].data)
    assert n > 500 and len(ply["face"].data) > 500
    tm = trimesh.load(out / "mesh.ply", process=False)
    assert len(tm.vertices) == n
    om = o3d.io.read_triangle_mesh(str(out / "mesh.ply"))
    assert len(om.vertices) == n and om.has_vertex_colors()
    traj = [ln for ln in (out / "trajectory.txt").read_text().splitlines() if not ln.startswith("#")]
    assert len(traj) == 12 and all(len(ln.split()) == 8 for ln in traj)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["frames"] == 12 and stats["frames_dropped"] == 0 and stats["completed"]
    assert stats["ate_rmse_m"] < 0.01
    assert {"track", "track_render", "track_icp", "integrate", "mesh"} <= set(stats["timing_ms"])
    for key in ("fps", "timing_ms", "tracking_failures", "device", "versions", "label_latency_s",
                "volume_memory_mb", "labels", "label_work"):
        assert key in stats
    completed = PlyData.read(str(out / "completed.ply"))  # always written (empty without labels)
    assert [p.name for p in completed["vertex"].properties] == names


def test_labels_option(kitchen_like, tmp_path):
    """--labels final runs the shipped model, or fails cleanly naming the missing weights."""
    from nets.infer import DEFAULT_WEIGHTS

    out = tmp_path / "o"
    proc = run_cli("reconstruct", kitchen_like, "--out", out, "--voxel-size", "0.02", "--max-frames", "4",
                   "--labels", "final", "--no-progress")
    if not DEFAULT_WEIGHTS.is_file():
        assert_clean_error(proc, "--labels final", "weights")
        return
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "stats.json").read_text())["labels"] == "final"
    assert np.mean(PlyData.read(str(out / "mesh.ply"))["vertex"]["label"] > 0) > 0.9

def test_weights_option_uses_the_given_file(kitchen_like, tmp_path):
    """--weights labels with that file (incremental by default, named in stats.json); a file that is not
    a weights file fails cleanly."""
    from nets.infer import ChunkModel, save_weights

    weights = tmp_path / "mine.pt"
    model = ChunkModel.untrained(seed=3)
    save_weights(weights, model.net, model.grid)
    out = tmp_path / "o"
    proc = run_cli("reconstruct", kitchen_like, "--out", out, "--voxel-size", "0.02", "--max-frames", "4",
                   "--weights", weights, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["labels"] == "incremental" and stats["label_work"]["weights"] == str(weights)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a pickle")
    proc = run_cli("reconstruct", kitchen_like, "--out", tmp_path / "b", "--max-frames", "2", "--weights", bad,
                   "--labels", "final", "--no-progress")
    assert_clean_error(proc, "bad.pt", "weights")



def test_ground_truth_poses_and_max_frames(kitchen_like, tmp_path):
    proc = run_cli("reconstruct", kitchen_like, "--out", tmp_path, "--poses", "gt", "--max-frames", "5",
                   "--voxel-size", "0.02", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "stats.json").read_text())["frames"] == 5


def _folder(root: Path, *files: str) -> Path:
    root.mkdir()
    for name in files:
        (root / name).write_text("x")
    return root


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "missing", ("no such",)),
    (lambda p: _folder(p / "empty"), ("empty",)),
    (lambda p: _folder(p / "odd", "notes.txt"), ("layout",)),
])
def test_bad_source_paths(tmp_path, make, words):
    assert_clean_error(run_cli("reconstruct", make(tmp_path), "--out", tmp_path / "o"), *words)


def test_truncated_image_mid_sequence_keeps_what_was_fused(tmp_path):
    ds = write_sevenscenes(tmp_path / "seq", orbit(8, SMALL, step_deg=2.0))
    bad = ds / "rgbd-frames" / "frame-000005.depth.png"
    bad.write_bytes(bad.read_bytes()[:60])
    proc = run_cli("reconstruct", ds, "--out", tmp_path / "o", "--voxel-size", "0.02")
    assert_clean_error(proc, "frame-000005")
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["frames"] == 5 and not stats["completed"]
    assert len(PlyData.read(str(tmp_path / "o" / "mesh.ply"))["face"].data) > 100


def test_depth_all_zeros(tmp_path):
    frames = orbit(3, SMALL)
    from fusion.frame import Frame

    zero = [Frame(f.color, np.zeros_like(f.depth_m), f.intrinsics, f.timestamp_s, f.index, f.T_world_cam_gt)
            for f in frames]
    assert_clean_error(run_cli("reconstruct", write_sevenscenes(tmp_path / "z", zero), "--out", tmp_path / "o"),
                       "no frame has valid depth")
    assert (tmp_path / "o" / "stats.json").exists()


def test_mismatched_colour_size_is_resized(tmp_path):
    ds = write_sevenscenes(tmp_path / "seq", orbit(4, SMALL))
    from PIL import Image

    for p in (ds / "rgbd-frames").glob("*.color.png"):
        Image.open(p).resize((320, 240)).save(p)
    proc = run_cli("reconstruct", ds, "--out", tmp_path / "o", "--voxel-size", "0.02")
    assert proc.returncode == 0, proc.stderr


def test_non_monotonic_timestamps(tmp_path):
    ds = write_tum(tmp_path / "tum", orbit(4, SMALL))
    lines = (ds / "depth.txt").read_text().splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    body[1], body[2] = body[2], body[1]
    (ds / "depth.txt").write_text("\n".join(body) + "\n")
    assert_clean_error(run_cli("reconstruct", ds, "--out", tmp_path / "o"), "timestamp")


def test_nan_in_pose_file(tmp_path):
    ds = write_sevenscenes(tmp_path / "seq", orbit(4, SMALL))
    (ds / "rgbd-frames" / "frame-000002.pose.txt").write_text("nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    assert_clean_error(run_cli("reconstruct", ds, "--out", tmp_path / "o"), "frame-000002.pose.txt")


def test_wrong_intrinsics_file(tmp_path):
    ds = write_sevenscenes(tmp_path / "seq", orbit(2, SMALL))
    (ds / "camera-intrinsics.txt").write_text("585 0 320\n0 585\n")
    assert_clean_error(run_cli("reconstruct", ds, "--out", tmp_path / "o"), "camera-intrinsics.txt")


def test_option_errors(kitchen_like, tmp_path):
    ds_no_poses = write_sevenscenes(tmp_path / "np", orbit(2, SMALL), poses=False)
    assert_clean_error(run_cli("reconstruct", ds_no_poses, "--out", tmp_path / "o", "--poses", "gt"), "ground-truth")
    assert_clean_error(run_cli("reconstruct", kitchen_like, "--out", tmp_path / "o", "--voxel-size", "5"), "voxel")
    assert_clean_error(run_cli("reconstruct", "synthetic:x", "--out", tmp_path / "o"), "seed")
    assert_clean_error(run_cli("reconstruct", "recording.db3", "--out", tmp_path / "o"), "recording")


def test_loop_closure_flag_turns_it_on_and_reports_it(kitchen_like, tmp_path):
    proc = run_cli("reconstruct", kitchen_like, "--out", tmp_path, "--max-frames", "4", "--voxel-size", "0.02",
                   "--labels", "none", "--loop-closure", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    loops = json.loads((tmp_path / "stats.json").read_text())["loop_closure"]
    assert loops["keyframes"] >= 1 and loops["accepted"] == 0
