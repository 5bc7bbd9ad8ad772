"""Owns a map correction's description: the world change of each keyframe that a loop closure applied, and
how things fused in the old world (label cells, user corrections, poses) move into the new one.
Immutable: any thread."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class MapCorrection:
    """A map correction the fusion thread applied (immutable; for the GUI, labels and sessions)."""

    first_frame: int                     #: frames before this index were fused in the old world
    keyframe_frames: np.ndarray          #: (N,) frame index of each keyframe (increasing)
    corrections: np.ndarray              #: (N,4,4) world change per keyframe, new <- old
    max_shift_m: float                   #: largest keyframe move
    loops: int                           #: loop edges in the graph
    optimise_s: float
    rebuild_s: float

    keyframe_positions_m: np.ndarray = None  #: (N,3) each keyframe's camera position in the old world
    keyframe_view_centres_m: np.ndarray = None  #: (N,3) each keyframe's view centre in the old world: its camera
    #:     moved along the optical axis by the median depth it saw (None: the camera positions)
    applied_s: float = 0.0               #: time.monotonic() when it was handed to the fusion thread to swap in:
    #:     what the fusion thread served before (snapshots for the nets) is of the old world, after of the new

    def camera_transforms(self, points_m: np.ndarray) -> np.ndarray:
        """(N,4,4) world change of each point (N,3) of the old world: the change of the keyframe whose camera
        was nearest to it (for things located like cameras: poses, a loaded trajectory)."""
        pts = np.asarray(points_m, float).reshape(-1, 3)
        return self.corrections[cKDTree(self.keyframe_positions_m).query(pts)[1]] if len(pts) else np.zeros((0, 4, 4))

    def move_points(self, points_m: np.ndarray) -> np.ndarray:
        """World points (N,3) of the old world moved by `camera_transforms` (surface points:
        `move_surface_points`)."""
        pts = np.asarray(points_m, float).reshape(-1, 3)
        return _apply(self.camera_transforms(pts), pts)

    def surface_transforms(self, points_m: np.ndarray) -> np.ndarray:
        """(N,4,4) world change of each point (N,3) of the old map's surface (label cells, user corrections):
        the change of the keyframe whose view centre is nearest, the one that saw it most squarely. On a
        looping synthetic scan cells moved so lie on the corrected surface more often than unmoved ones;
        moved with the nearest camera instead, less often (README)."""
        pts = np.asarray(points_m, float).reshape(-1, 3)
        centres = self.keyframe_view_centres_m
        anchors = self.keyframe_positions_m if centres is None else centres
        return self.corrections[cKDTree(anchors).query(pts)[1]] if len(pts) else np.zeros((0, 4, 4))

    def move_surface_points(self, points_m: np.ndarray) -> np.ndarray:
        """Points (N,3) of the old map's surface moved by `surface_transforms`."""
        pts = np.asarray(points_m, float).reshape(-1, 3)
        return _apply(self.surface_transforms(pts), pts)

    def correction_near(self, point_m) -> np.ndarray:
        """The world change of the keyframe whose camera was nearest to `point_m` (old world): for a pose
        whose frame index is not known (a loaded trajectory)."""
        return self.camera_transforms(point_m)[0]

    def correction_of(self, frame_index: int) -> np.ndarray:
        """The world change of a frame fused before `first_frame` (its keyframe's, or the nearest)."""
        j = int(np.searchsorted(self.keyframe_frames, frame_index, side="right")) - 1
        return self.corrections[max(j, 0)]


def _apply(C: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Each point (N,3) moved by its own rigid change C (N,4,4)."""
    return np.einsum("nij,nj->ni", C[:, :3, :3], pts) + C[:, :3, 3]
