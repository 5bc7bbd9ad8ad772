"""Owns reading a ScanNet scene folder: the `.sens` scan, the labeled mesh and the label-map TSV.

A ScanNet scene folder `scans/sceneXXXX_XX/` holds `sceneXXXX_XX.sens` (the RGB-D scan, read by
`fusion.sources.sens.SensSource`) and `sceneXXXX_XX_vh_clean_2.labels.ply` (the reconstructed mesh,
binary PLY with vertex x,y,z, red,green,blue,alpha and ushort label = NYU40 id). The mesh and the
`.sens` poses share one world frame (the scene's axis alignment in `<scene>.txt` is not applied), so
a fused scan and its ground truth line up without a transform. `scannetv2-labels.combined.tsv` maps
ScanNet's raw category ids to NYU40 ids. Every reader fails with a one-line `UserError` (or
`SourceError` for the scan) naming the file. The functions keep no state; any thread may call them.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fusion.classes import CLASSES, UNLABELED
from fusion.errors import UserError
from fusion.sources.sens import SensConfig, SensSource

LABEL_MAP_COLUMNS = ("id", "nyu40id")  # columns of scannetv2-labels.combined.tsv this module reads
MESH_SUFFIX = "_vh_clean_2.labels.ply"
SENS_SUFFIX = ".sens"
_LABELED_IDS = np.array(list(CLASSES), np.int64)


@dataclass(frozen=True)
class LabeledMesh:
    """A labeled triangle mesh (immutable once built).

    positions_m (N,3) float32; colors (N,3) uint8 RGB; labels (N,) uint16 NYU40 ids (0 = unlabeled);
    faces (M,3) int64 vertex indices.
    """

    positions_m: np.ndarray
    colors: np.ndarray
    labels: np.ndarray
    faces: np.ndarray

    def __post_init__(self) -> None:
        for arr in (self.positions_m, self.colors, self.labels, self.faces):
            arr.setflags(write=False)


def _int_cell(row: dict, column: str, path: Path, lineno: int) -> int:
    text = (row.get(column) or "").strip()
    if column == "nyu40id" and not text:
        return UNLABELED  # a raw category with no NYU40 class
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{path}:{lineno}: column {column!r} is not an integer: {text[:40]!r}") from None


def read_label_map(tsv_path: Path) -> dict[int, int]:
    """{raw category id: NYU40 id} from ScanNet's `scannetv2-labels.combined.tsv` (tab-separated, header row)."""
    path = Path(tsv_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: label map file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read label map ({type(exc).__name__})") from None
    reader = csv.DictReader(lines, delimiter="\t")
    missing = [c for c in LABEL_MAP_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{path}: label map lacks column(s) {', '.join(missing)} "
                        "(expected ScanNet's tab-separated scannetv2-labels.combined.tsv)")
    mapping: dict[int, int] = {}
    for lineno, row in enumerate(reader, 2):
        raw_id, nyu40 = (_int_cell(row, c, path, lineno) for c in LABEL_MAP_COLUMNS)
        if raw_id in mapping:
            raise UserError(f"{path}:{lineno}: raw category id {raw_id} appears twice")
        if not 0 <= nyu40 <= 40:
            raise UserError(f"{path}:{lineno}: nyu40id {nyu40} is outside 0..40")
        mapping[raw_id] = nyu40
    if not mapping:
        raise UserError(f"{path}: label map holds no rows")
    return mapping


def _vertex_field(vertex, names: tuple, path: Path) -> np.ndarray:
    missing = [n for n in names if n not in vertex.data.dtype.names]
    if missing:
        raise UserError(f"{path}: mesh vertices lack {', '.join(missing)} (expected a ScanNet labels.ply)")
    return np.stack([vertex.data[n] for n in names], 1)


def _faces(ply, path: Path) -> np.ndarray:
    if "face" not in ply or len(ply["face"].data) == 0:
        return np.zeros((0, 3), np.int64)
    face = ply["face"].data
    name = "vertex_indices" if "vertex_indices" in face.dtype.names else face.dtype.names[0]
    try:
        return np.stack(face[name]).astype(np.int64).reshape(-1, 3)
    except ValueError:
        raise UserError(f"{path}: mesh faces must all be triangles") from None


def read_labeled_mesh(path: Path) -> LabeledMesh:
    """A ScanNet `*_vh_clean_2.labels.ply` (binary PLY; vertex label = NYU40 id) as a LabeledMesh."""
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: labeled mesh is missing")
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, OSError, ValueError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: cannot read labeled mesh ({first})") from None
    if "vertex" not in ply:
        raise UserError(f"{path}: mesh has no vertex element")
    vertex = ply["vertex"]
    positions = _vertex_field(vertex, ("x", "y", "z"), path).astype(np.float32)
    colors = _vertex_field(vertex, ("red", "green", "blue"), path).astype(np.uint8)
    labels = _vertex_field(vertex, ("label",), path)[:, 0].astype(np.uint16)
    faces = _faces(ply, path)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(positions)):
        raise UserError(f"{path}: a face refers to a vertex that does not exist")
    return LabeledMesh(positions, colors, labels, faces)


def to_labeled_classes(nyu40_labels: np.ndarray) -> np.ndarray:
    """NYU40 ids with every id the app does not label (ScanNet's 20 benchmark classes and the ceiling)
    set to 0 (unlabeled); uint16."""
    labels = np.asarray(nyu40_labels)
    keep = np.isin(labels, _LABELED_IDS)
    return np.where(keep, labels, UNLABELED).astype(np.uint16)


class ScanNetScene:
    """One ScanNet scene folder: its scan and its labeled ground truth. Used by one thread at a time.

    The constructor only checks that both files exist; `source()` opens the scan and `target()` reads
    the mesh, each time it is called.
    """

    def __init__(self, folder: Path, sens_config: SensConfig = SensConfig()):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"{self.folder}: no such ScanNet scene folder")
        self.sens_config = sens_config
        self.name = self._scene_name()
        self.sens_path = self.folder / f"{self.name}{SENS_SUFFIX}"
        self.mesh_path = self.folder / f"{self.name}{MESH_SUFFIX}"
        if not self.mesh_path.is_file():
            raise UserError(f"{self.mesh_path}: labeled mesh is missing (ScanNet scene "
                            f"{self.name} needs {self.name}{MESH_SUFFIX})")

    def _scene_name(self) -> str:
        """The folder's name when `<name>.sens` is there, else the stem of the folder's only `.sens`."""
        if (self.folder / f"{self.folder.name}{SENS_SUFFIX}").is_file():
            return self.folder.name
        found = sorted(p for p in self.folder.glob(f"*{SENS_SUFFIX}") if p.is_file())
        if len(found) == 1:
            return found[0].stem
        if not found:
            raise UserError(f"{self.folder}: no {self.folder.name}{SENS_SUFFIX} (ScanNet scan) in the folder")
        names = ", ".join(p.name for p in found)
        raise UserError(f"{self.folder}: several .sens files ({names}); expected {self.folder.name}{SENS_SUFFIX}")

    def source(self, max_frames: Optional[int] = None) -> SensSource:
        """The scan as a frame source (the caller closes it)."""
        return SensSource(self.sens_path, max_frames=max_frames, config=self.sens_config)

    def target(self) -> LabeledMesh:
        """The labeled mesh with labels reduced to ScanNet-20 (NYU40 ids; others 0), in the scan's world frame."""
        mesh = read_labeled_mesh(self.mesh_path)
        return LabeledMesh(mesh.positions_m, mesh.colors, to_labeled_classes(mesh.labels), mesh.faces)
