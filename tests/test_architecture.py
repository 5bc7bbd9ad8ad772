"""Layering rules: Qt only in app/; fusion/, storage/ and synth/ never import nets/."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str):
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield path, [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield path, [node.module]


def test_no_qt_outside_app():
    for folder in ("fusion", "nets", "storage", "synth"):
        for path, names in _imports(folder):
            assert not any(n.split(".")[0] in ("PyQt6", "PySide6", "PyQt5") for n in names), path


def test_fusion_storage_synth_do_not_import_nets():
    for folder in ("fusion", "storage", "synth"):
        for path, names in _imports(folder):
            assert not any(n.split(".")[0] in ("nets", "app") for n in names), path
