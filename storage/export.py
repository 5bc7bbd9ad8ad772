"""Owns exports of a labeled mesh: PLY (ScanNet convention + label-coloured), glTF binary, OBJ+MTL,
point cloud, trajectory and the `labels.json` legend. Every file is written atomically.

Labels are per-vertex NYU40 ids (0 = unlabeled); until the labeling nets exist they are all 0. A face's
class (OBJ material groups, per-class GLB meshes, areas) is the label most of its vertices carry
(the first vertex's when all three differ).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.atomic import atomic_path, write_text_atomic
from fusion.classes import UNLABELED_COLOR, palette_lut
from fusion.errors import UserError
from storage.export_gltf import class_name, write_glb
from storage.objtext import face_lines, vertex_lines
from storage.plyio import write_labeled_ply
from fusion.trajectory import write_tum

log = logging.getLogger(__name__)
FORMATS = (".ply", ".obj", ".glb")


@dataclass(frozen=True)
class LabeledMesh:
    """An immutable triangle mesh with per-vertex NYU40 labels (any thread may read it)."""

    positions_m: np.ndarray      #: (N,3) float32 metres
    colors: np.ndarray           #: (N,3) uint8
    faces: np.ndarray            #: (M,3) int32
    labels: np.ndarray           #: (N,) uint16 NYU40 ids
    normals: np.ndarray | None = None

    @staticmethod
    def from_mesh(mesh, labels: np.ndarray | None = None) -> "LabeledMesh":
        """From a MeshArrays; labels default to 0 (unlabeled)."""
        n = len(mesh.positions_m)
        lab = np.zeros(n, np.uint16) if labels is None else np.asarray(labels, np.uint16)
        if len(lab) != n:
            raise ValueError(f"{len(lab)} labels for {n} vertices")
        return LabeledMesh(mesh.positions_m, mesh.colors, mesh.faces, lab, mesh.normals)


@dataclass(frozen=True)
class ExportConfig:
    glb_split_classes: bool = False   #: one glTF mesh per class instead of one mesh
    point_cloud: bool = True          #: also write FILE_points.ply (vertices only) with a .ply export


def face_labels(faces: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(M,) label of each face: the majority of its vertices' labels, else its first vertex's."""
    if len(faces) == 0:
        return np.zeros(0, labels.dtype)
    a, b, c = (labels[faces[:, i]] for i in range(3))
    return np.where((b == c) & (a != b), b, a)


def face_areas_m2(xyz_m: np.ndarray, faces: np.ndarray) -> np.ndarray:
    p = xyz_m.astype(np.float64)[faces]
    return 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """ScanNet palette colour of each label (black for 0 and ids outside the benchmark classes)."""
    lut = palette_lut()
    lab = np.asarray(labels, np.int64)
    return np.where((lab < len(lut))[:, None], lut[np.clip(lab, 0, len(lut) - 1)], UNLABELED_COLOR).astype(np.uint8)


def legend(mesh: LabeledMesh) -> list[dict]:
    """One entry per label present: id, name, colour, vertex and face counts, surface area in m²."""
    fl = face_labels(mesh.faces, mesh.labels)
    area = face_areas_m2(mesh.positions_m, mesh.faces)
    ids = np.union1d(np.unique(mesh.labels), np.unique(fl)).astype(int)
    colors = label_colors(ids)
    return [{"id": int(c), "name": class_name(int(c)), "color": colors[i].tolist(),
             "vertices": int(np.count_nonzero(mesh.labels == c)), "faces": int(np.count_nonzero(fl == c)),
             "area_m2": round(float(area[fl == c].sum()), 6)} for i, c in enumerate(ids)]


def write_legend(path: Path | str, mesh: LabeledMesh) -> None:
    doc = {"label_set": "NYU40 ids of the ScanNet-20 benchmark classes and the ceiling (22); 0 = unlabeled", "classes": legend(mesh)}
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")


def write_obj(path: Path | str, mesh: LabeledMesh) -> None:
    """OBJ with per-vertex colours (`v x y z r g b`) and one `usemtl` group per class; MTL beside it."""
    path = Path(path)
    mtl = path.with_suffix(".mtl")
    fl = face_labels(mesh.faces, mesh.labels)
    ids = np.unique(fl).astype(int)
    colors = label_colors(ids) / 255.0
    mtl_text = "".join(f"newmtl {_material(c)}\nKd {r:.4f} {g:.4f} {b:.4f}\nKa 0 0 0\nd 1\nillum 1\n\n"
                       for c, (r, g, b) in zip(ids, colors))
    write_text_atomic(mtl, f"# materials: one per class (ScanNet palette)\n\n{mtl_text}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(f"# labeled mesh: {len(mesh.positions_m)} vertices, {len(mesh.faces)} faces\nmtllib {mtl.name}\n".encode())
        f.write(vertex_lines(mesh.positions_m, mesh.colors / 255.0))
        order = np.argsort(fl, kind="stable")
        for c in ids:
            f.write(f"g {_material(c)}\nusemtl {_material(c)}\n".encode())
            f.write(face_lines(mesh.faces[order[fl[order] == c]]))


def _material(label: int) -> str:
    return f"label_{label}_{class_name(label).replace(' ', '_')}"


def write_ply_pair(path: Path | str, mesh: LabeledMesh) -> Path:
    """FILE.ply (ScanNet labeled-mesh convention) and FILE_labels.ply (coloured by label); returns the latter."""
    path = Path(path)
    labels_path = path.with_name(f"{path.stem}_labels.ply")
    write_labeled_ply(path, mesh.positions_m, mesh.colors, mesh.labels, mesh.faces)
    write_labeled_ply(labels_path, mesh.positions_m, label_colors(mesh.labels), mesh.labels, mesh.faces)
    return labels_path


def write_point_cloud(path: Path | str, mesh: LabeledMesh) -> None:
    """Vertices only (same vertex properties, no face element)."""
    write_labeled_ply(path, mesh.positions_m, mesh.colors, mesh.labels, faces=None)


def export_path_problem(path: Path | str) -> str:
    """What stops an export to `path` ("" when nothing): an unknown extension, or an output folder
    that is missing or not writable. Callers word it for their user (command line or window)."""
    import os

    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        return f"unknown format {path.suffix or '(none)'}; use .ply, .obj or .glb"
    folder = path.parent
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable"
    return ""


def check_output(path: Path | str) -> Path:
    """Refuse (UserError, command-line wording) a path `export_path_problem` finds a problem with."""
    problem = export_path_problem(path)
    if problem:
        raise UserError(f"--out {path}: {problem}")
    return Path(path)


def export_mesh(path: Path | str, mesh: LabeledMesh, timestamps_s=None, poses=None,
                config: ExportConfig = ExportConfig()) -> list[Path]:
    """Export by extension (.ply, .obj, .glb), plus labels.json and, given poses, FILE_trajectory.txt."""
    path = check_output(path)
    ext = path.suffix.lower()
    written = [path]
    try:
        if ext == ".ply":
            written.append(write_ply_pair(path, mesh))
            if config.point_cloud:
                written.append(path.with_name(f"{path.stem}_points.ply"))
                write_point_cloud(written[-1], mesh)
        elif ext == ".obj":
            write_obj(path, mesh)
            written.append(path.with_suffix(".mtl"))
        else:
            write_glb(path, mesh.positions_m, mesh.colors, mesh.labels, mesh.faces,
                      face_labels(mesh.faces, mesh.labels), mesh.normals, config.glb_split_classes)
        written.append(path.with_name("labels.json"))
        write_legend(written[-1], mesh)
        if poses is not None and len(poses):
            written.append(path.with_name(f"{path.stem}_trajectory.txt"))
            write_tum(written[-1], timestamps_s, poses)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return written
