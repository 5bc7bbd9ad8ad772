"""Owns what workers hand the GUI: immutable display snapshots, the packed vertex layout, and the
newest-only display outbox that merges pending chunk updates.

Snapshots are frozen dataclasses of arrays made on the fusion thread; the GUI thread only reads them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import numpy as np

from fusion.classes import palette_lut
from fusion.meshing import pack_keys

#: interleaved vertex layout the viewport uploads as is (32 bytes a vertex): position and normal
#: float32, observed colour RGBA8, label colour RGB8 with the label confidence in its alpha byte
VERTEX_DTYPE = np.dtype([("pos", np.float32, 3), ("nrm", np.float32, 3), ("rgb", np.uint8, 4),
                         ("lab", np.uint8, 4)])
_LUT = palette_lut()


@dataclass(frozen=True)
class MeshDisplay:
    """One display mesh (a fusion chunk, or the completed geometry): packed vertices, uint32 indices."""

    vertices: np.ndarray      #: (N,) VERTEX_DTYPE
    indices: np.ndarray       #: (3M,) uint32
    lo_m: np.ndarray          #: (3,) bounding box min (zeros when empty)
    hi_m: np.ndarray          #: (3,) bounding box max
    lod_indices: tuple = ()   #: simplified surfaces, each coarser than the one before: (3K,) uint32 into the same vertices

    @property
    def empty(self) -> bool:
        return len(self.indices) == 0


def cluster_faces(cells: np.ndarray, faces: np.ndarray, seam=None, vertex_keys=None) -> np.ndarray:
    """Faces of a vertex-clustered copy of the mesh: every vertex is replaced by the vertex of its cluster
    cell (`cells`, (N,3) int per vertex) with the smallest key (`vertex_keys`, int64 per vertex; default:
    its index); collapsed and repeated faces are dropped; indices stay valid for the mesh.
    Vertices the mesh shares with neighbouring meshes simplified on their own (`seam` > 0, int per vertex:
    which neighbours share it) cluster only with vertices of the same seam value: with cells, seam values
    and keys alike in every mesh (from the global voxel grid) the meshes pick the same seam vertices, so
    their seams stay closed."""
    if len(faces) == 0:
        return np.zeros((0, 3), np.uint32)
    keys = pack_keys(cells)
    group = np.zeros(len(keys), np.int64) if seam is None else np.asarray(seam, np.int64)
    rank = np.arange(len(keys)) if vertex_keys is None else np.asarray(vertex_keys, np.int64)
    order = np.lexsort((rank, group, keys))  # by cell and seam value, then key: the first represents them
    sk, sg = keys[order], group[order]
    starts = np.flatnonzero(np.r_[True, (sk[1:] != sk[:-1]) | (sg[1:] != sg[:-1])])
    rep = np.empty(len(keys), np.int64)
    rep[order] = np.repeat(order[starts], np.diff(np.r_[starts, len(keys)]))
    f = rep[faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    if len(f) == 0:
        return np.zeros((0, 3), np.uint32)
    _, kept = np.unique(pack_keys(np.sort(f, axis=1)), return_index=True)
    return f[np.sort(kept)].astype(np.uint32)


def pack_mesh(positions_m, colors, normals, faces, labels=None, confidence=None,
              lod_cells: tuple = (), seam=None, vertex_keys=None) -> MeshDisplay:
    """Pack a mesh with optional per-vertex NYU40 labels and confidences (0..1) for the viewport;
    with lod_cells (one (N,3) int array of cluster cells per level, each coarser than the one before) also
    a simplified surface per level (see cluster_faces with `seam` and `vertex_keys`; each simplifies the
    one before) for far or crowded views."""
    n = len(positions_m)
    v = np.empty(n, VERTEX_DTYPE)
    v["pos"], v["nrm"] = positions_m, normals
    v["rgb"][:, :3], v["rgb"][:, 3] = colors, 255
    lab = np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64)
    v["lab"][:, :3] = _LUT[np.clip(lab, 0, len(_LUT) - 1)] * (lab < len(_LUT))[:, None]
    conf = np.zeros(n, np.float32) if confidence is None else np.asarray(confidence, np.float32)
    v["lab"][:, 3] = np.clip(np.round(conf * 255), 0, 255).astype(np.uint8)
    pos = np.asarray(positions_m, np.float32)
    lo, hi = (pos.min(0), pos.max(0)) if n else (np.zeros(3, np.float32), np.zeros(3, np.float32))
    levels, f = [], np.asarray(faces)
    for cells in lod_cells:
        f = cluster_faces(cells, f, seam, vertex_keys)
        levels.append(f.ravel())
    return MeshDisplay(v, np.ascontiguousarray(faces, np.uint32).ravel(), lo, hi, tuple(levels))


@dataclass(frozen=True)
class Event:
    """Something to tell the user: level is "info", "warning" or "error"; hint says what to do."""

    level: str
    text: str
    hint: str = ""


@dataclass(frozen=True)
class FusionStatus:
    """Numbers for the status bar and panels (made on the fusion thread)."""

    state: str = "idle"                 #: idle | running | paused | finished
    source: str = ""                    #: what is being fused, for the title
    frames: int = 0                     #: frames read from the source in this scan
    frames_integrated: int = 0
    frames_dropped: int = 0             #: not integrated + dropped by the capture loop
    fps: float = 0.0                    #: fusion frames/s (recent window)
    tracking: str = ""                  #: ok | lost | "" (no frame fused yet)
    unsaved_frames: int = 0             #: frames integrated since the model was last saved, loaded or reset
    continuable: bool = False           #: Start goes on into this model (a loaded session) instead of a new one
    n_blocks: int = 0
    volume_mb: float = 0.0
    process_mb: float = 0.0             #: resident memory of the whole process
    timings_ms: dict = field(default_factory=dict)
    recording: str = ""                 #: file being recorded to ("" when not recording)
    can_record: bool = False
    autosaving: bool = False            #: an autosave is being written (in the background)
    nets: dict = field(default_factory=dict)   #: NetsStatus fields (see app.nets_hookup)
    gravity: dict = field(default_factory=dict)  #: GravityReport fields and "settling" (see fusion.gravity_settle)


@dataclass(frozen=True)
class DisplaySnapshot:
    """Everything the GUI needs to redraw after some frames; chunk entries are changes since the last."""

    seq: int
    status: FusionStatus
    chunks: dict = field(default_factory=dict)     #: mesh chunk key -> MeshDisplay (empty: remove it)
    reset: bool = False                            #: drop all chunks before applying `chunks`
    completion: MeshDisplay | None = None          #: None: unchanged
    T_world_cam: np.ndarray | None = None          #: latest integrated pose
    up: np.ndarray | None = None                   #: world up as the first camera saw it
    trajectory_m: np.ndarray | None = None         #: (T,3) camera positions
    intrinsics: tuple | None = None                #: (fx, fy, cx, cy, width, height) of the live camera
    color_thumb: np.ndarray | None = None          #: (h,w,3) uint8
    depth_thumb: np.ndarray | None = None          #: (h,w,3) uint8, colour-mapped depth
    class_counts: dict | None = None               #: NYU40 id -> amount (label-store cells); None: unchanged
    events: tuple = ()
    label_version: int = -1                        #: label-store version whose changes the chunks include


def merge(old: DisplaySnapshot, new: DisplaySnapshot) -> DisplaySnapshot:
    """One snapshot with the effect of `old` then `new` (newer fields win, chunk changes accumulate)."""
    chunks = dict(new.chunks) if new.reset else {**old.chunks, **new.chunks}
    keep = lambda name: getattr(new, name) if getattr(new, name) is not None else getattr(old, name)  # noqa: E731
    newer = (lambda name: getattr(new, name)) if new.reset else keep  # noqa: E731  (a reset forgets the old)
    return replace(new, chunks=chunks, reset=old.reset or new.reset, completion=newer("completion"),
                   class_counts=newer("class_counts"), color_thumb=newer("color_thumb"),
                   depth_thumb=newer("depth_thumb"), events=old.events + new.events)


class DisplayOutbox:
    """Newest-only mailbox from the fusion thread to the GUI: a pending snapshot is merged, never queued.

    Any thread may `put`; the GUI thread calls `take`. `put` returns True when the box was empty, so
    the producer signals the GUI once per batch instead of once per frame.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._item: DisplaySnapshot | None = None

    def put(self, snap: DisplaySnapshot) -> bool:
        with self._lock:
            was_empty = self._item is None
            self._item = snap if was_empty else merge(self._item, snap)
        return was_empty

    def take(self) -> DisplaySnapshot | None:
        with self._lock:
            item, self._item = self._item, None
        return item

    @property
    def empty(self) -> bool:
        with self._lock:
            return self._item is None
