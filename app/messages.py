"""Owns how backend failures read to the user: one plain line, without terminal colour codes, C++
function signatures or source paths (Open3D's messages carry all three). Pure functions; any thread."""
from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: "[Open3D Error] (void open3d::...(...)) /path/File.cpp:186: " and similar prefixes
_BACKEND_PREFIX = re.compile(r"^\s*\[[^\]]*(?:Error|Warning)\]\s*(?:\(.*?\)\s+)?(?:\S+\.(?:cpp|cu|h|hpp):\d+:\s*)?")
#: backend wording -> what it means to the user of the app
_MEANINGS = (
    ("No block is touched", "no depth of this frame lies within the depth range; widen Depth from/to"),
)


def plain_error(exc: BaseException | str) -> str:
    """One plain line for an exception (or message) from an SDK or Open3D."""
    text = _ANSI.sub("", str(exc)).strip()
    text = _BACKEND_PREFIX.sub("", text).strip()
    for backend, meaning in _MEANINGS:
        if backend in text:
            return meaning
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        return type(exc).__name__ if isinstance(exc, BaseException) else "unknown error"
    return line
