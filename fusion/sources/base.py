"""Owns the frame-source interface every source implements (folders, recordings, synthetic, live)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from fusion.frame import Frame


class FrameSource:
    """An ordered stream of `Frame`s. Used by one thread at a time (the capture/fusion thread).

    Subclasses implement `__len__` (None when unknown, e.g. live), `__iter__`, and for folder
    sources the classmethod `detect(path) -> bool`. Reading a bad frame raises `SourceError` with a
    one-line message naming the file; frames before it were already yielded.
    """

    #: short name shown to users and written to stats.json
    kind: str = "source"

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-able description (kind, path, frame count) for stats and sessions."""
        return {"kind": self.kind, "frames": len(self)}

    @property
    def has_gt_poses(self) -> bool:
        return False

    def close(self) -> None:
        """Release files or devices; safe to call twice."""

    @classmethod
    def detect(cls, path: Path) -> bool:
        """True when `path` (a folder) is in this source's layout."""
        return False

    def first_gt_pose(self) -> Optional["object"]:
        """The first frame's ground-truth T_world_cam, or None; cheap (no full read)."""
        return None


class PosedSequenceSource(FrameSource):
    """A source of `n_frames` frames, each with a ground-truth pose in `poses`, read by `frame(i)`.

    Subclasses set `n_frames` and `poses` ((n,4,4) T_world_cam) and implement `frame(index)`.
    Used by one thread at a time.
    """

    n_frames: int = 0
    poses = None

    @property
    def has_gt_poses(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.n_frames

    def first_gt_pose(self):
        return self.poses[0].copy() if self.n_frames else None

    def frame(self, index: int) -> Frame:  # pragma: no cover - interface
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.n_frames):
            yield self.frame(i)
