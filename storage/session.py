"""Owns sessions: the whole fusion state saved to one file and loaded back so scanning can go on.

A session is a single zip file (by convention `NAME.session`; `reconstruct` writes `DIR/session`):
- `manifest.json`: app name, `format_version`, pipeline config, source description, settings, the
  tracker's state (last good pose, velocity), timestamps and counters, and the list of arrays;
- `volume/keys.npy` (N,3) int32 block coordinates and `volume/{tsdf,weight,color}.npy`, the voxels of
  every allocated block exactly as the VoxelBlockGrid holds them (float32, deflate-compressed);
- `trajectory/timestamps_s.npy` (T,) and `trajectory/poses.npy` (T,4,4) camera-to-world;
- `keyframes/*.npy`: the tracker's keyframes (poses, ORB descriptors, world points, thumbnails); a
  loaded session starts lost, so the next frame of any source relocalises against them and the model;
- `loops/*.npy` (when loop closure is on): the loop closer's keyframes (reduced RGB-D as `loops/color/KID`
  and `loops/depth_mm/KID`, poses, odometry, path walked; at most its keyframe cap) and loop edges, so a
  continued scan closes loops against the earlier part (`loopclosure.arrays`; sessions without them load
  as before, with no keyframes);
- `extra/NAME.npy`: arrays other components persist: the label store's (`labels_*`, corrections included),
  the completion's, and `adapted_weights` (uint8: the bytes of the weights file learned from the user's
  corrections, `nets.session_weights`; sessions without it load as before).
One file, written to a temporary name beside it, fsynced and renamed over the old one, so a save that
dies midway leaves the previous session untouched. Zip CRCs detect corrupted or truncated files; the
entries are `.npy` arrays, so `numpy.load(path)` opens a session too.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open3d.core as o3c

from fusion.dirty import chunk_keys_of_blocks
from fusion.errors import UserError
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.volume import VOXEL_ATTRS
from storage.atomic import atomic_path

log = logging.getLogger(__name__)

APP_NAME = "rgbd-reconstruction"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SessionConfig:
    compress_level: int = 1      #: deflate level 0..9 (1: fast, most of the gain on TSDF blocks)


@dataclass(frozen=True)
class LoadedSession:
    """What `load_session` restores. The pipeline belongs to the thread that continues fusing."""

    pipeline: FusionPipeline
    timestamps_s: np.ndarray            #: (T,) seconds of the trajectory's poses
    poses: np.ndarray                   #: (T,4,4) T_world_cam
    source: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


# --- saving ----------------------------------------------------------------------------------
def _tracker_state(pipeline: FusionPipeline) -> dict:
    tr = pipeline.tracker
    motion = tr._motion
    return {
        "started": motion is not None,
        "last_good": None if motion is None else motion.last_good.tolist(),
        "velocity": None if motion is None else motion.velocity.tolist(),
        "state": tr.state.value,
        "failures": tr.failures,
        "losses": tr.losses,
        "relocalisations": tr.relocalisations,
    }


def _volume_arrays(pipeline: FusionPipeline) -> dict:
    vol = pipeline.volume
    keys = vol.active_keys()
    arrays = dict(zip(VOXEL_ATTRS, vol.voxel_arrays(vol.lookup(keys))))
    return {"volume/keys": keys} | {f"volume/{k}": v for k, v in arrays.items()}


def _manifest(pipeline: FusionPipeline, source: dict | None, settings: dict | None, arrays: dict) -> dict:
    return {
        "app": APP_NAME,
        "format_version": FORMAT_VERSION,
        "saved_at_unix_s": time.time(),
        "config": dataclasses.asdict(pipeline.config),
        "source": source or {},
        "settings": settings or {},
        "tracker": _tracker_state(pipeline),
        "last_timestamp_s": pipeline.last_timestamp_s,
        "frames_with_depth": pipeline.frames_with_depth,
        "frames_integrated": pipeline.volume.frames_integrated,
        "gravity": pipeline.gravity.report().to_dict(),
        "arrays": {name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in arrays.items()},
    }


def _write_zip(path: Path, manifest: dict, arrays: dict, level: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, a in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
        zf.writestr("manifest.json", json.dumps(manifest, indent=1))


@dataclass(frozen=True)
class SessionCapture:
    """A consistent copy of everything a session holds, taken on the pipeline's thread; `write_session`
    may then write it from any thread while fusion goes on."""

    manifest: dict
    arrays: dict


def capture_session(pipeline: FusionPipeline, timestamps_s, poses, source: dict | None = None,
                    settings: dict | None = None, extras: dict | None = None) -> SessionCapture:
    """Copy the fusion state (+ trajectory, extras). Call from the thread that owns `pipeline`."""
    poses = np.asarray(poses, np.float64).reshape(-1, 4, 4)
    keyframes = {f"keyframes/{k}": v for k, v in pipeline.tracker.relocaliser.to_arrays().items()}
    if pipeline.loops is not None:
        keyframes |= {f"loops/{k}": v for k, v in pipeline.loops.to_arrays().items()}
    arrays = _volume_arrays(pipeline) | keyframes | {
        "trajectory/timestamps_s": np.array(timestamps_s, np.float64),
        "trajectory/poses": poses.copy(),
    } | {f"extra/{k}": np.array(v) for k, v in (extras or {}).items()}
    return SessionCapture(_manifest(pipeline, source, settings, arrays), arrays)


def write_session(path: Path | str, capture: SessionCapture, config: SessionConfig = SessionConfig()) -> int:
    """Write a captured session to `path` atomically; returns bytes written. Any thread."""
    path = Path(path)
    t0 = time.perf_counter()
    try:
        with atomic_path(path) as tmp:
            _write_zip(tmp, capture.manifest, capture.arrays, config.compress_level)
    except OSError as exc:
        raise UserError(f"cannot save session {path}: {exc.strerror or exc}") from None
    size = path.stat().st_size
    log.info("saved session %s: %d blocks, %d poses, %.1f MB in %.2f s", path, len(capture.arrays["volume/keys"]),
             len(capture.arrays["trajectory/poses"]), size / 1e6, time.perf_counter() - t0)
    return size


def save_session(path: Path | str, pipeline: FusionPipeline, timestamps_s, poses, source: dict | None = None,
                 settings: dict | None = None, extras: dict | None = None,
                 config: SessionConfig = SessionConfig()) -> int:
    """Save the whole fusion state (+ trajectory, extras) to `path` atomically; returns bytes written.

    Call from the thread that owns `pipeline` (it must not integrate meanwhile).
    """
    return write_session(path, capture_session(pipeline, timestamps_s, poses, source, settings, extras), config)


# --- loading ---------------------------------------------------------------------------------
def _config(cls, d: dict):
    """A config dataclass from its saved dict: unknown keys ignored, missing ones default, nested config
    dataclasses rebuilt the same way, lists back to tuples."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = d[f.name]
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _config(type(default), value)
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def config_from_dict(d: dict, device: str | None = None) -> PipelineConfig:
    """PipelineConfig from its saved dict (unknown keys ignored); `device` overrides the saved one."""
    config = _config(PipelineConfig, d)
    if device is not None:
        config = dataclasses.replace(config, volume=dataclasses.replace(config.volume, device=device))
    return config


def _read_manifest(zf: zipfile.ZipFile, path: Path) -> dict:
    try:
        manifest = json.loads(zf.read("manifest.json"))
    except KeyError:
        raise UserError(f"{path}: not a session (no manifest.json)") from None
    if not isinstance(manifest, dict) or manifest.get("app") != APP_NAME:
        raise UserError(f"{path}: not a session of this app")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise UserError(f"{path}: session format_version {version!r} is not supported by this build "
                        f"(it reads versions 1..{FORMAT_VERSION}); update the app")
    return manifest


def _read_arrays(zf: zipfile.ZipFile, manifest: dict) -> dict:
    out = {}
    for name, meta in manifest["arrays"].items():
        with zf.open(f"{name}.npy") as f:
            a = np.lib.format.read_array(f, allow_pickle=False)
        if a.dtype.str != meta["dtype"] or list(a.shape) != meta["shape"]:
            raise ValueError(f"array {name} is {a.dtype}{a.shape}, the manifest says {meta}")
        out[name] = a
    return out


def _restore_volume(pipeline: FusionPipeline, arrays: dict) -> np.ndarray:
    vol = pipeline.volume
    keys = arrays["volume/keys"]
    if len(keys):
        buf, _ = vol.grid.hashmap().activate(o3c.Tensor(np.ascontiguousarray(keys, np.int32), device=vol.device))
        vol.set_voxel_rows(buf.cpu().numpy().astype(np.int64),
                           {name: arrays[f"volume/{name}"] for name in VOXEL_ATTRS})
    vol._index_capacity = -1
    vol.last_blocks = keys.astype(np.int32)
    vol._update_index()
    return keys


def _restore_tracker(pipeline: FusionPipeline, t: dict) -> None:
    tr = pipeline.tracker
    if t.get("started"):  # the saved state and velocity do not carry over: a loaded session starts lost
        tr.reset(np.array(t["last_good"], float))
    tr.failures = int(t.get("failures", 0))
    tr.losses = int(t.get("losses", 0))
    tr.relocalisations = int(t.get("relocalisations", 0))


def _restore_keyframes(pipeline: FusionPipeline, arrays: dict) -> None:
    """Keyframes of the saved scan: the next frame (any source) relocalises against the tracker's and the
    model; the loop closer's (when the session has them) close loops of a continued scan."""
    kf = {k[len("keyframes/"):]: v for k, v in arrays.items() if k.startswith("keyframes/")}
    if kf:
        pipeline.tracker.relocaliser.load_arrays(kf)
    pipeline.tracker.lose()
    loops = {k[len("loops/"):]: v for k, v in arrays.items() if k.startswith("loops/")}
    if loops and pipeline.loops is not None:
        pipeline.loops.load_arrays(loops)


def _build_pipeline(manifest: dict, arrays: dict, device: str | None) -> FusionPipeline:
    pipeline = FusionPipeline(config_from_dict(manifest["config"], device))
    try:
        keys = _restore_volume(pipeline, arrays)
        _restore_tracker(pipeline, manifest["tracker"])
        _restore_keyframes(pipeline, arrays)
        pipeline.last_timestamp_s = manifest["last_timestamp_s"]
        pipeline.frames_with_depth = int(manifest["frames_with_depth"])
        pipeline.gravity.restore(manifest.get("gravity"))  # the saved world stays as it is
        pipeline.volume.frames_integrated = int(manifest["frames_integrated"])
        chunks = pipeline.mesher.update(keys)  # mesh everything: the loaded volume has no block meshes yet
        pipeline.dirty.mark(chunks | pipeline.mesher.flush(), ("mesh",))
        cfg = pipeline.config
        pipeline.dirty.mark(chunk_keys_of_blocks(keys, cfg.volume.block_size_m, cfg.nets_chunk_m),
                            ("semantics", "completion"))
    except BaseException:
        pipeline.close()
        raise
    return pipeline


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def load_session(path: Path | str, device: str | None = None) -> LoadedSession:
    """Load a session saved by `save_session`; raises UserError (one line) for missing, foreign,
    newer or corrupted files. `device` overrides the saved volume device (auto | cpu | cuda)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such session file")
    t0 = time.perf_counter()
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = _read_manifest(zf, path)
            arrays = _read_arrays(zf, manifest)
    except UserError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, TypeError, OSError) as exc:
        raise UserError(f"{path}: corrupted or truncated session ({_reason(exc)})") from None
    try:
        pipeline = _build_pipeline(manifest, arrays, device)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise UserError(f"{path}: inconsistent session ({_reason(exc)})") from None
    log.info("loaded session %s: %d blocks, %d poses in %.2f s", path, len(arrays["volume/keys"]),
             len(arrays["trajectory/poses"]), time.perf_counter() - t0)
    extras = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
    return LoadedSession(pipeline, arrays["trajectory/timestamps_s"], arrays["trajectory/poses"],
                         manifest.get("source", {}), manifest.get("settings", {}), extras, manifest)
