"""Gather-matmul-scatter sparse convolution as one autograd Function over a KernelMap."""
from __future__ import annotations

import torch

from nets.sparse.coords import KernelMap


def _scatter_products(src: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, n_out: int,
                      forward: bool) -> torch.Tensor:
    """sum_k scatter(gather(src) @ W_k) forward, or its adjoint (roles of in/out swapped, W_k^T)."""
    out = src.new_zeros(n_out, weight.shape[2] if forward else weight.shape[1])
    for k in range(len(kmap.in_idx)):
        gather, scatter = (kmap.in_idx[k], kmap.out_idx[k]) if forward else (kmap.out_idx[k], kmap.in_idx[k])
        w = weight[k] if forward else weight[k].t()
        if k == kmap.identity:
            out.addmm_(src, w)
        elif len(gather):
            out.index_add_(0, scatter, src.index_select(0, gather) @ w)
    return out


class SparseConvFunction(torch.autograd.Function):
    """out[o] = sum over pairs (i, o) of offset k of feats[i] @ weight[k]; weight is (K, Cin, Cout)."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        ctx.save_for_backward(feats, weight)
        ctx.kmap = kmap
        return _scatter_products(feats, weight, kmap, kmap.n_out, forward=True)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        feats, weight = ctx.saved_tensors
        kmap = ctx.kmap
        grad_out = grad_out.contiguous()
        grad_feats = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_feats = _scatter_products(grad_out, weight, kmap, len(feats), forward=False)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
            for k in range(len(kmap.in_idx)):
                if k == kmap.identity:
                    torch.mm(feats.t(), grad_out, out=grad_weight[k])
                elif len(kmap.in_idx[k]):
                    fi = feats.index_select(0, kmap.in_idx[k])
                    torch.mm(fi.t(), grad_out.index_select(0, kmap.out_idx[k]), out=grad_weight[k])
        return grad_feats, grad_weight, None


def sparse_conv(feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse convolution of (N, Cin) features by (K, Cin, Cout) weights over kmap (+ bias)."""
    if weight.shape[0] != len(kmap.in_idx):
        raise ValueError(f"weight has {weight.shape[0]} offsets, kernel map {len(kmap.in_idx)}")
    out = SparseConvFunction.apply(feats, weight, kmap)
    return out if bias is None else out + bias
