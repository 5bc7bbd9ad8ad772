"""Owns how a benchmark ends: run it, print its table, write its JSON (atomically), or say what was wrong
with the user's input in one line. Thread: the caller's (a benchmark's main)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from fusion.errors import UserError
from storage.atomic import write_text_atomic


def finish(run: Callable[[], dict], print_table: Callable[[dict], None], out: Path) -> int:
    """0 after printing and writing run()'s result to `out`; 2 with one line on stderr for a UserError."""
    try:
        result = run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    return 0
