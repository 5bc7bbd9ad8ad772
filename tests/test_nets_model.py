"""The labeling net: chunk-wise inference equals whole-scene inference in the cores, weights checks,
training steps that lower the loss, and the grid symmetries used for augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.coarse import CoarseGridConfig, all_chunk_keys, coarse_region
from fusion.errors import UserError
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.sources.synthetic import SyntheticSource
from fusion.volume import VolumeConfig
from nets.batch import Symmetry
from nets.infer import ChunkModel, save_weights
from nets.model import SemanticCompletionNet, receptive_field_cells


@pytest.fixture(scope="module")
def fused():
    src = SyntheticSource(4, n_frames=300, max_frames=40)
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02), poses="gt", incremental_mesh=False))
    for i in range(0, 40, 2):
        pipe.process(src.frame(i))
    yield pipe
    pipe.close()


def _by_cell(pred) -> dict:
    return {tuple(c): (p, s) for c, p, s in zip(pred.coords.tolist(), pred.probs, pred.sdf_vox)}


def test_chunk_inference_equals_whole_scene_in_the_core(fused):
    model = ChunkModel.untrained(seed=1)
    grid = model.grid
    keys = sorted(all_chunk_keys(fused.volume, grid))
    whole = _by_cell(model.predict(coarse_region(fused.volume, keys, grid)))
    sizes = {k: sum(tuple(np.floor_divide(c, grid.chunk_voxels)) == k for c in whole) for k in keys}
    checked = 0
    for key in sorted(keys, key=sizes.get)[-2:]:
        part = _by_cell(model.predict(coarse_region(fused.volume, [key], grid)))
        assert part, f"chunk {key} produced no sites"
        assert set(part) == {c for c in whole if tuple(np.floor_divide(c, grid.chunk_voxels)) == key}
        for cell, (p, s) in part.items():
            np.testing.assert_allclose(p, whole[cell][0], atol=1e-4)
            np.testing.assert_allclose(s, whole[cell][1], atol=1e-4)
        checked += len(part)
    assert checked > 500


def test_a_short_halo_changes_the_core(fused):
    """The halo is needed: without it, border sites of a chunk differ from the whole-scene pass."""
    model = ChunkModel.untrained(seed=1)
    grid = model.grid
    keys = sorted(all_chunk_keys(fused.volume, grid))
    whole = _by_cell(model.predict(coarse_region(fused.volume, keys, grid)))
    bare = CoarseGridConfig(halo_voxels=0)
    diffs = 0
    for key in keys[:3]:
        part = _by_cell(model.predict(coarse_region(fused.volume, [key], bare)))
        diffs += sum(not np.allclose(p, whole[c][0], atol=1e-4) for c, (p, _) in part.items() if c in whole)
    assert diffs > 0
    assert model.grid.halo_voxels >= receptive_field_cells()


def test_weights_round_trip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    net = SemanticCompletionNet()
    path = tmp_path / "w.pt"
    save_weights(path, net, CoarseGridConfig())
    loaded = ChunkModel.load(path)
    for a, b in zip(net.state_dict().values(), loaded.net.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="no model weights"):
        ChunkModel.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a readable weights file"):
        ChunkModel.load(tmp_path / "junk.pt")
    state = torch.load(path, weights_only=True)
    state["classes"] = state["classes"][::-1]
    torch.save(state, tmp_path / "classes.pt")
    with pytest.raises(UserError, match="other classes"):
        ChunkModel.load(tmp_path / "classes.pt")
    state = torch.load(path, weights_only=True)
    state["state_dict"]["sem.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(UserError, match="do not fit the model"):
        ChunkModel.load(tmp_path / "shape.pt")


@pytest.mark.parametrize("sym", [Symmetry(True, False, False), Symmetry(False, True, True), Symmetry(True, True, True)])
def test_symmetries_map_cells_and_coarse_cells_consistently(sym):
    c = np.random.default_rng(0).integers(-20, 20, (200, 3))
    np.testing.assert_array_equal(sym.invert(sym.apply(c)), c)
    # cells of one 2x2x2 parent stay together under the symmetry (strides stay aligned)
    parents = np.floor_divide(c, 2)
    moved = np.floor_divide(sym.apply(c), 2)
    for p in np.unique(parents, axis=0):
        rows = np.all(parents == p, axis=1)
        assert len(np.unique(moved[rows], axis=0)) == 1


def test_gpu_style_coarse_extraction_equals_cpu(fused):
    # the GPU branch (only the region's blocks copied to the host) run on the CPU device
    grid, vol = CoarseGridConfig(halo_voxels=0), fused.volume  # one chunk: not a prefix of the buffer rows
    cpu = max((coarse_region(vol, [k], grid) for k in all_chunk_keys(vol, grid)), key=lambda r: len(r.coords))
    key = cpu.keys[0]
    vol.on_cpu = False
    try:
        gpu = coarse_region(vol, [key], grid)
    finally:
        vol.on_cpu = True
    assert len(cpu.coords) > 100
    assert np.array_equal(gpu.coords, cpu.coords) and np.array_equal(gpu.core, cpu.core)
    np.testing.assert_array_equal(gpu.features, cpu.features)


def test_a_net_that_reads_height_starts_as_the_net_it_came_from_and_tells_heights_apart(fused):
    """Weights trained without height go on unchanged when the height input is added; once its
    weights are non-zero, the same geometry at another height is labeled differently."""
    from nets.model import with_height_input
    from nets.sparse import SparseTensor

    torch.manual_seed(0)
    net = SemanticCompletionNet().eval()
    region = coarse_region(fused.volume, sorted(all_chunk_keys(fused.volume, CoarseGridConfig()))[:2], CoarseGridConfig())
    tall = with_height_input(net).eval()
    assert tall.config.height_input and tall.enc0[0].weight.shape[1] == net.enc0[0].weight.shape[1] + 1

    def logits(model, lift_cells: int = 0):
        coords = region.coords + np.array([0, 0, lift_cells], np.int32)
        x = SparseTensor.from_coords(torch.from_numpy(coords), torch.from_numpy(region.features))
        with torch.no_grad():
            return model(x).logits

    torch.testing.assert_close(logits(tall), logits(net))
    with torch.no_grad():
        tall.enc0[0].weight[:, -1].normal_()
    torch.testing.assert_close(logits(net, 40), logits(net))  # 40 cells: a multiple of every stride
    assert not torch.allclose(logits(tall, 40), logits(tall), atol=1e-3)


def test_tilted_symmetries_invert_and_keep_the_floor_near_the_pivot():
    rng = np.random.default_rng(3)
    sym = Symmetry.random(rng, 4, 1, max_tilt_deg=5.0, pivot=(10, 10, 0))
    assert any(abs(a) > 0 for a in sym.tilt_rad) and max(abs(np.degrees(a)) for a in sym.tilt_rad) <= 5.0
    c = rng.integers(-20, 40, (500, 3))
    back = sym.invert(sym.apply(c))
    assert np.abs(back - c).max() <= 1 and np.mean(np.all(back == c, axis=1)) > 0.7  # re-gridding rounds
    floor = np.array([[10, 10, 0], [12, 9, 0]])
    assert np.abs(sym.apply(floor)[:, 2] - sym.shift[2]).max() <= 1


def test_weights_from_before_the_ceiling_class_load_and_label_as_they_did(fused, tmp_path):
    """A weights file of ScanNet-20 + empty gets a ceiling output that is never the most likely."""
    from nets.data import CLASS_IDS
    from nets.infer import class_table
    from nets.sparse import SparseTensor

    torch.manual_seed(0)
    net = SemanticCompletionNet().eval()
    save_weights(tmp_path / "new.pt", net, CoarseGridConfig())
    state = torch.load(tmp_path / "new.pt", weights_only=True)
    ceiling = int(np.nonzero(CLASS_IDS == 22)[0][0])
    keep = [i for i in range(net.config.n_classes) if i != ceiling]
    state["classes"] = class_table()[:-1]
    state["model_config"]["n_classes"] = len(keep)
    state["state_dict"]["sem.weight"] = state["state_dict"]["sem.weight"][keep]
    state["state_dict"]["sem.bias"] = state["state_dict"]["sem.bias"][keep]
    torch.save(state, tmp_path / "old.pt")
    old = ChunkModel.load(tmp_path / "old.pt").net
    region = coarse_region(fused.volume, sorted(all_chunk_keys(fused.volume, CoarseGridConfig()))[:1], CoarseGridConfig())
    x = SparseTensor.from_coords(torch.from_numpy(region.coords), torch.from_numpy(region.features))
    with torch.no_grad():
        a, b = net(x).logits, old(x).logits
    torch.testing.assert_close(b[:, keep], a[:, keep])
    assert bool((b.argmax(1) != ceiling).all())
