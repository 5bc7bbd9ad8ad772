"""Owns autosave: periodic atomic session saves during a scan, in-progress markers and crash recovery.

One scan is one autosave `NAME.session` in the autosave folder, rewritten atomically every
`interval_s`. The thread that owns the pipeline calls `maybe_save(now_s)` between frames, so nothing
else touches the volume meanwhile; only a copy of the state is taken there (`capture`), and the
autosaver's own thread compresses and writes it while scanning goes on (a 7k-block room: a 0.1 s
pause instead of the 6 s the whole save takes; `python -m bench.session_bench`). Beside it lies a
marker `NAME.lock`: JSON with the pid (and the process's start time, so a reused pid does not look
alive) of the process scanning. `close()` removes the marker on a clean exit; an autosave whose
marker names a process that is gone is what a crash left behind, and `find_recoverable` lists it for
the GUI to offer. The folder keeps the newest `keep` autosaves.
Write errors (disk full, read-only folder) are logged once as a warning and never reach the scan;
the previous autosave stays as it was.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from storage.atomic import atomic_path, write_text_atomic
from fusion.errors import UserError

log = logging.getLogger(__name__)
SESSION_SUFFIX = ".session"
MARKER_SUFFIX = ".lock"
NAME_PREFIX = "scan-"


def default_folder() -> Path:
    """`$XDG_DATA_HOME/<app>/autosave`, by default `~/.local/share/<app>/autosave`."""
    from storage.session import APP_NAME  # lazy: this module stays light (no Open3D) for the GUI's start

    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / APP_NAME / "autosave"


@dataclass(frozen=True)
class AutosaveConfig:
    interval_s: float = 180.0        #: seconds between autosaves while the scan changes (also the retry delay)
    folder: Path | None = None       #: where autosaves go; None: `default_folder()`
    keep: int = 3                    #: autosaves kept in the folder (newest first; live scans always kept)

    def __post_init__(self):
        if self.interval_s <= 0 or self.keep < 1:
            raise ValueError("autosave interval_s must be > 0 and keep >= 1")


@dataclass(frozen=True)
class Recoverable:
    """An autosave left by a process that did not exit cleanly (immutable; any thread)."""

    session_path: Path          #: the autosaved session, for `load_session`
    marker_path: Path           #: its marker (remove with `discard` once recovered or declined)
    pid: int                    #: the process that was scanning
    saved_at_unix_s: float      #: when the autosave was last written
    size_bytes: int
    info: dict                  #: what the scanning process wrote into the marker (source, start time)


# --- markers and liveness -------------------------------------------------------------------
def _start_ticks(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks since boot (Linux /proc); None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True when process `pid` runs (and, given `start_ticks`, is the same process, not a reused pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now_ticks = _start_ticks(pid)
    return start_ticks is None or now_ticks is None or now_ticks == start_ticks


def _read_marker(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("pid"), int) else None


def _marker_alive(doc: dict | None) -> bool:
    """Whether the marker's process may still be scanning (a marker from another host counts as alive)."""
    if doc is None:
        return False
    if doc.get("host") not in (None, socket.gethostname()):
        return True
    return pid_alive(doc["pid"], doc.get("start_ticks"))


def _marker_of(session_path: Path) -> Path:
    return session_path.with_suffix(MARKER_SUFFIX)


def _is_stale_temp(tmp: Path) -> bool:
    """A temp file `.NAME.session.XXXX.tmp` whose scan has no live process (a save killed midway)."""
    name = tmp.name[1:].split(SESSION_SUFFIX)[0]
    return not _marker_alive(_read_marker(tmp.parent / f"{name}{MARKER_SUFFIX}"))


def find_recoverable(folder: Path | str | None = None) -> list[Recoverable]:
    """Autosaves whose marker names a process that is gone (a crash), newest first. Any thread."""
    folder = Path(folder) if folder is not None else default_folder()
    found = []
    for marker in folder.glob(f"{NAME_PREFIX}*{MARKER_SUFFIX}"):
        doc = _read_marker(marker)
        session = marker.with_suffix(SESSION_SUFFIX)
        if doc is None or _marker_alive(doc):
            continue
        try:
            st = session.stat()
        except OSError:  # crashed before its first autosave, or deleted meanwhile
            continue
        found.append(Recoverable(session, marker, doc["pid"], st.st_mtime, st.st_size, doc))
    return sorted(found, key=lambda r: r.saved_at_unix_s, reverse=True)


def discard(entry: Recoverable, delete_session: bool = False) -> None:
    """Forget a recoverable autosave (after recovering or declining it); optionally delete its file too."""
    for path in (entry.marker_path, entry.session_path if delete_session else None):
        if path is not None:
            path.unlink(missing_ok=True)


# --- the autosaver --------------------------------------------------------------------------
class Autosaver:
    """Saves the scan every `interval_s`: `capture()` copies the state on the owning thread and returns
    a writer `w(path)` (e.g. `functools.partial(write_session, capture=capture_session(...))`) that
    `maybe_save` runs on the autosaver's thread while fusion goes on; an interval that comes while a
    write is still running is skipped.

    Thread: the thread that owns the pipeline (the fusion worker) calls `maybe_save`, `save_now`,
    `wait` and `close`. Failures are logged, counted and never raised.
    """

    def __init__(self, capture: Callable[[], Callable[[Path], object]], config: AutosaveConfig = AutosaveConfig(),
                 info: dict | None = None, name: str | None = None):
        self.config, self._capture = config, capture
        self.folder = Path(config.folder) if config.folder is not None else default_folder()
        name = name or f"{NAME_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.path = self.folder / f"{name}{SESSION_SUFFIX}"
        self.marker_path = _marker_of(self.path)
        self._info = dict(info or {})
        self._last_attempt_s: float | None = None
        self._warned = False
        self._lock = threading.Lock()          # marker and session file vs `close` from the owning thread
        self._writer: threading.Thread | None = None
        self._delete_on_close = False
        self.saves = 0                        #: autosaves written
        self.failures = 0                     #: autosaves that failed
        self.last_error: str | None = None    #: why the latest attempt failed (None after a success)
        self.last_pause_s: float | None = None  #: how long the latest capture held the owning thread
        self.closed = False

    def start(self, now_s: float) -> None:
        """The scan starts (or resumes) at `now_s`: the first autosave comes one interval later."""
        self._last_attempt_s = now_s

    def due(self, now_s: float) -> bool:
        """True when `interval_s` has passed since the last attempt (the first call starts the clock)."""
        if self.closed:
            return False
        if self._last_attempt_s is None:
            self._last_attempt_s = now_s
        return now_s - self._last_attempt_s >= self.config.interval_s

    @property
    def writing(self) -> bool:
        """A background write is running."""
        return self._writer is not None and self._writer.is_alive()

    def maybe_save(self, now_s: float, changed: bool = True) -> bool:
        """Begin a background save when an interval has passed since the last attempt and the scan
        `changed`; True if one began (`wait` for it). `now_s` is a monotonic clock."""
        if not changed or not self.due(now_s) or self.writing:
            return False
        self._last_attempt_s = now_s
        writer = self._take_capture()
        if writer is None or not self._mark():
            return False
        self._writer = threading.Thread(target=self._save_file, args=(writer,), name="autosave-writer", daemon=True)
        self._writer.start()
        return True

    def save_now(self, now_s: float) -> bool:
        """Save at once and wait for it (atomically: the previous autosave stays intact on failure);
        True when written."""
        if self.closed:
            return False
        self.wait()
        self._last_attempt_s = now_s
        writer = self._take_capture()
        return writer is not None and self._mark() and self._save_file(writer)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for a background write; True when none is left running."""
        if self._writer is not None:
            self._writer.join(timeout_s)
        return not self.writing

    def _take_capture(self):
        t0 = time.perf_counter()
        try:
            return self._capture()
        except Exception as exc:  # noqa: BLE001 - an autosave must never stop the scan
            self._failed(exc)
            return None
        finally:
            self.last_pause_s = time.perf_counter() - t0

    def _mark(self) -> bool:
        """Create the folder and this scan's marker (owning thread); False (counted) when that fails."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_marker()
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def _save_file(self, writer: Callable[[Path], object]) -> bool:
        """Write through `writer` atomically; bookkeeping. The owning thread or the autosaver's."""
        t0 = time.perf_counter()
        try:
            with atomic_path(self.path) as tmp:
                writer(tmp)
        except Exception as exc:  # noqa: BLE001 - an autosave must never stop the scan
            self._failed(exc)
            return False
        with self._lock:
            if self.closed and self._delete_on_close:  # closed meanwhile, its file unwanted
                self.path.unlink(missing_ok=True)
                return False
        self._succeeded(time.perf_counter() - t0)
        self._prune()
        return True

    def _write_marker(self) -> None:
        if _read_marker(self.marker_path) is not None:
            return
        pid = os.getpid()
        doc = {"pid": pid, "start_ticks": _start_ticks(pid), "host": socket.gethostname(),
               "started_unix_s": time.time(), "session": self.path.name} | self._info
        write_text_atomic(self.marker_path, json.dumps(doc, indent=1) + "\n")

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
        else:
            reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        self.last_error = reason
        if not self._warned:
            self._warned = True
            kept = f"the previous autosave {self.path} is kept" if self.path.is_file() else "no autosave yet"
            log.warning("autosave to %s failed (%s); scanning goes on, %s; retrying every %g s",
                        self.folder, reason, kept, self.config.interval_s,
                        exc_info=not isinstance(exc, (OSError, UserError)))
        else:
            log.debug("autosave failed again: %s", reason)

    def _succeeded(self, seconds: float) -> None:
        if self._warned:
            log.info("autosave works again (%s)", self.path)
        self._warned, self.last_error = False, None
        self.saves += 1
        log.info("autosaved %s in %.2f s", self.path, seconds)

    def _prune(self) -> None:
        """Delete the oldest autosaves beyond `keep` and the temp files of saves killed midway (never
        those of a live process)."""
        others = [p for p in self.folder.glob(f"{NAME_PREFIX}*{SESSION_SUFFIX}") if p != self.path]
        others = [p for p in others if not _marker_alive(_read_marker(_marker_of(p)))]
        temps = [t for t in self.folder.glob(f".{NAME_PREFIX}*{SESSION_SUFFIX}.*.tmp") if _is_stale_temp(t)]
        try:
            others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
            for old in others[self.config.keep - 1:]:
                old.unlink(missing_ok=True)
                _marker_of(old).unlink(missing_ok=True)
            for t in temps:
                t.unlink(missing_ok=True)
        except OSError as exc:
            log.debug("pruning old autosaves failed: %s", exc)

    def close(self, delete_session: bool = False) -> None:
        """Clean exit: remove the marker (the autosave is no longer offered for recovery). Does not wait
        for a background write: it finishes on its own (and is deleted then with delete_session)."""
        with self._lock:
            if self.closed:
                return
            self.closed, self._delete_on_close = True, delete_session
            for path in (self.marker_path, self.path if delete_session else None):
                if path is not None:
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as exc:
                        log.warning("cannot remove %s: %s", path, exc.strerror or exc)

    def __enter__(self) -> "Autosaver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
