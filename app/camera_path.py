"""Owns the scan's camera path as the fusion worker records it: each pose with its timestamp and frame
index, the positions the viewport draws (grown incrementally), and which of the pipeline's world changes
(gravity settling rebuilds, loop-closure corrections) the poses already follow.

Thread: the fusion thread (the worker's); readers get copies through snapshots."""
from __future__ import annotations

import numpy as np

LOADED = -1  #: frame index of a pose from a loaded session (fused before any frame of this run)


class CameraPath:
    """Poses (4x4 world <- camera), their timestamps (s) and frame indices, in fusion order."""

    def __init__(self):
        self.poses: list[np.ndarray] = []
        self.stamps: list[float] = []
        self.frames: list[int] = []
        self._positions = np.zeros((0, 3), np.float32)
        self._gravity_seen = self._loops_seen = 0  # world changes the poses follow already

    def load(self, poses, stamps_s) -> None:
        """Start from a saved trajectory (its frame indices are unknown: LOADED)."""
        self.__init__()
        self.poses = [np.asarray(T) for T in poses]
        self.stamps = [float(t) for t in stamps_s]
        self.frames = [LOADED] * len(self.poses)

    def append(self, T_world_cam: np.ndarray, timestamp_s: float, frame_index: int) -> None:
        self.poses.append(np.asarray(T_world_cam))
        self.stamps.append(float(timestamp_s))
        self.frames.append(int(frame_index))

    def positions_m(self) -> np.ndarray:
        """(T,3) float32 camera positions (cached; only new poses are added)."""
        n, cached = len(self.poses), self._positions
        if len(cached) != n:
            new = np.array([T[:3, 3] for T in self.poses[len(cached):]], np.float32).reshape(-1, 3)
            self._positions = np.concatenate([cached, new]) if len(cached) < n else new
        return self._positions

    def follow_gravity(self, changes: list) -> None:
        """Move the poses by each (frame index, world change C) of gravity settling not followed yet."""
        for _, C in changes[self._gravity_seen:]:
            self._move([C @ T for T in self.poses])
        self._gravity_seen = len(changes)

    def follow_loops(self, events: list) -> list:
        """Move the poses by each loop-closure correction not followed yet (a pose of a frame before the
        correction's first frame moves with its keyframe; a loaded pose with the keyframe nearest it).
        Returns the corrections followed now."""
        new = events[self._loops_seen:]
        for event in new:
            self._move([T if i >= event.first_frame else
                        (event.correction_of(i) if i != LOADED else event.correction_near(T[:3, 3])) @ T
                        for i, T in zip(self.frames, self.poses)])
        self._loops_seen = len(events)
        return list(new)

    def _move(self, poses: list) -> None:
        self.poses = poses
        self._positions = np.zeros((0, 3), np.float32)
