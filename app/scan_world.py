"""Owns how the fusion worker's record of a scan (its `CameraPath`) follows the pipeline's world when it
changes: gravity settling rebuilds it, a loop closure corrects it (and the user is told), and a scan
continued into a loaded session numbers its frames after the earlier ones (the loop closer orders
keyframes and corrections by frame index). Functions of the worker; the fusion thread only."""
from __future__ import annotations

def follow_gravity(worker) -> None:
    """Poses kept before the pipeline rebuilt its world (gravity settling) move into the new one."""
    worker.path.follow_gravity(worker.pipeline.gravity.changes)


def follow_loops(worker) -> None:
    """Map corrections of loop closure not followed yet: the camera path so far moves with each, and the
    user is told (labels follow on the nets' side, the mesh through the pipeline's dirty chunks)."""
    loops = worker.pipeline.loops if worker.pipeline is not None else None
    for event in worker.path.follow_loops(loops.events) if loops is not None else []:
        worker.tell("info", f"loop closed: map corrected (moved up to {event.max_shift_m * 100:.1f} cm)")


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
