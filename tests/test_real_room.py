"""The real-room check (nets.real_room): scoring by hand, the CLI's errors, and a smoke run on a few
half-resolution frames of the ScanNet room (skipped when ../shared/data is absent)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from storage.plyio import read_labeled_ply
from fusion.sources import open_source
from nets.real_room import VARIANTS, RealRoomConfig, points_path, read_points, run_real_room, table, vertex_scores
from tests.conftest import shared_data

ROOM = "scannet-scene0451_01-points"
SMOKE = RealRoomConfig(frames=12, image_scale=0.5, poisson_depth=8, progress=False)


def test_vertex_scores_by_hand():
    gt = np.array([1, 1, 1, 2, 2, 5], np.uint16)
    pred = np.array([1, 1, 2, 2, 0, 22], np.uint16)  # 0 and 22 (ceiling) are misses, never a class
    s = vertex_scores(pred, gt)
    assert s["class_iou"] == pytest.approx({1: 2 / 3, 2: 1 / 3, 5: 0.0})  # wall 2/(3), floor 1/(2+1)
    assert s["miou"] == pytest.approx((2 / 3 + 1 / 3) / 3)
    assert s["accuracy"] == pytest.approx(3 / 6)
    assert s["confusion"][2] == {2: 1, 0: 1}
    with_ceiling = vertex_scores(np.append(pred, 1), np.append(gt, 22))  # ground-truth ceiling: not scored
    assert with_ceiling["class_iou"] == s["class_iou"] and with_ceiling["vertices_scored"] == 6


def test_missing_room_is_one_line_error(tmp_path, capsys):
    from nets.eval import main

    assert main(["--real-room", str(tmp_path / "nowhere"), "--real-room-out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "nowhere" in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    shared_data(ROOM)  # skips with the reason when the real data is absent
    from nets.infer import ChunkModel

    out = tmp_path_factory.mktemp("real_room")
    return out, run_real_room(out, ChunkModel.load(), SMOKE)


def test_refuses_output_inside_repository():
    from fusion.errors import UserError
    from nets.real_room import ROOT

    with pytest.raises(UserError, match="outside the repository"):
        run_real_room(ROOT / "bench" / "results" / "real_room_frames", None, SMOKE)
    assert not (ROOT / "bench" / "results" / "real_room_frames").exists()


def test_smoke_writes_both_variants_and_scores(smoke):
    out, result = smoke
    posed, unposed = open_source(str(out / "posed")), open_source(str(out / "unposed"))
    assert (posed.kind, posed.has_gt_poses, len(posed)) == ("synthetic-folder", True, SMOKE.frames)
    assert (unposed.kind, unposed.has_gt_poses, len(unposed)) == ("redwood", False, SMOKE.frames)
    assert posed.intrinsics.width == 320
    for mode in ("gt", "track"):
        v = result["variants"][mode]
        assert (out / f"reconstruct_{VARIANTS[mode]}" / "mesh.ply").is_file()
        assert 0.0 <= v["miou"] <= 1.0 and 0.0 <= v["accuracy"] <= 1.0
        assert v["vertices_scored"] > 2000 and v["matched_share"] > 0.8
        assert set(v["class_iou"]) <= {1, 2, 3, 5, 6, 7, 8, 9, 11, 16, 39}
    assert "mIoU" in table(result)


def test_smoke_untracked_output_maps_onto_the_points(smoke):
    """The unposed variant's world is reconstruct's own (the first camera's, or a gravity-aligned frame
    around it), never the points' frame: unmapped, its mesh lies far from the points; mapped by T_gt_out
    it lies on them, and its cameras on the ground-truth path."""
    out, result = smoke
    v = result["variants"]["track"]
    T = np.array(v["T_gt_out"])
    assert np.linalg.norm(T[:3, 3]) > 1.0  # the first camera stands metres from the room's corner
    assert np.allclose(result["variants"]["gt"]["T_gt_out"], np.eye(4), atol=1e-5)
    xyz = read_labeled_ply(out / "reconstruct_unposed" / "mesh.ply")["xyz_m"].astype(np.float64)
    tree = cKDTree(read_points(points_path(shared_data(ROOM))).xyz_m)
    assert np.median(tree.query(xyz)[0]) > 0.2
    assert np.median(tree.query(xyz @ T[:3, :3].T + T[:3, 3])[0]) < 0.03
    assert v["mapped_position_error_m"]["max"] < 0.05


def test_rescore_relabels_the_saved_reconstructions_like_the_final_pass(smoke):
    """Rerunning the final label pass on the saved sessions scores what the run scored (same geometry,
    same weights and turns), and other turns change the labels, not the geometry."""
    from nets.infer import ChunkModel
    from nets.real_room_rescore import rescore_real_room
    from nets.turns import FINAL_TURNS

    out, result = smoke
    model = ChunkModel.load()
    again = rescore_real_room(out, model.with_turns(FINAL_TURNS), SMOKE)
    one_pass = rescore_real_room(out, model, SMOKE)
    phased = rescore_real_room(out, model, SMOKE, phases=2)
    assert again["turns"] == FINAL_TURNS and set(again["variants"]) == {"gt", "track"}
    for mode, v in result["variants"].items():
        assert again["variants"][mode]["vertices"] == v["vertices"]
        assert abs(again["variants"][mode]["miou"] - v["miou"]) < 0.02
        assert one_pass["variants"][mode]["vertices"] == v["vertices"]
        phases = phased["variants"][mode]["phase_miou"]  # the first phase is the scan as it is: a plain rescore
        assert len(phases) == 2 and phases[0] == pytest.approx(one_pass["variants"][mode]["miou"])
        assert phased["variants"][mode]["phase_miou_mean"] == pytest.approx(np.mean(phases))
        assert "phase_miou" not in one_pass["variants"][mode]


def test_rescore_of_a_folder_that_is_no_run_is_one_line_error(tmp_path, capsys):
    from nets.eval import main

    shared_data(ROOM)
    assert main(["--real-room-rescore", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "not the output folder" in err
