"""Fusion: frames, sources, tracking, the TSDF volume, dirty chunks and meshing (no Qt, no nets)."""
