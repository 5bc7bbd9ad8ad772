"""Owns the viewport benchmark: the app's own window scans a source at the app's defaults (1 cm, tracking,
labels on), and it reports how long the 3D view's paints take while the scan runs and how much CPU the
window uses once nothing changes.

- paint time: every `paintGL` of the viewport from Start until the scan finished (its own clock, GL
  finished inside the paint: `ViewportConfig.finish_paint`), p50 / p95 / max and the count, and the
  triangles each paint drew;
- idle: after the scan finished and the nets' queue emptied, the window's event loop runs alone for
  `--idle-s`; the process's CPU time over that window (in cores; 1.0 is one core busy) and the paints
  it made (none is expected: nothing changed).
On a machine without a GPU the paints run in Mesa's software renderer (llvmpipe) on the same 2 cores as
fusion and the nets, so they are slower than on a desktop with a graphics card; the figure is an upper bound.

Run: `xvfb-run -a .venv/bin/python -m bench.viewport_bench [SRC] [--frames N] [--idle-s S]`; it prints a
table and writes bench/results/viewport.json. Thread: the GUI thread (this process's main thread).
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py sets it for the app

import numpy as np  # noqa: E402

from bench.report import finish  # noqa: E402
from fusion.errors import UserError  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ViewportBenchConfig:
    frames: int = 200                  #: frames to scan
    idle_s: float = 10.0               #: idle window measured after the scan
    window_px: tuple = (1280, 800)     #: window size
    settle_timeout_s: float = 300.0    #: longest wait for the nets' queue to empty after the scan


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _thread_cpu_s() -> dict:
    """CPU seconds of every thread of this process, by name: Python's thread name, else the OS's
    (Qt, OpenMP, the GL driver), summed over threads of the same name (Linux /proc; {} elsewhere)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for task in Path("/proc/self/task").glob("*") if Path("/proc/self/task").is_dir() else []:
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), comm)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _wait_until(app, predicate, timeout_s: float) -> bool:
    """Run the event loop until predicate() holds (checked every 50 ms); False on timeout."""
    from PyQt6.QtCore import QEventLoop, QTimer

    loop, deadline = QEventLoop(), time.monotonic() + timeout_s
    timer = QTimer()
    timer.timeout.connect(lambda: (predicate() or time.monotonic() > deadline) and loop.quit())
    timer.start(50)
    if not predicate():
        loop.exec()
    timer.stop()
    return bool(predicate())


def _run_idle(seconds: float) -> None:
    """The event loop alone for `seconds`: no polling of ours wakes it."""
    from PyQt6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def _percentiles(values: list) -> dict:
    v = np.asarray(values, float)
    if not len(v):
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {"n": int(len(v)), "p50": round(float(np.percentile(v, 50)), 2),
            "p95": round(float(np.percentile(v, 95)), 2), "max": round(float(v.max()), 2)}


def run(source: str, config: ViewportBenchConfig) -> dict:
    from app.cli import check_display, configure_gl

    check_display()
    configure_gl()
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    from PyQt6.QtWidgets import QApplication

    from app.main_window import GuiConfig, MainWindow
    from app.viewport import ViewportConfig

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        window = MainWindow(GuiConfig(settings_path=str(Path(tmp) / "settings.ini"), error_dialogs=False,
                                      confirm_discard=False, recovery_dialog=False, list_devices_at_start=False,
                                      viewport=ViewportConfig(paint_history=1_000_000)))
        try:
            return _measure(app, window, source, config)
        finally:
            window.close_discarding()
            window.shutdown()


def _measure(app, window, source: str, config: ViewportBenchConfig) -> dict:
    window.resize(*config.window_px)
    window.show()
    app.processEvents()
    if window.viewport.gl_error:
        raise UserError(f"no OpenGL 3.3 context: {window.viewport.gl_error}")
    if not _wait_until(app, lambda: window.warmup.seconds is not None, config.settle_timeout_s):
        raise UserError("the compiled kernels did not get ready")
    window.panel.select_source(source)
    window.viewport.paint_ms.clear()
    window.viewport.paint_triangles.clear()
    t0 = time.monotonic()
    window.start_scan(config.frames)
    if not _wait_until(app, lambda: window.status.state == "finished" or window.errors,
                       timeout_s=config.frames * 30.0):
        raise UserError(f"{source}: the scan did not finish")
    if window.errors:
        raise UserError(f"{source}: {window.errors[0]}")
    scan_s = time.monotonic() - t0
    scan_paints, scan_triangles = list(window.viewport.paint_ms), list(window.viewport.paint_triangles)
    settled = _wait_until(app, lambda: window.status.nets.get("queue", 0) == 0, config.settle_timeout_s)
    _run_idle(1.0)  # the last snapshot and paint land
    paints_before, cpu_before, wall_before = len(window.viewport.paint_ms), _cpu_s(), time.monotonic()
    threads_before = _thread_cpu_s()
    _run_idle(config.idle_s)
    idle_wall = time.monotonic() - wall_before
    threads = {name: round((t - threads_before.get(name, 0.0)) / idle_wall, 4) for name, t in _thread_cpu_s().items()}
    return {"source": source, "frames": window.status.frames, "scan_s": round(scan_s, 2),
            "paint_ms_scanning": _percentiles(scan_paints), "triangles_drawn_scanning": _percentiles(scan_triangles),
            "idle_cpu_cores": round((_cpu_s() - cpu_before) / idle_wall, 4),
            "idle_paints_per_s": round((len(window.viewport.paint_ms) - paints_before) / idle_wall, 3),
            "idle_s": round(idle_wall, 2), "idle_cpu_cores_by_thread": threads, "nets_settled_before_idle": settled,
            "nets": {k: window.status.nets.get(k) for k in ("enabled", "latency_p50_s", "latency_p95_s")},
            "machine": {"cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg())}}


def print_table(r: dict) -> None:
    p = r["paint_ms_scanning"]
    print(f"{r['source']}: {r['frames']} frames in {r['scan_s']:.1f} s, app defaults (1 cm, tracking, labels on)")
    print("paint while scanning (ms) | p50 | p95 | max | paints | idle CPU (cores) | idle paints/s")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"{'':<25} | {fmt(p['p50'])} | {fmt(p['p95'])} | {fmt(p['max'])} | {p['n']} | "
          f"{r['idle_cpu_cores']:.3f} | {r['idle_paints_per_s']:.2f}")
    t = r["triangles_drawn_scanning"]
    print(f"triangles drawn per paint: p50 {t['p50'] or 0:,.0f}, p95 {t['p95'] or 0:,.0f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="?", default="synthetic:3", help="any source `reconstruct` takes")
    p.add_argument("--frames", type=int, default=ViewportBenchConfig.frames)
    p.add_argument("--idle-s", type=float, default=ViewportBenchConfig.idle_s)
    p.add_argument("--window", default="x".join(map(str, ViewportBenchConfig.window_px)), metavar="WxH",
                   help="window size in pixels (default %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "viewport.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def checked_run() -> dict:
        if args.frames < 1 or args.idle_s <= 0:
            raise UserError("--frames must be at least 1 and --idle-s positive")
        size = args.window.lower().split("x")
        if len(size) != 2 or not all(v.isdigit() and int(v) >= 64 for v in size):
            raise UserError(f"--window {args.window}: give WIDTHxHEIGHT in pixels, each at least 64")
        return run(args.source, ViewportBenchConfig(frames=args.frames, idle_s=args.idle_s,
                                                    window_px=(int(size[0]), int(size[1]))))

    return finish(checked_run, print_table, args.out)


if __name__ == "__main__":
    sys.exit(main())
