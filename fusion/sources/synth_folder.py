"""Owns reading the project's synthetic folder layout (what `synth.writer` writes).

synth.json marks the folder; frames are color/NNNNNN.png and depth/NNNNNN.png (uint16, depth_scale
units per metre); timestamps and ground-truth poses come from groundtruth.txt (TUM format).
"""
from __future__ import annotations

import json
from pathlib import Path


from fusion.errors import SourceError
from fusion.frame import Frame, Intrinsics
from fusion.sources.base import PosedSequenceSource
from fusion.sources.images import read_color, read_depth_m
from fusion.trajectory import read_tum

MARKER = "synth.json"
FORMAT = "rgbd-synth"


def _read_meta(path: Path) -> dict:
    marker = path / MARKER
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{marker}: cannot read synthetic marker ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SourceError(f"{marker}: not a '{FORMAT}' marker")
    try:
        k = meta["intrinsics"]
        intr = Intrinsics(float(k["fx"]), float(k["fy"]), float(k["cx"]), float(k["cy"]),
                          int(k["width"]), int(k["height"]))
        frames, scale = int(meta["frames"]), float(meta["depth_scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"{marker}: missing or bad field ({exc})") from None
    if not intr.is_plausible() or frames < 0 or scale <= 0:
        raise SourceError(f"{marker}: implausible intrinsics, frame count or depth_scale")
    meta["_intrinsics"], meta["_frames"], meta["_scale"] = intr, frames, scale
    return meta


class SynthFolderSource(PosedSequenceSource):
    """Frames of a folder written by `write_sequence`. Used by one thread at a time."""

    kind = "synthetic-folder"

    def __init__(self, path, max_frames: int | None = None):
        self.path = Path(path)
        meta = _read_meta(self.path)
        self.meta, self.intrinsics, self.depth_scale = meta, meta["_intrinsics"], meta["_scale"]
        n = meta["_frames"] if max_frames is None else min(meta["_frames"], max(0, int(max_frames)))
        gt = self.path / "groundtruth.txt"
        if not gt.is_file():
            raise SourceError(f"{gt}: missing ground-truth trajectory")
        self.timestamps_s, self.poses = read_tum(gt)
        if len(self.poses) < n:
            raise SourceError(f"{gt}: {len(self.poses)} poses for {n} frames")
        self.n_frames = n

    @classmethod
    def detect(cls, path: Path) -> bool:
        marker = Path(path) / MARKER
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            return True  # a broken marker: open it and report what is wrong

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "frames": self.n_frames,
                "seed": self.meta.get("seed"), "room_type": self.meta.get("room_type")}

    def frame(self, index: int) -> Frame:
        name = f"{index:06d}.png"
        color = read_color(self.path / "color" / name)
        depth_path = self.path / "depth" / name
        depth = read_depth_m(depth_path, self.depth_scale)
        K = self.intrinsics
        for p, arr in ((self.path / "color" / name, color), (depth_path, depth)):
            if arr.shape[:2] != (K.height, K.width):
                raise SourceError(f"{p}: image is {arr.shape[1]}x{arr.shape[0]}, expected {K.width}x{K.height}")
        return Frame(color, depth, K, float(self.timestamps_s[index]), index, self.poses[index].copy())

