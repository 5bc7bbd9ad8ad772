"""Owns the fusion worker: the thread that reads the source, fuses frames, serves the nets' snapshot
requests they leave to it (by default the nets serve their own), autosaves, and publishes display snapshots to the GUI through a newest-only outbox. The GUI
thread talks to it only through commands (queued, run on the fusion thread) and `call` (a function run
on the fusion thread, answered through a Future); it never touches the pipeline."""
from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from app.messages import plain_error
from app.nets_hookup import NetsHookup
from app.camera_path import CameraPath
from app.publisher import publish
from app.scan_world import continued_index, follow_gravity, follow_loops, land_loop_correction
from app.snapshots import DisplayOutbox, Event
from app.worker_env import lower_thread_priority, open_gui_source, retime_offset_s
from storage.autosave import AutosaveConfig, Autosaver
from fusion.errors import UserError
from fusion.pipeline import FusionPipeline, PipelineConfig
from storage.session import capture_session, write_session
from fusion.sources.base import FrameSource
from fusion.sources.stall import StallGuardConfig, guarded_frames
from fusion.tracking import LOST_MESSAGE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FusionWorkerConfig:
    """How the fusion worker paces itself and what it publishes."""

    idle_wait_s: float = 0.02          #: idle loop: wait this long for a command between checks
    publish_interval_s: float = 0.03   #: a display snapshot at most this often
    status_interval_s: float = 0.25    #: while nothing changes, status-only snapshots at most this often
    join_timeout_s: float = 2.0        #: bound on joining the thread
    thumb_width_px: int = 160          #: thumbnails' width at most
    fps_window: int = 30               #: frames in the fusion frames/s window
    serve_regions_idle: int = 4        #: nets snapshot regions served per idle iteration at most
    real_time_recordings: bool = False  #: pace .bag/.db3 replay at the recorded rate (drops what fusion cannot keep up with)
    retime_gap_s: float = 1 / 30       #: a new source fused into an older model starts this long after its last frame
    nice: int = 5                      #: the worker (and the threads it starts: nets, kernels) runs this much nicer than the GUI
    lod_cells_voxels: tuple = (4, 8)   #: the display's simplified surfaces cluster vertices in cells this many voxels wide
    autosave: AutosaveConfig = field(default_factory=AutosaveConfig)  #: periodic session saves for crash recovery
    stall: StallGuardConfig = field(default_factory=StallGuardConfig)  #: when a silent source counts as stalled


class FusionWorker:
    """Public methods are for the GUI thread (they queue commands or read the outbox); the pipeline,
    the source and everything else run on the thread named "fusion" (or inside `step()` in tests)."""

    def __init__(self, notify: Callable[[], None], nets: NetsHookup,
                 pipeline_config: PipelineConfig = PipelineConfig(),
                 config: FusionWorkerConfig = FusionWorkerConfig()):
        self.config, self.nets, self._notify = config, nets, notify
        self.pipeline_config = pipeline_config
        self.outbox = DisplayOutbox()
        self._commands: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # fusion-thread state
        self.pipeline: FusionPipeline | None = None
        self.source: FrameSource | None = None
        self.source_spec = ""
        self.state = "idle"
        self._it = None
        self._autosaver: Autosaver | None = None
        self.events: list[Event] = []   # messages for the user, handed out with the next snapshot
        self._new_scan()

    # --- GUI-thread API -----------------------------------------------------------------------
    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fusion", daemon=True)
        self._thread.start()

    def command(self, name: str, *args) -> None:
        """Queue a command: start(spec, max_frames), pause, resume, stop_source, reset, config(cfg),
        nets(on), record(path | None), load(LoadedSession, name)."""
        self._commands.put((name, args))

    def call(self, fn: Callable[["FusionWorker"], object]) -> Future:
        """Run fn(worker) on the fusion thread; the Future holds its result or exception."""
        fut: Future = Future()
        self._commands.put(("call", (fn, fut)))
        return fut

    def stop(self) -> None:
        self._stop.set()
        self._commands.put(("wake", ()))

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait (bounded by config.join_timeout_s); True when the thread has ended."""
        if self._thread is not None:
            self._thread.join(self.config.join_timeout_s if timeout_s is None else timeout_s)
            return not self._thread.is_alive()
        return True

    # --- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        lower_thread_priority(self.config.nice)
        try:
            while not self._stop.is_set():
                self.step(wait=True)
        except Exception as exc:  # a bug, not a user mistake: keep the app alive and say so
            log.exception("fusion worker failed")
            self.tell("error", f"fusion stopped: {type(exc).__name__}: {exc}", "see the log; Reset to go on")
            self._publish(force=True)
        finally:
            self.shutdown()

    def step(self, wait: bool = False) -> None:
        """One iteration: run queued commands, fuse one frame (or serve the nets when idle), publish."""
        self._drain_commands()
        self.nets.poll()
        if self.state == "running" and self._it is not None:
            self._fuse_next()
        else:
            land_loop_correction(self)
            served = self.pipeline.serve_requests(self.config.serve_regions_idle) if self.pipeline else 0
            if not served and wait:
                try:
                    self._handle(*self._commands.get(timeout=self.config.idle_wait_s))
                except queue.Empty:
                    pass
        self._publish()

    def shutdown(self) -> None:
        """Stop the nets, close the source and the pipeline (fusion thread, or after the thread ended)."""
        self.nets.close()
        self._close_source()
        self._close_autosaver()
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None
        while True:  # answer pending calls so nobody waits forever
            try:
                name, args = self._commands.get_nowait()
            except queue.Empty:
                break
            if name == "call":
                args[1].set_exception(UserError("the fusion worker has stopped"))

    def _drain_commands(self) -> None:
        while True:
            try:
                self._handle(*self._commands.get_nowait())
            except queue.Empty:
                return

    def _handle(self, name: str, args: tuple) -> None:
        if name == "wake":
            return
        if name == "call":
            fn, fut = args
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(self))
                except BaseException as exc:  # handed to the caller
                    fut.set_exception(exc)
            return
        try:
            COMMANDS[name](self, *args)
        except UserError as exc:
            self.tell("error", str(exc))
        except Exception as exc:  # an SDK or Open3D failure: report it, keep the worker alive
            log.exception("command %s failed", name)
            self.tell("error", f"{name} failed: {plain_error(exc)}")
        self._changed = True

    # --- commands (fusion thread) ------------------------------------------------------------
    def _cmd_start(self, spec: str, max_frames: int | None = None) -> None:
        """Fuse `spec` from its start: into a fresh model, or into a loaded session's model."""
        self._close_source()
        self.state = "idle"
        source = open_gui_source(spec, max_frames, self.config.real_time_recordings)  # a bad source keeps the model
        self._index_offset = continued_index(self) if self._continuable else 0
        if not self._continuable:
            self._fresh_model()
        self.source, self.source_spec = source, spec
        self._it = guarded_frames(source, self.config.stall)
        self._close_autosaver()
        self._autosaver = Autosaver(self._capture_autosave, self.config.autosave, info={"source": spec})
        self._autosaver.start(time.monotonic())
        self._retime_s, self._continuable = None, False
        self.state = "running"
        self.tell("info", f"fusing {spec}")

    def _cmd_pause(self) -> None:
        self.state = "paused" if self.state == "running" else self.state

    def _cmd_resume(self) -> None:
        self.state = "running" if self.state == "paused" else self.state

    def _cmd_stop_source(self) -> None:
        if self.source is not None:
            self._close_source()
            self._settle_gravity()
            self.state = "idle"
            self.tell("info", "stopped; the model stays (save, export or correct it; Start scans anew)")

    def _cmd_reset(self) -> None:
        """An empty model; a running source goes on into it."""
        self._fresh_model()
        going_on = f": fusing {self.source_spec} goes on" if self.source is not None else ": Start scans anew"
        self.tell("info", "reset: the model is empty" + going_on)

    def _fresh_model(self) -> None:
        self._take_pipeline(lambda: FusionPipeline(self.pipeline_config))

    def _take_pipeline(self, make: Callable[[], FusionPipeline], extras: dict | None = None) -> None:
        """Close the model and start a scan on make()'s (made after the old one is freed); the nets follow."""
        self._close_autosaver()
        self.nets.detach()
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline = make()
        self._new_scan()
        self.nets.attach(self.pipeline, extras)

    def _cmd_config(self, cfg: PipelineConfig) -> None:
        self.pipeline_config = cfg

    def _cmd_nets(self, on: bool) -> None:
        self.nets.set_enabled(on, self.pipeline)

    def _cmd_record(self, path: Path | None) -> None:
        if not hasattr(self.source, "start_recording"):
            raise UserError("recording needs a live RealSense camera as the source")
        if path is None:
            done = self.source.stop_recording()
            self.tell("info", f"recording saved to {done}" if done else "not recording")
        else:
            used = self.source.start_recording(Path(path))
            self.tell("info", f"recording to {used}")

    def _cmd_load(self, session, name: str = "") -> None:
        """Take over a LoadedSession's pipeline (scanning may go on into it with Start: the loaded tracker
        is lost and the first frames that see the scanned room relocalise). name: shown as the source."""
        self._close_source()
        self.pipeline_config = session.pipeline.config
        self._take_pipeline(lambda: session.pipeline, session.extras)
        self.path.load(session.poses, session.timestamps_s)
        self.frames_read = self._integrated = self._saved_integrated = len(self.poses)
        self.source_spec = name or "saved session"
        self._up_from(self.poses[0] if self.poses else None)
        self._continuable, self.state = True, "idle"

    @property
    def poses(self) -> list:
        """The camera path's poses (the list `path` holds; read only)."""
        return self.path.poses

    # --- fusing -------------------------------------------------------------------------------
    def _new_scan(self) -> None:
        self.path = CameraPath()
        self.last_frame = self.thumbs_of = None  # thumbs_of: the frame whose thumbnails were published last
        self.frames_read = self._integrated = self._rejected = self._saved_integrated = 0
        self._frame_times: list[float] = []
        self._tracking, self._retime_s, self._index_offset = "", None, 0  # "": no frame fused yet
        self.up: np.ndarray | None = None
        self._continuable, self.reset_pending, self._changed = False, True, True
        self._last_pub = self._last_status = 0.0

    def _fuse_next(self) -> None:
        t0 = time.perf_counter()
        try:
            frame = next(self._it)
        except StopIteration:
            self._finish(Event("info", f"source finished after {self.frames_read} frames"))
            return
        except Exception as exc:  # SourceError, or the SDK failing underneath
            log.debug("source failed", exc_info=True)
            self._finish(Event("error", str(exc) if isinstance(exc, UserError) else f"source failed: {exc}",
                               "check the file, or the camera's USB connection, then press Start"))
            return
        try:
            frame = self._retime(frame)
            T_start = None if self.pipeline.tracker.started else frame.T_world_cam_gt
            res = self.pipeline.process(frame, T_start=T_start)
        except UserError as exc:
            self._finish(Event("error", str(exc)))
            return
        except Exception as exc:  # a fusion failure: stop this source, keep the model and the app
            log.exception("fusing frame %d failed", frame.index)
            self._finish(Event("error", f"fusion failed: {plain_error(exc)}", "the model stays; Reset to start over"))
            return
        self._after_frame(frame, res, time.perf_counter() - t0)
        if self._autosaver is not None:
            self._autosaver.maybe_save(time.monotonic())

    def _retime(self, frame):
        """Frames of a new source fused into an older model keep time (and frame numbers) increasing."""
        if self._retime_s is None:
            last_s = self.pipeline.last_timestamp_s
            self._retime_s = retime_offset_s(frame.timestamp_s, last_s, self.config.retime_gap_s)
        later = dict(timestamp_s=frame.timestamp_s + self._retime_s, index=frame.index + self._index_offset)
        return dataclasses.replace(frame, **later) if self._retime_s or self._index_offset else frame

    def _after_frame(self, frame, res, elapsed_s: float) -> None:
        self.last_frame, self.frames_read = frame, self.frames_read + 1
        self._frame_times = (self._frame_times + [elapsed_s])[-self.config.fps_window:]
        if res.integrated:
            self._integrated += 1
            self._up_from(res.T_world_cam if self.up is None else None)
        else:
            self._rejected += 1
        follow_gravity(self)  # before this frame's pose, which is already in the newest world
        follow_loops(self)
        last = res.T_world_cam if res.T_world_cam is not None else (self.poses[-1] if self.poses else None)
        if last is not None:
            self.path.append(last, res.timestamp_s, res.index)
        self._track_events(res)
        self._changed = True

    def _track_events(self, res) -> None:
        """Say when tracking is lost and when it is found again (also a loaded session's first frames)."""
        if res.state == "lost" and self._tracking != "lost":
            self.tell("warning", "tracking " + LOST_MESSAGE)
        elif res.state == "ok" and (self._tracking == "lost" or res.reason == "relocalised"):
            self.tell("info", "relocalised: scanning resumes")
        self._tracking = res.state

    def mark_saved(self) -> None:
        """The model as it is now has been saved (fusion thread, right after writing a session)."""
        self._saved_integrated = self._integrated
        self._changed = True

    def _up_from(self, T) -> None:
        if T is not None:  # a gravity-aligned world has z up; a ground-truth one the first camera's up
            aligned = self.pipeline is not None and self.pipeline.gravity.report().method not in ("gt", "camera")
            self.up = np.array([0.0, 0, 1]) if aligned else -np.asarray(T, float)[:3, 1]

    def _settle_gravity(self) -> None:
        """A scan that ends young settles gravity now (the nets then label it)."""
        if self.pipeline is not None:
            self.pipeline.settle_gravity()
            follow_gravity(self)

    def _finish(self, event: Event) -> None:
        """The source ended (or failed: then the state is idle, not finished, and the event says why)."""
        self._close_source()
        self._settle_gravity()
        self.state = "idle" if event.level == "error" else "finished"
        self.tell(event.level, event.text, event.hint)
        said = self.nets.final_pass(lambda: self._publish(force=True)) if event.level != "error" else None
        if said:
            self.tell(*said)

    def _close_source(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()  # stops the stall guard's reader
        self._it = None
        if self.source is not None:
            try:
                self.source.close()
            except Exception:  # a device that vanished may fail to close; nothing to do about it
                log.exception("closing the source failed")
            self.source = None

    def _capture_autosave(self):  # fusion thread, between frames: copy now, write on the autosaver's thread
        capture = capture_session(self.pipeline, *self.trajectory(), self.source_description(),
                                  {"command": "gui", "source": self.source_spec, "autosave": True},
                                  self.nets.session_extras())
        return functools.partial(write_session, capture=capture)

    def _close_autosaver(self) -> None:  # a clean end of a scan: its autosave is not offered for recovery
        if self._autosaver is not None:
            self._autosaver.close()
        self._autosaver = None

    def tell(self, level: str, text: str, hint: str = "") -> None:
        """An event for the user (status bar, dialogs) and the log. Fusion thread."""
        (log.warning if level != "info" else log.info)("%s%s", text, f" ({hint})" if hint else "")
        self.events.append(Event(level, text, hint))
        self._changed = True

    def source_description(self) -> dict:
        """What the source says of itself (its spec when none is open). Fusion thread."""
        return self.source.describe() if self.source is not None else {"spec": self.source_spec}

    def trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """(T,) timestamps in seconds and (T,4,4) T_world_cam of this scan (fusion thread)."""
        return np.array(self.path.stamps, float), np.array(self.poses, float).reshape(-1, 4, 4)

    # --- publishing ---------------------------------------------------------------------------
    def _publish(self, force: bool = False) -> None:
        publish(self, force)


COMMANDS = {"start": FusionWorker._cmd_start, "pause": FusionWorker._cmd_pause,
            "resume": FusionWorker._cmd_resume, "stop_source": FusionWorker._cmd_stop_source,
            "reset": FusionWorker._cmd_reset, "config": FusionWorker._cmd_config,
            "nets": FusionWorker._cmd_nets, "record": FusionWorker._cmd_record, "load": FusionWorker._cmd_load}
