"""The viewport repaints for what it shows, not for status-only snapshots (an idle window costs no CPU)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PyQt6")

from app.snapshots import DisplaySnapshot, FusionStatus  # noqa: E402
from app.viewport import Viewport  # noqa: E402

INTR = (100.0, 100.0, 50.0, 40.0, 100, 80)


def _status(seq: int, pose: np.ndarray, trajectory: np.ndarray) -> DisplaySnapshot:
    return DisplaySnapshot(seq, FusionStatus(frames=seq), T_world_cam=pose, up=np.array([0.0, 0.0, 2.0]),
                           trajectory_m=trajectory, intrinsics=INTR)


def test_status_only_snapshots_do_not_repaint(qtbot, monkeypatch):
    view = Viewport()
    qtbot.addWidget(view)
    asked = []
    monkeypatch.setattr(view, "_data_changed", lambda: asked.append(1))
    pose, trajectory = np.eye(4), np.zeros((1, 3), np.float32)
    view.apply_snapshot(_status(1, pose, trajectory))
    assert len(asked) == 1                               # the first pose and path are news
    for seq in range(2, 12):                             # idle: the same pose, path and up, again and again
        view.apply_snapshot(_status(seq, pose.copy(), trajectory.copy()))
    assert len(asked) == 1
    moved = pose.copy()
    moved[0, 3] = 0.1
    view.apply_snapshot(_status(12, moved, np.zeros((2, 3), np.float32)))
    assert len(asked) == 2
    view.apply_snapshot(DisplaySnapshot(13, FusionStatus(), reset=True))
    assert len(asked) == 3
