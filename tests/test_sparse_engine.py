"""Sparse-convolution engine: every op against dense conv3d / conv_transpose3d, gradcheck, caches, hash."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nets.sparse import (CoordinateSet, GenerativeConv3d, GenerativeUpsample3d, NumbaCoordHash, SortedCoordIndex,
                         SparseBatchNorm, SparseReLU, SparseTensor, StridedConv3d, SubmanifoldConv3d,
                         TransposedConv3d, prune, sparse_conv)
from nets.sparse import coords as C


def random_sites(n: int, batches: int, occupancy: float, seed: int) -> torch.Tensor:
    """(N,4) unique rows (batch, x, y, z) in [0, n)^3 with about `occupancy` filled."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batches, n, n, n, generator=g) < occupancy
    return torch.nonzero(mask).to(torch.int32)


def densify(rows: torch.Tensor, feats: torch.Tensor, batches: int, n: int, shift: int = 0) -> torch.Tensor:
    """(B, C, n, n, n) grid with feats at rows (+shift on x, y, z)."""
    dense = feats.new_zeros(batches, feats.shape[1], n, n, n)
    r = rows.long()
    dense[r[:, 0], :, r[:, 1] + shift, r[:, 2] + shift, r[:, 3] + shift] = feats
    return dense


def at_sites(dense: torch.Tensor, rows: torch.Tensor, shift: int = 0) -> torch.Tensor:
    r = rows.long()
    return dense[r[:, 0], :, r[:, 1] + shift, r[:, 2] + shift, r[:, 3] + shift]


def conv_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """Sparse (K, Cin, Cout) weight as conv3d's (Cout, Cin, k, k, k)."""
    return w.permute(2, 1, 0).reshape(w.shape[2], w.shape[1], k, k, k)


def convt_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """Sparse (K, Cin, Cout) weight as conv_transpose3d's (Cin, Cout, k, k, k)."""
    return w.permute(1, 2, 0).reshape(w.shape[1], w.shape[2], k, k, k)


def make_input(n=10, batches=2, cin=3, seed=0, shift=0, stride=1):
    rows = random_sites(n, batches, 0.3, seed)
    rows[:, 1:] -= shift
    feats = torch.randn(len(rows), cin, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return SparseTensor.from_coords(rows, feats, stride)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_submanifold_equals_masked_dense(k):
    x = make_input(n=9, seed=k)
    conv = SubmanifoldConv3d(3, 4, k, bias=True).double()
    with torch.no_grad():
        conv.bias.normal_()
        y = conv(x)
        dense = F.conv3d(densify(x.coordinates, x.features, 2, 9), conv_weight(conv.weight, k), conv.bias,
                         padding=k // 2)
    assert y.coords is x.coords
    torch.testing.assert_close(y.features, at_sites(dense, x.coordinates), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [2, 3])
def test_strided_equals_dense_stride2(k):
    shift = 6  # sparse rows are negative-shifted: floor division must still match
    x = make_input(n=10, seed=10 + k, shift=shift)
    conv = StridedConv3d(3, 5, k).double()
    with torch.no_grad():
        y = conv(x)
        dense = F.conv3d(densify(x.coordinates, x.features, 2, 10, shift), conv_weight(conv.weight, k),
                         stride=2, padding=C.coarse_pad(k))
    expect = x.coordinates.clone()
    expect[:, 1:] = torch.div(expect[:, 1:], 2, rounding_mode="floor")
    assert y.stride == 2 and set(map(tuple, y.coordinates.tolist())) == set(map(tuple, expect.tolist()))
    assert len(y) == len(set(map(tuple, y.coordinates.tolist())))
    torch.testing.assert_close(y.features, at_sites(dense, y.coordinates, shift // 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [2, 3])
def test_transposed_equals_dense_at_targets(k):
    m, shift = 5, 4
    coarse = make_input(n=m, seed=20 + k, shift=shift // 2, stride=2)
    target_rows = random_sites(2 * m, 2, 0.3, 30 + k)
    target_rows[:, 1:] -= shift
    target = CoordinateSet(target_rows, stride=1)
    conv = TransposedConv3d(3, 2, k).double()
    with torch.no_grad():
        y = conv(coarse, target)
        dense = F.conv_transpose3d(densify(coarse.coordinates, coarse.features, 2, m, shift // 2),
                                   convt_weight(conv.weight, k), stride=2, padding=C.coarse_pad(k),
                                   output_padding=(2 * m) - ((m - 1) * 2 - 2 * C.coarse_pad(k) + k))
    assert y.coords is target
    torch.testing.assert_close(y.features, at_sites(dense, target_rows, shift), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [2, 3])
def test_generative_upsampling_spawns_children(k):
    m = 4
    coarse = make_input(n=m, seed=40 + k, stride=2)
    up = GenerativeUpsample3d(3, 2, k).double()
    with torch.no_grad():
        y = up(coarse)
        size = 2 * m + (1 if k == 3 else 0)  # room for the -1 child, shifted by +1 below
        shift = C.coarse_pad(k)
        dense = F.conv_transpose3d(densify(coarse.coordinates, coarse.features, 2, m),
                                   convt_weight(up.weight, k), stride=2, padding=0)[..., :size, :size, :size]
        reach = F.conv_transpose3d(densify(coarse.coordinates, torch.ones(len(coarse), 1, dtype=torch.float64),
                                           2, m), torch.ones(1, 1, k, k, k, dtype=torch.float64), stride=2)
    expected = torch.nonzero(reach[:, 0] > 0).to(torch.int32)
    expected[:, 1:] -= shift
    assert y.stride == 1
    assert set(map(tuple, y.coordinates.tolist())) == set(map(tuple, expected.tolist()))
    if k == 2:
        assert len(y) == 8 * len(coarse)
    torch.testing.assert_close(y.features, at_sites(dense, y.coordinates, shift), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [1, 3])
def test_generative_conv_dilates_and_equals_dense(k):
    m, pad = 6, k // 2
    x = make_input(n=m, seed=45 + k, stride=4)
    conv = GenerativeConv3d(3, 2, k).double()
    with torch.no_grad():
        y = conv(x)
        dense = F.conv3d(densify(x.coordinates, x.features, 2, m + 2 * pad, pad), conv_weight(conv.weight, k),
                         padding=pad)
        reach = F.conv3d(densify(x.coordinates, torch.ones(len(x), 1, dtype=torch.float64), 2, m + 2 * pad, pad),
                         torch.ones(1, 1, k, k, k, dtype=torch.float64), padding=pad)
    expected = torch.nonzero(reach[:, 0] > 0).to(torch.int32)
    expected[:, 1:] -= pad
    assert y.stride == 4
    assert set(map(tuple, y.coordinates.tolist())) == set(map(tuple, expected.tolist()))
    torch.testing.assert_close(y.features, at_sites(dense, y.coordinates, pad), atol=1e-5, rtol=0)


def test_prune_keeps_marked_sites_and_passes_gradients():
    x = make_input(n=6, seed=50)
    feats = x.features.clone().requires_grad_(True)
    x = x.replace(feats)
    logits = torch.randn(len(x), 1, dtype=torch.float64)
    kept = prune(x, logits)
    mask = logits[:, 0] > 0
    assert torch.equal(kept.coordinates, x.coordinates[mask]) and kept.stride == x.stride
    kept.features.sum().backward()
    assert torch.equal(feats.grad[:, 0], mask.double())
    assert len(prune(x, torch.zeros(len(x), dtype=torch.bool))) == 0


def _gradcheck(fn, feats, weight):
    assert torch.autograd.gradcheck(fn, (feats.requires_grad_(True), weight.requires_grad_(True)),
                                    eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("op", ["submanifold", "strided2", "strided3", "transposed3", "generative2", "dilation3"])
def test_gradcheck(op):
    x = make_input(n=4, batches=1, cin=2, seed=60, stride=2 if op[0] in "tg" else 1)
    kind, k = op.rstrip("0123456789"), int(op[-1]) if op[-1].isdigit() else 3
    if kind == "submanifold":
        kmap = C.submanifold_map(x.coords, k)
    elif kind == "strided":
        kmap = C.strided_map(x.coords, C.downsample(x.coords), k)
    elif kind == "transposed":
        kmap = C.transposed_map(x.coords, CoordinateSet(random_sites(8, 1, 0.3, 61), 1), k)
    elif kind == "generative":
        kmap = C.transposed_map(x.coords, C.children(x.coords, k), k)
    else:
        kmap = C.dilation_map(x.coords, C.dilated(x.coords, k), k)
    weight = torch.randn(k ** 3, 2, 3, dtype=torch.float64)
    _gradcheck(lambda f, w: sparse_conv(f, w, kmap), x.features, weight)


def test_modules_have_parameters_and_train():
    x = make_input(n=8, cin=4, seed=70)
    x = x.replace(x.features.float())
    net = torch.nn.ModuleList([SubmanifoldConv3d(4, 8), SparseBatchNorm(8), SparseReLU(), StridedConv3d(8, 8),
                               TransposedConv3d(8, 4)])
    h = net[2](net[1](net[0](x)))
    out = net[4](net[3](h), x)
    out.features.square().mean().backward()
    params = [p for p in net.parameters()]
    assert len(params) == 5 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert net[0].weight.std() > 0.05


def test_kernel_map_cache_reuses_and_rebuilds():
    x = make_input(n=8, seed=80)
    cache = x.coords.cache
    a, b = SubmanifoldConv3d(3, 3).double(), SubmanifoldConv3d(3, 3).double()
    a(x)
    builds = cache.builds
    b(a(x))
    assert cache.builds == builds and cache.hits >= 2
    assert C.submanifold_map(x.coords, 3) is C.submanifold_map(x.coords, 3)
    down1, down2 = StridedConv3d(3, 3).double()(x), StridedConv3d(3, 3).double()(x)
    assert down1.coords is down2.coords
    other = SparseTensor.from_coords(x.coordinates.clone(), x.features)
    assert C.submanifold_map(other.coords, 3) is not C.submanifold_map(x.coords, 3)
    assert other.coords.cache.builds == 1
    n_before = len(cache)
    del down1, down2
    x2 = SparseTensor.from_coords(x.coordinates, x.features, cache=cache)
    C.submanifold_map(x2.coords, 3)
    assert len(cache) == n_before + 1
    del x2
    gc.collect()
    assert len(cache) == n_before


def test_numba_hash_finds_keys_and_reports_absent():
    rng = np.random.default_rng(0)
    rows = np.unique(rng.integers(-60000, 60000, (20000, 4)), axis=0).astype(np.int32)
    rows[:, 0] = np.abs(rows[:, 0]) % 7
    rows = np.unique(rows, axis=0)
    h = NumbaCoordHash(rows)
    assert np.array_equal(h.lookup(rows), np.arange(len(rows)))
    absent = rows.copy()
    absent[:, 0] += 7  # batches never stored
    edge = np.array([[0, 70000, 0, 0], [-1, 0, 0, 0], [0, 0, -70000, 0]], np.int32)  # out of range
    assert (h.lookup(np.concatenate([absent, edge])) == -1).all()
    neg = np.array([[0, -3, -2, -1], [1, -65536, 65535, 0]], np.int32)
    assert np.array_equal(NumbaCoordHash(neg).lookup(neg[::-1]), [1, 0])
    sorted_index = SortedCoordIndex(torch.from_numpy(rows))
    assert torch.equal(sorted_index.lookup(torch.from_numpy(rows)), torch.arange(len(rows)))
    assert (sorted_index.lookup(torch.from_numpy(np.concatenate([absent, edge]))) == -1).all()
    with pytest.raises(ValueError):
        NumbaCoordHash(np.concatenate([rows[:3], rows[:1]]))


def test_sorted_index_kernel_maps_match_numba():
    x = make_input(n=8, seed=90, shift=3)
    offsets = C.kernel_offsets(3, 1)
    numba_hits = C.query_hits(x.coords, x.coords, 1, offsets)
    torch_hits = SortedCoordIndex(x.coordinates).query_offsets(x.coordinates, 1, offsets)
    assert torch.equal(numba_hits, torch_hits)
