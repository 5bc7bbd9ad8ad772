"""Owns accelerometer samples of a camera with an IMU: validity checks, a short average, camera axes.

At rest an accelerometer reads the reaction to gravity: about 9.81 m/s^2 pointing up. Samples come
from the SDK's motion frames (live: the capture thread; replay: the fusion thread); each video frame
takes the average of the valid samples of the last `window_s` seconds around its timestamp, turned
into the colour camera's axes (the frame's axes). Missing, NaN, zero or implausible samples and gaps
longer than `max_gap_s` are ignored with one warning; the frame then has no reading.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
GRAVITY_MPS2 = 9.81


@dataclass(frozen=True)
class AccelConfig:
    """What counts as a usable accelerometer reading."""

    min_norm_mps2: float = 7.0    #: a sample weaker than this is not gravity (free fall, a zero vector)
    max_norm_mps2: float = 12.5   #: ... nor one stronger than this (a knock)
    window_s: float = 0.1         #: samples this close to a frame's time are averaged
    max_gap_s: float = 0.25       #: no valid sample this close to a frame: the frame has no reading
    history: int = 256            #: samples kept at most


class AccelFilter:
    """Keeps recent valid accelerometer samples. Thread-safe: one thread adds, another reads."""

    def __init__(self, accel_to_cam: np.ndarray, config: AccelConfig = AccelConfig()):
        self.R = np.asarray(accel_to_cam, float).reshape(3, 3)
        self.config = config
        self._samples: deque = deque(maxlen=config.history)  # (time s, (3,) m/s^2 in camera axes)
        self._lock = threading.Lock()
        self.rejected = 0
        self._warned = False

    def add(self, t_s: float, accel_mps2) -> None:
        """One sample in the IMU's axes; an unusable one is counted and ignored (one warning)."""
        a = np.asarray(accel_mps2, float).reshape(-1)
        n = float(np.linalg.norm(a)) if a.shape == (3,) and np.all(np.isfinite(a)) else 0.0
        if not self.config.min_norm_mps2 <= n <= self.config.max_norm_mps2 or not np.isfinite(t_s):
            self.rejected += 1
            self._warn(f"accelerometer sample {np.round(a, 3).tolist()} m/s^2 is not gravity")
            return
        with self._lock:
            self._samples.append((float(t_s), self.R @ a))

    def at(self, t_s: float) -> np.ndarray | None:
        """Mean reading (3,) m/s^2 in camera axes around time `t_s`, or None when there is none near."""
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return None
        times = np.array([s[0] for s in samples])
        near = np.abs(times - t_s) <= self.config.window_s
        if not near.any():
            if np.min(np.abs(times - t_s)) > self.config.max_gap_s:
                self._warn(f"no accelerometer sample within {self.config.max_gap_s:g} s of a frame")
                return None
            near = np.abs(times - t_s) == np.min(np.abs(times - t_s))
        return np.mean([s[1] for s, ok in zip(samples, near) if ok], axis=0)

    def _warn(self, what: str) -> None:
        if not self._warned:
            log.warning("IMU: %s; such readings are ignored (this warning is shown once)", what)
            self._warned = True


def rotation_from_sdk(rotation: tuple) -> np.ndarray:
    """3x3 rotation from the SDK's 9 column-major floats (identity when empty)."""
    return np.eye(3) if len(rotation) != 9 else np.asarray(rotation, float).reshape(3, 3).T
