"""The `gui` command: a scripted run writes a screenshot of the whole window and exits; without a display
it says so in one line instead of crashing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gui_support import display_problem

ROOT = Path(__file__).resolve().parents[1]


def _run(args, env, timeout_s=120):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def test_gui_without_a_display_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    proc = _run(["gui", "--source", "synthetic:0"], env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "xvfb-run" in errors[0]


def test_scripted_run_writes_a_screenshot_of_the_window(tmp_path):
    problem = display_problem()
    if problem:
        pytest.skip(problem)
    from PIL import Image

    # QSettings go to a temporary config folder, not the user's; a saved setting turns the nets off
    # (loading torch would double this test's time; the window tests cover the nets)
    conf = tmp_path / "config" / "rgbd-reconstruction" / "gui.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[nets]\nenabled=false\n")
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", XDG_CONFIG_HOME=str(tmp_path / "config"))
    out = tmp_path / "out.png"
    proc = _run(["gui", "--source", "synthetic:3", "--autostart", "--exit-after-frames", "6", "--screenshot", out], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr[-3000:]
    img = Image.open(out)
    assert img.size[0] >= 800 and img.size[1] >= 500
    colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 500  # widgets, thumbnails and the shaded mesh
    saved = conf.read_text()
    assert "enabled=false" in saved and "geometry=" in saved  # settings read and written back
