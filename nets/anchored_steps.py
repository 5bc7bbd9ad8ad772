"""Owns the bounded optimisation loop both ways of learning from corrections share (`nets.adapt`,
`nets.adapt_head`): Adam on some parameters, each step's loss plus an L2 pull toward their starting
values, until a step count, a wall-time budget or a cancel. Call on the learning thread."""
from __future__ import annotations

import threading
import time
from typing import Callable

import torch


def anchored_steps(params: list, loss_of: Callable[[], torch.Tensor], lr: float, anchor_weight: float,
                   max_steps: int, budget_s: float, t0: float, info: dict,
                   cancel: threading.Event | None = None,
                   progress: Callable[[int, float], None] | None = None, progress_every: int = 1) -> dict:
    """Train `params` in place; `info` gets `steps`, `loss` and `cancelled` (returned). `t0` is the
    round's start (perf_counter), which the budget counts from. Gradients are off again afterwards."""
    start = [q.detach().clone() for q in params]
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    try:
        while info["steps"] < max_steps and time.perf_counter() - t0 < budget_s:
            if cancel is not None and cancel.is_set():
                info["cancelled"] = True
                break
            loss = loss_of() + anchor_weight * sum(((q - a) ** 2).sum() for q, a in zip(params, start))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            info["steps"] += 1
            info["loss"] = float(loss.detach())
            if progress is not None and info["steps"] % progress_every == 0:
                progress(info["steps"], time.perf_counter() - t0)
    finally:
        for q in params:
            q.requires_grad_(False)
    return info
