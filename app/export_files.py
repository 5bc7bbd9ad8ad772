"""Owns what a GUI export writes: the mesh file the user named and only the extra files they ticked,
each named after the export (FILE_labels.ply, FILE_points.ply, FILE_legend.json, FILE_trajectory.txt),
with errors worded for the window (no command-line flags). Pure file work; any thread (a job thread)."""
from __future__ import annotations

from pathlib import Path

from fusion.errors import UserError
from storage.export import LabeledMesh, export_path_problem, face_labels, label_colors, write_legend, write_obj
from storage.export_gltf import write_glb
from storage.plyio import write_labeled_ply
from fusion.trajectory import write_tum

#: extra files an export may also write: key -> (menu text, file name suffix)
EXTRAS = {
    "labels_ply": ("Label-coloured copy (NAME_labels.ply)", "_labels.ply"),
    "points": ("Point cloud (NAME_points.ply)", "_points.ply"),
    "legend": ("Class legend (NAME_legend.json)", "_legend.json"),
    "trajectory": ("Camera path (NAME_trajectory.txt)", "_trajectory.txt"),
}


def extra_path(path: Path, key: str) -> Path:
    return path.with_name(path.stem + EXTRAS[key][1])


def check_export_path(path: Path | str) -> Path:
    """Refuse (UserError, window wording) an unknown format or a folder that is missing or not writable."""
    problem = export_path_problem(path)
    if problem:
        raise UserError(f"cannot export {Path(path).name}: {problem}; choose another file or folder")
    return Path(path)


def _write_mesh(path: Path, mesh: LabeledMesh) -> list[Path]:
    ext = path.suffix.lower()
    if ext == ".ply":
        write_labeled_ply(path, mesh.positions_m, mesh.colors, mesh.labels, mesh.faces)
        return [path]
    if ext == ".obj":
        write_obj(path, mesh)
        return [path, path.with_suffix(".mtl")]  # OBJ keeps its materials in an MTL file beside it
    write_glb(path, mesh.positions_m, mesh.colors, mesh.labels, mesh.faces, face_labels(mesh.faces, mesh.labels),
              mesh.normals, False)
    return [path]


def _write_extra(key: str, path: Path, mesh: LabeledMesh, timestamps_s, poses) -> bool:
    out = extra_path(path, key)
    if key == "labels_ply":
        write_labeled_ply(out, mesh.positions_m, label_colors(mesh.labels), mesh.labels, mesh.faces)
    elif key == "points":
        write_labeled_ply(out, mesh.positions_m, mesh.colors, mesh.labels, faces=None)
    elif key == "legend":
        write_legend(out, mesh)
    elif poses is not None and len(poses):
        write_tum(out, timestamps_s, poses)
    else:
        return False  # no camera path to write
    return True


def write_export(path: Path | str, mesh: LabeledMesh, extras=(), timestamps_s=None, poses=None) -> list[Path]:
    """Write `path` (format by extension) and the ticked `extras` (keys of EXTRAS); returns every file
    written, the export first."""
    path = check_export_path(path)
    try:
        written = _write_mesh(path, mesh)
        for key in EXTRAS:
            if key in extras and _write_extra(key, path, mesh, timestamps_s, poses):
                written.append(extra_path(path, key))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return written


def describe_written(files: list[Path]) -> str:
    """'exported scan.ply' or 'exported scan.obj with scan.mtl, scan_legend.json' (all in the export's
    folder, which the user has just chosen: short enough for the status bar)."""
    rest = [f.name for f in files[1:]]
    return f"exported {files[0].name}" + (f" with {', '.join(rest)}" if rest else "")
