"""Owns source selection: parse a SRC string, detect a folder's layout, open the right FrameSource."""
from __future__ import annotations

from pathlib import Path

from fusion.errors import SourceError
from fusion.sources.base import FrameSource
from fusion.sources.redwood import RedwoodSource
from fusion.sources.sens import SensSource
from fusion.sources.sevenscenes import SevenScenesSource
from fusion.sources.synth_folder import SynthFolderSource
from fusion.sources.synthetic import SyntheticSource
from fusion.sources.tum import TumSource

# Folder layouts, tried in this order (the first whose detect() says yes wins).
FOLDER_SOURCES = {
    "synthetic-folder": SynthFolderSource,
    "7scenes": SevenScenesSource,
    "tum": TumSource,
    "redwood": RedwoodSource,
}
RECORDING_SUFFIXES = (".bag", ".db3")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
DEFAULT_SYNTHETIC_SEED = 0


def open_source(spec: str, max_frames: int | None = None) -> FrameSource:
    """Open SRC: `synthetic[:SEED]`, a dataset folder, a `.bag`/`.db3`/`.sens` file or `realsense[:SERIAL]`."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        seed_text = spec.partition(":")[2] or str(DEFAULT_SYNTHETIC_SEED)
        if not seed_text.isdigit():
            raise SourceError(f"synthetic seed must be a non-negative integer, got {seed_text!r}")
        return SyntheticSource(int(seed_text), n_frames=max(300, max_frames or 0), max_frames=max_frames)
    if spec == "realsense" or spec.startswith("realsense:"):
        from fusion.sources.realsense import LiveConfig, open_live

        return open_live(LiveConfig(serial=spec.partition(":")[2] or None), max_frames=max_frames)
    path = Path(spec)
    if path.suffix.lower() in RECORDING_SUFFIXES:
        from fusion.sources.recording import RecordingSource

        return RecordingSource(path, max_frames=max_frames)
    if SensSource.detect(path):
        return SensSource(path, max_frames=max_frames)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder")
    if not path.is_dir():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            raise SourceError(f"{spec}: video files are not a supported source; record with "
                              "'python main.py record' (RealSense .bag/.db3) or use a dataset folder")
        raise SourceError(f"{spec}: not a dataset folder, recording (.bag/.db3), ScanNet .sens or synthetic:SEED")
    if not any(path.iterdir()):
        raise SourceError(f"{spec}: folder is empty")
    for cls in FOLDER_SOURCES.values():
        if cls.detect(path):
            return cls(path, max_frames=max_frames)
    names = ", ".join(FOLDER_SOURCES)
    raise SourceError(f"{spec}: unknown dataset layout (expected one of: {names})")
