"""Owns where the shipped nets resources live (no torch import, so callers can check cheaply)."""
from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "resources" / "nets"
DEFAULT_WEIGHTS = RESOURCES / "semantic_completion.pt"
