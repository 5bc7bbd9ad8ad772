"""Owns what a scan leaves on disk: sessions, autosave and crash recovery, labeled-mesh exports
(PLY, glTF, OBJ) and atomic file writing. No Qt, no nets."""
