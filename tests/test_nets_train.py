"""Training: samples from fused synthetic scans, determinism, resume, a falling loss, DDP under torchrun."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nets.batch import make_batch
from nets.data import IGNORE, SampleConfig, build_dataset, make_sample
from nets.model import SemanticCompletionNet
from nets.train import TrainConfig, class_weights, loss_terms, train

ROOT = Path(__file__).resolve().parents[1]
TINY = SampleConfig(path_frames=60, window_frames=(16, 16), frame_step=4, voxel_sizes_m=(0.02,))
FAST = replace(TrainConfig(), steps=3, warmup_steps=1, checkpoint_every=1, val_every=1000, crop_cells=24, threads=1)


@pytest.fixture(scope="module")
def samples():
    return [make_sample(7, 0, TINY), make_sample(8, 0, TINY)]


def test_a_room_that_cannot_be_scanned_is_left_out_of_a_dataset_with_a_warning(tmp_path, caplog):
    """Room 3134's furniture leaves no camera path: the dataset is written without it."""
    with caplog.at_level(logging.WARNING, logger="nets.data"):
        assert build_dataset(tmp_path, [3134], 1, TINY, progress=False) == []
    assert "room 3134 variant 0 left out" in caplog.text and not list(tmp_path.glob("*.npz"))


def test_samples_are_deterministic_and_sit_on_the_ground_truth(samples):
    again = make_sample(7, 0, TINY)
    np.testing.assert_array_equal(again.coords, samples[0].coords)
    np.testing.assert_array_equal(again.features, samples[0].features)
    s = samples[0]
    sdf = s.sdf_cells[tuple((s.coords - s.box_lo).T)].astype(np.float32)
    assert len(s.coords) > 500
    assert np.median(np.abs(sdf)) < 0.5  # observed sites hug the complete ground-truth surface
    labels = s.label[np.abs(s.sdf_cells.astype(np.float32)) < 0.75]
    assert len(np.unique(labels[labels != IGNORE])) >= 3


def _weights(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=False)["model"]


def test_training_is_deterministic_and_resumes_exactly(samples, tmp_path):
    train(samples, [], tmp_path / "a", FAST, progress=False)
    train(samples, [], tmp_path / "b", FAST, progress=False)
    train(samples, [], tmp_path / "c", FAST, progress=False, stop_at=2)
    assert not (tmp_path / "c" / "model.pt").exists()
    train(samples, [], tmp_path / "c", FAST, progress=False, resume=True)
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.allclose(a[k], c[k], atol=1e-6), k
    assert (tmp_path / "a" / "model.pt").exists()


def test_loss_falls_when_fitting_one_scan(samples):
    torch.manual_seed(0)
    net = SemanticCompletionNet()
    cfg = replace(FAST, lr=3e-3)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    w = class_weights(samples[:1], cfg)
    losses = []
    for _ in range(25):
        x, targets = make_batch(samples[:1], None)
        terms = loss_terms(net, x, targets, w, cfg)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_torchrun_ddp_trains_on_two_processes(samples, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, s in enumerate(samples):
        s.save(data / f"{i}_0.npz")
    with socket.socket() as sock:  # a free port: another suite on this machine may be running the same test
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "nets.train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "2", "--threads", "1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").exists()


def test_fine_tuning_starts_from_a_weights_file(samples, tmp_path):
    from fusion.errors import UserError
    from nets.model import ModelConfig

    train(samples, [], tmp_path / "a", FAST, progress=False)
    start = tmp_path / "a" / "weights.pt"
    train(samples, [], tmp_path / "b", replace(FAST, lr=0.0), progress=False, init=start)  # lr 0: nothing moves
    fresh = torch.load(start, weights_only=True)["state_dict"]
    tuned = _weights(tmp_path / "b")
    assert all(torch.equal(fresh[k], tuned[k]) for k in fresh if "running" not in k and "num_batches" not in k)
    other = replace(FAST, model=replace(ModelConfig(), channels=tuple(c + 8 for c in ModelConfig().channels)))
    with pytest.raises(UserError, match="another model configuration"):
        train(samples, [], tmp_path / "c", other, progress=False, init=start)


def test_shifted_batches_move_the_pooling_phase_and_their_targets_follow(samples):
    """A whole-cell shift (the floor at every phase of the strides) keeps each site's target."""
    from nets.batch import Augment

    plain_x, plain_t = make_batch(samples[:1], None)
    plain = dict(zip(map(tuple, plain_x.coordinates.numpy()), plain_t.semantic(plain_x.coordinates.numpy(), np.ones(len(plain_x.coordinates), bool))))
    aug = Augment(colour_jitter=0.0, max_shift_cells=4)
    shifts = set()
    for seed in range(6):
        x, t = make_batch(samples[:1], np.random.default_rng(seed), aug)
        sym = t.symmetries[0]
        shifts.add(sym.shift)
        c4 = x.coordinates.numpy()
        sem = t.semantic(c4, np.ones(len(c4), bool))
        back = sym.invert(c4[:, 1:])
        for row in np.random.default_rng(seed).choice(len(c4), 50, replace=False):
            assert sem[row] == plain[(0, *back[row])]
    assert len(shifts) > 1 and any(s[2] % 2 for s in shifts)  # odd z shifts: the floor leaves cell 0's phase


def test_colour_dropout_leaves_geometry_and_blanks_colour(samples):
    from nets.batch import Augment

    x, _ = make_batch(samples[:1], np.random.default_rng(0), Augment(colour_jitter=0.0, colour_dropout=1.0))
    f = x.features.numpy()
    assert np.all(f[:, 4:7] == 0) and np.any(f[:, :4] != 0)


def test_exposure_scales_linear_colour_and_leaves_geometry(samples):
    from nets.batch import Augment

    rng_seed = 0
    plain, _ = make_batch(samples[:1], np.random.default_rng(rng_seed), Augment(colour_jitter=0.0))
    dark, _ = make_batch(samples[:1], np.random.default_rng(rng_seed), Augment(colour_jitter=0.0, exposure=(0.3, 0.3)))
    p, d = plain.features.numpy(), dark.features.numpy()
    assert np.allclose(d[:, 4:7] + 0.5, (p[:, 4:7] + 0.5) * 0.3, atol=1e-6)
    assert np.array_equal(d[:, :4], p[:, :4])


def test_class_recolour_repaints_each_class_as_a_whole_and_leaves_geometry(samples):
    """Every site of a class gets one gain and one new mean (the class's colour changes, its texture
    stays); the geometry features and the sites do not move."""
    from nets.batch import Augment
    from nets.model import EMPTY

    plain, t = make_batch(samples[:1], np.random.default_rng(3), Augment(colour_jitter=0.0))
    paint, _ = make_batch(samples[:1], np.random.default_rng(3), Augment(colour_jitter=0.0, class_recolour=1.0))
    assert torch.equal(plain.coordinates, paint.coordinates)
    p, q = plain.features.numpy(), paint.features.numpy()
    assert np.array_equal(p[:, :4], q[:, :4])
    classes = t.semantic(plain.coordinates.numpy(), np.ones(len(p), bool))
    moved = 0
    for k in np.unique(classes[classes != EMPTY]):
        rows = (classes == k) & np.all(np.abs(q[:, 4:7]) < 0.499, axis=1)  # clipped sites leave the line
        if rows.sum() < 10:
            continue
        a, b = p[rows, 4:7], q[rows, 4:7]
        da, db = a - a.mean(0), b - b.mean(0)
        gain = (da * db).sum() / max((da * da).sum(), 1e-12)
        assert np.allclose(db, gain * da, atol=0.02)
        moved += np.abs(b.mean(0) - a.mean(0)).max() > 0.05
    assert moved >= 1


def test_real_scan_augmentation_cuts_walls_punches_holes_and_targets_follow_a_tilt(samples):
    """Walls scanned part of the way up, holes and a tilted gravity; a tilted site keeps (nearly always)
    the target of the cell it came from."""
    from nets.batch import Augment

    s = samples[0]
    cut = Augment(colour_jitter=0.0, partial_wall_chance=1.0, partial_wall_cells=(10, 10), min_sites=1)
    x, t = make_batch(samples[:1], np.random.default_rng(0), cut)
    z = t.symmetries[0].invert(x.coordinates.numpy()[:, 1:])[:, 2]
    assert z.max() < 10 <= s.coords[:, 2].max()
    holes = Augment(colour_jitter=0.0, hole_chance=1.0, hole_radius_cells=(6, 6), min_sites=1)
    assert len(make_batch(samples[:1], np.random.default_rng(0), holes)[0].coordinates) < len(s.coords)
    plain_x, plain_t = make_batch(samples[:1], None)
    plain = dict(zip(map(tuple, plain_x.coordinates.numpy()[:, 1:]),
                     plain_t.semantic(plain_x.coordinates.numpy(), np.ones(len(plain_x.coordinates), bool))))
    x, t = make_batch(samples[:1], np.random.default_rng(1), Augment(colour_jitter=0.0, max_tilt_deg=5.0))
    c4 = x.coordinates.numpy()
    assert any(t.symmetries[0].tilt_rad)
    sem, back = t.semantic(c4, np.ones(len(c4), bool)), t.symmetries[0].invert(c4[:, 1:])
    same = [sem[r] == plain[tuple(back[r])] for r in range(len(c4)) if tuple(back[r]) in plain]
    assert len(same) > 0.7 * len(c4) and np.mean(same) > 0.95


def test_held_out_scores_of_four_turns_score_the_same_sites(samples):
    from nets.infer import ChunkModel
    from nets.metrics import sample_scores

    net = ChunkModel.untrained(seed=2).net
    one, four = sample_scores(net, samples[0]), sample_scores(net, samples[0], turns=4)
    assert one["confusion"].sum() == four["confusion"].sum() > 0
    assert one["sdf_n"] == four["sdf_n"]
    assert not np.array_equal(one["confusion"], four["confusion"])  # the turned passes changed predictions


def test_train_cli_overrides_the_augmentation_and_names_a_bad_field(tmp_path, caplog):
    from nets.train import TrainConfig, _augment_overrides, main

    aug = _augment_overrides(TrainConfig().augment, ["class_recolour=0.15", "exposure=(0.5, 1.0)"])
    assert aug.class_recolour == 0.15 and aug.exposure == (0.5, 1.0)
    assert aug.max_tilt_deg == TrainConfig().augment.max_tilt_deg
    for bad, said in (("recolour=1", "no such field"), ("recolour=lots", "no such field"),
                      ("class_recolour=lots", "the value is not a number")):
        with caplog.at_level(logging.ERROR, logger="nets.train"):
            assert main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--augment", bad]) == 2
        assert f"--augment {bad}: {said}" in caplog.text
        caplog.clear()
