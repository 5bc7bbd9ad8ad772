"""The worker's camera path: poses follow gravity rebuilds and loop corrections once each; loaded poses move
with the keyframe nearest them; the drawn positions follow."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.camera_path import LOADED, CameraPath


def _at(x: float) -> np.ndarray:
    T = np.eye(4)
    T[0, 3] = x
    return T


@dataclass
class FakeCorrection:
    """A loop correction: frames before first_frame move by dx (by their index), loaded ones by near_dx."""

    first_frame: int
    dx: float
    near_dx: float

    def correction_of(self, frame_index: int) -> np.ndarray:
        return _at(self.dx)

    def correction_near(self, point_m) -> np.ndarray:
        return _at(self.near_dx)


def test_poses_follow_each_world_change_once():
    path = CameraPath()
    path.load([_at(0.0)], [0.5])
    for i in range(3):
        path.append(_at(1.0 + i), 1.0 + i, i)
    assert path.frames == [LOADED, 0, 1, 2]
    np.testing.assert_allclose(path.positions_m()[:, 0], [0, 1, 2, 3])
    changes = [(2, _at(10.0))]
    path.follow_gravity(changes)
    path.follow_gravity(changes)  # already followed
    np.testing.assert_allclose(path.positions_m()[:, 0], [10, 11, 12, 13])
    events = [FakeCorrection(first_frame=2, dx=0.5, near_dx=-1.0)]
    assert path.follow_loops(events) == events and path.follow_loops(events) == []
    np.testing.assert_allclose(path.positions_m()[:, 0], [9, 11.5, 12.5, 13])  # loaded, before, before, after
    path.append(_at(20.0), 5.0, 3)
    assert len(path.positions_m()) == 5 and path.stamps == [0.5, 1.0, 2.0, 3.0, 5.0]
