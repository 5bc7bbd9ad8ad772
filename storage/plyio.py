"""Owns the labeled-mesh PLY format: ScanNet's convention, binary little-endian, written atomically.

Vertex properties: float x,y,z; uchar red,green,blue,alpha; ushort label (NYU40 id).
Faces: `vertex_indices` as a uchar-counted int list.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from storage.atomic import atomic_path

VERTEX_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
     ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1"), ("label", "<u2")]
)
FACE_DTYPE = np.dtype([("n", "u1"), ("v", "<i4", (3,))])


def write_labeled_ply(
    path: Path | str,
    xyz_m: np.ndarray,
    rgb: np.ndarray,
    labels: Optional[np.ndarray] = None,
    faces: Optional[np.ndarray] = None,
) -> None:
    """Write vertices (N,3) metres, colours (N,3) uint8, labels (N,) NYU40 and faces (M,3) int."""
    n = len(xyz_m)
    verts = np.empty(n, VERTEX_DTYPE)
    for i, axis in enumerate("xyz"):
        verts[axis] = xyz_m[:, i]
    for i, ch in enumerate(("red", "green", "blue")):
        verts[ch] = rgb[:, i]
    verts["alpha"] = 255
    verts["label"] = 0 if labels is None else labels
    faces = np.zeros((0, 3), np.int32) if faces is None else np.asarray(faces)
    face_rec = np.empty(len(faces), FACE_DTYPE)
    face_rec["n"] = 3
    face_rec["v"] = faces
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        "property ushort label\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(verts.tobytes())
            f.write(face_rec.tobytes())


def read_labeled_ply(path: Path | str) -> dict:
    """Read a PLY written by `write_labeled_ply` (or any ScanNet-style labeled PLY) via plyfile.

    Returns dict with xyz_m (N,3) float32, rgb (N,3) uint8, labels (N,) uint16, faces (M,3) int64.
    """
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    v = ply["vertex"].data
    xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.uint8)
    labels = v["label"].astype(np.uint16) if "label" in v.dtype.names else np.zeros(len(v), np.uint16)
    faces = np.zeros((0, 3), np.int64)
    if "face" in ply:
        faces = np.stack(ply["face"].data["vertex_indices"]).astype(np.int64) if len(ply["face"].data) else faces
    return {"xyz_m": xyz, "rgb": rgb, "labels": labels, "faces": faces}
