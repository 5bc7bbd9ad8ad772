"""Owns how the fusion worker's record of a scan (the camera path) follows the pipeline's world when it
changes: gravity settling rebuilds it, a loop closure corrects it (and the user is told), and a scan
continued into a loaded session numbers its frames after the earlier ones (the loop closer orders
keyframes and corrections by frame index). Functions of the worker; the fusion thread only."""
from __future__ import annotations

import numpy as np


def follow_gravity(worker) -> None:
    """Poses kept before the pipeline rebuilt its world (gravity settling) move into the new one."""
    changes = worker.pipeline.gravity.changes
    for _, C in changes[worker._world_changes:]:
        worker.poses = [C @ T for T in worker.poses]
        worker._positions = np.zeros((0, 3), np.float32)
    worker._world_changes = len(changes)


def follow_loops(worker) -> None:
    """Map corrections of loop closure not followed yet: the camera path so far moves with each, and the
    user is told (labels follow on the nets' side, the mesh through the pipeline's dirty chunks). A pose
    of a loaded trajectory (frame index unknown, -1) moves with the keyframe nearest to it."""
    loops = worker.pipeline.loops if worker.pipeline is not None else None
    for event in loops.events[worker._loops_seen:] if loops is not None else []:
        worker.poses = [T if i >= event.first_frame else
                        (event.correction_of(i) if i >= 0 else event.correction_near(T[:3, 3])) @ T
                        for i, T in zip(worker._pose_frames, worker.poses)]
        worker._positions = np.zeros((0, 3), np.float32)
        worker._loops_seen += 1
        worker._event("info", f"loop closed: map corrected (moved up to {event.max_shift_m * 100:.1f} cm)")


def land_loop_correction(worker) -> None:
    """No frame comes (paused, stopped, finished): a map correction in the making still lands."""
    p = worker.pipeline
    if p is not None and p.loops is not None and p.loops.correcting:
        p.finish_loops(worker.config.idle_wait_s)
        follow_loops(worker)


def continued_index(worker) -> int:
    """First frame index for a scan continued into the current (loaded) model: after every frame index the
    model knows of (the trajectory's, the tracker's and the loop closer's keyframes)."""
    p = worker.pipeline
    known = [len(worker.poses) - 1] + [k.index for k in p.tracker.relocaliser.keyframes]
    if p.loops is not None:
        known.append(p.loops.last_frame_index())
    return max(known) + 1
