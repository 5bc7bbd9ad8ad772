"""Owns how the fusion worker turns its state into a display snapshot: changed mesh chunks packed for
the viewport with their labels, the chunks whose labels changed, thumbnails, the camera path and the
status numbers.
Runs on the fusion thread (it reads the pipeline's mesher)."""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from app.snapshots import DisplaySnapshot, FusionStatus, MeshDisplay, pack_mesh
from app.thumbnails import depth_colormap, downsample, process_memory_mb
from fusion.meshing import unpack_keys

log = logging.getLogger(__name__)


def chunk_display(pipeline, nets, key: tuple, lod_cells_voxels: tuple) -> MeshDisplay:
    """One mesh chunk with the label store's labels, plus its simplified surfaces (the vertices it shares
    with neighbouring chunks simplified among themselves, alike in each, so the chunks simplified on their
    own stay closed)."""
    mesh = pipeline.mesher.chunk_mesh(key)
    labels, conf = nets.display_labels(mesh)
    seam = pipeline.mesher.seam_axes(key, mesh.vertex_keys)
    voxel_cells = unpack_keys(mesh.vertex_keys)  # global: alike in every chunk (positions may differ by a hair)
    return pack_mesh(mesh.positions_m, mesh.colors, mesh.normals, mesh.faces, labels, conf,
                     tuple(np.floor_divide(voxel_cells, int(c)) for c in lod_cells_voxels), seam, mesh.vertex_keys)


def label_dirty_chunks(pipeline, boxes: list) -> set:
    """Mesh chunks of `pipeline` overlapping any (lo_m, hi_m) box whose labels changed."""
    if not boxes or pipeline is None or not pipeline.mesher.chunks:
        return set()
    keys = np.array(list(pipeline.mesher.chunks), np.int64).reshape(-1, 3)
    lo, hi = pipeline.mesher.chunk_bounds_m(keys)
    hit = np.zeros(len(keys), bool)
    for b_lo, b_hi in boxes:
        hit |= np.all((lo < b_hi) & (hi > b_lo), axis=1)
    return set(map(tuple, keys[hit].tolist()))


def thumbnails(frame, width_px: int, depth_max_m: float) -> tuple[np.ndarray, np.ndarray]:
    depth = downsample(frame.depth_m, width_px)
    return downsample(frame.color, width_px), depth_colormap(depth, depth_max_m)


def worker_status(worker) -> FusionStatus:
    """The fusion worker's numbers for the status bar (fusion thread)."""
    p, times, src = worker.pipeline, worker._frame_times, worker.source
    capture_drops = getattr(getattr(src, "slot", None), "dropped", 0)
    return FusionStatus(
        state=worker.state, source=worker.source_spec, frames=worker.frames_read,
        frames_integrated=worker._integrated, frames_dropped=worker._rejected + capture_drops,
        fps=len(times) / sum(times) if times and sum(times) > 0 and worker._it is not None else 0.0,
        tracking=worker._tracking, unsaved_frames=worker._integrated - worker._saved_integrated,
        continuable=worker._continuable,
        n_blocks=p.volume.n_blocks if p else 0, volume_mb=p.volume.memory_bytes() / 2**20 if p else 0.0,
        process_mb=process_memory_mb(), recording=str(getattr(src, "recording_path", "") or ""),
        can_record=hasattr(src, "start_recording"), nets=worker.nets.status(),
        autosaving=worker._autosaver is not None and worker._autosaver.writing,
        gravity=p.gravity.report().to_dict() | {"settling": p.gravity.holds_labels} if p else {})


def build_snapshot(worker, label_keys: set) -> DisplaySnapshot:
    """Everything that changed since the last snapshot (takes the pipeline's dirty mesh chunks)."""
    cfg, p, nets = worker.config, worker.pipeline, worker.nets
    chunks = {}
    if p is not None:
        for key in p.dirty.take("mesh") | label_keys:
            chunks[key] = chunk_display(p, nets, key, cfg.lod_cells_voxels)
    frame, poses = worker.last_frame, worker.poses
    thumbs = (None, None)  # None: the GUI keeps what it shows (a status-only snapshot repaints nothing)
    if frame is not None and frame is not worker.thumbs_of:
        thumbs, worker.thumbs_of = thumbnails(frame, cfg.thumb_width_px, worker.pipeline_config.volume.depth_max_m), frame
    return DisplaySnapshot(
        seq=worker.frames_read, status=worker_status(worker), chunks=chunks, reset=worker.reset_pending,
        completion=nets.completion_display(), T_world_cam=poses[-1] if poses else None, up=worker.up,
        trajectory_m=worker.path.positions_m(),
        intrinsics=None if frame is None else dataclasses.astuple(frame.intrinsics),
        color_thumb=thumbs[0], depth_thumb=thumbs[1], class_counts=nets.class_counts(),
        events=tuple(worker.events), label_version=nets.seen_version)


def publish(worker, force: bool = False) -> None:
    """Put a snapshot into the worker's outbox when something changed (or the status is due) and the
    last one has been taken; wake the GUI when the outbox was empty."""
    now, cfg = time.monotonic(), worker.config
    if not force and (not worker.outbox.empty or now - worker._last_pub < cfg.publish_interval_s):
        return
    label_keys = label_dirty_chunks(worker.pipeline, worker.nets.changed_boxes())
    dirty = worker.pipeline is not None and worker.pipeline.dirty.pending("mesh") > 0
    if not (force or worker._changed or label_keys or dirty or worker.nets.has_news()):
        if now - worker._last_status < cfg.status_interval_s:
            return
    worker._last_pub = worker._last_status = now
    snap = build_snapshot(worker, label_keys)
    worker.events, worker.reset_pending, worker._changed = [], False, False
    if worker.outbox.put(snap):
        try:
            worker._notify()
        except RuntimeError:  # the window (and its signal object) is already gone
            log.debug("snapshot not delivered: the window has been deleted")
