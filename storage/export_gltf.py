"""Owns the glTF 2.0 binary (.glb) writer for labeled meshes: written with struct + json, no dependency.

Each primitive has POSITION (float VEC3, metres, the world frame of the scan), NORMAL when given,
COLOR_0 (normalized unsigned byte VEC4: RGBA, 4-byte aligned as glTF requires of vertex attributes)
and `_LABEL` (float SCALAR holding the NYU40 id; glTF application-specific attributes start with an
underscore and a float keeps every element 4-byte aligned), indexed by unsigned int triangles.
With `split_classes` the scene has one mesh (and node) per class, named after it.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from storage.atomic import atomic_path
from fusion.classes import CLASSES

GLB_MAGIC, GLB_VERSION = 0x46546C67, 2
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942
FLOAT, UNSIGNED_BYTE, UNSIGNED_INT = 5126, 5121, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


class _GltfBuilder:
    """Accumulates buffer views, accessors and meshes of one GLB. Thread: the caller's only."""

    def __init__(self):
        self.blob = bytearray()
        self.doc = {"asset": {"version": "2.0", "generator": "rgbd-reconstruction"},
                    "buffers": [], "bufferViews": [], "accessors": [], "meshes": [], "nodes": [],
                    "scenes": [{"nodes": []}], "scene": 0}

    def accessor(self, data: np.ndarray, component: int, kind: str, target: int, normalized=False) -> int:
        while len(self.blob) % 4:
            self.blob.append(0)
        raw = np.ascontiguousarray(data).tobytes()
        self.doc["bufferViews"].append({"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(raw),
                                        "target": target})
        self.blob += raw
        acc = {"bufferView": len(self.doc["bufferViews"]) - 1, "componentType": component,
               "count": int(len(data)), "type": kind}
        if normalized:
            acc["normalized"] = True
        if kind == "VEC3" and component == FLOAT:  # POSITION needs bounds; harmless on NORMAL
            acc["min"] = data.min(0).astype(float).tolist()
            acc["max"] = data.max(0).astype(float).tolist()
        self.doc["accessors"].append(acc)
        return len(self.doc["accessors"]) - 1

    def add_mesh(self, name: str, xyz_m, rgb, labels, faces, normals=None) -> None:
        rgba = np.concatenate([rgb.astype(np.uint8), np.full((len(rgb), 1), 255, np.uint8)], 1)
        attrs = {"POSITION": self.accessor(xyz_m.astype("<f4"), FLOAT, "VEC3", ARRAY_BUFFER),
                 "COLOR_0": self.accessor(rgba, UNSIGNED_BYTE, "VEC4", ARRAY_BUFFER, normalized=True),
                 "_LABEL": self.accessor(labels.astype("<f4"), FLOAT, "SCALAR", ARRAY_BUFFER)}
        if normals is not None:
            attrs["NORMAL"] = self.accessor(normals.astype("<f4"), FLOAT, "VEC3", ARRAY_BUFFER)
        idx = self.accessor(faces.astype("<u4").reshape(-1), UNSIGNED_INT, "SCALAR", ELEMENT_ARRAY_BUFFER)
        self.doc["meshes"].append({"name": name, "primitives": [{"attributes": attrs, "indices": idx, "mode": 4}]})
        self.doc["nodes"].append({"name": name, "mesh": len(self.doc["meshes"]) - 1})
        self.doc["scenes"][0]["nodes"].append(len(self.doc["nodes"]) - 1)

    def glb(self) -> bytes:
        while len(self.blob) % 4:
            self.blob.append(0)
        self.doc["buffers"] = [{"byteLength": len(self.blob)}]
        js = json.dumps(self.doc, separators=(",", ":")).encode()
        js += b" " * (-len(js) % 4)
        total = 12 + 8 + len(js) + 8 + len(self.blob)
        return b"".join([struct.pack("<III", GLB_MAGIC, GLB_VERSION, total),
                         struct.pack("<II", len(js), CHUNK_JSON), js,
                         struct.pack("<II", len(self.blob), CHUNK_BIN), bytes(self.blob)])


def class_name(label: int) -> str:
    return CLASSES[label][0] if label in CLASSES else ("unlabeled" if label == 0 else f"nyu{label}")


def write_glb(path: Path | str, xyz_m: np.ndarray, rgb: np.ndarray, labels: np.ndarray, faces: np.ndarray,
              face_labels: np.ndarray | None = None, normals: np.ndarray | None = None,
              split_classes: bool = False) -> None:
    """Write a GLB atomically: one mesh, or one mesh per class of `face_labels` when split_classes."""
    b = _GltfBuilder()
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    if not split_classes or face_labels is None:
        b.add_mesh("scan", xyz_m, rgb, labels, faces, normals)
    else:
        for c in np.unique(face_labels):
            sub = faces[face_labels == c]
            used, remap = np.unique(sub, return_inverse=True)
            b.add_mesh(class_name(int(c)), xyz_m[used], rgb[used], labels[used], remap.reshape(-1, 3),
                       None if normals is None else normals[used])
    with atomic_path(path) as tmp:
        tmp.write_bytes(b.glb())
