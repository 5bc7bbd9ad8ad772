"""Owns the synthetic labeled world: procedural rooms, a hand-held camera path, an RGB-D sensor model."""
