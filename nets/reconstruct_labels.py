"""Owns the labeling side of headless `reconstruct`: the `fusion.reconstruct.LabelHook` for --labels incremental|final.

incremental: the same background worker the app runs (a real thread, `IncrementalLabeler.start`),
    fed by the frames as reconstruct fuses them; the pipeline serves its snapshot requests at the end
    of each `process()`, exactly as live. Frames are read as fast as fusion goes (not paced to the
    camera's rate), so the worker competes for the CPU as in the app. After the last frame, a drain
    labels whatever is still pending and refreshes chunks whose neighbours changed after their snapshot.
final: nothing runs while fusing; after the last frame one pass infers every chunk of the final volume,
    each prediction the mean over `FINAL_TURNS` quarter turns about gravity (`nets.turns`: four passes,
    better labels on real rooms, not used live where latency counts).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from fusion.meshing import MeshArrays
from fusion.pipeline import FrameResult, FusionPipeline
from nets.incremental import IncrementalLabeler, LabelerConfig
from nets.turns import FINAL_TURNS

log = logging.getLogger(__name__)
MODES = ("incremental", "final")


class ReconstructLabels:
    """LabelHook for `fusion.reconstruct`. Thread: the reconstruct (fusion) thread; in incremental
    mode it also runs the labeler's worker thread until `finish`/`close`."""

    def __init__(self, mode: str, pipeline: FusionPipeline, model, config: LabelerConfig = LabelerConfig()):
        if mode not in MODES:
            raise ValueError(f"labels mode {mode!r} is not one of {MODES}")
        self.mode = mode
        model = model.with_turns(FINAL_TURNS) if mode == "final" else model
        self.labeler = IncrementalLabeler(pipeline, model, config=config)
        self._live: dict = {}
        self._drain_s = 0.0
        if mode == "incremental":
            self.labeler.start()

    def on_frame(self, result: FrameResult) -> None:
        """Nothing to do: the pipeline serves the worker's requests inside `process()`."""

    def finish(self, interrupted: bool) -> None:
        """Stop the worker; unless interrupted, label everything still pending (in this thread)."""
        self.labeler.stop()
        if not self.labeler.join(30.0):
            raise RuntimeError("labeling worker did not stop within 30 s")
        if not self._live:
            self._live = self.labeler.stats()
        if interrupted:
            return
        t0 = time.perf_counter()
        n = self.labeler.drain()
        self._drain_s = time.perf_counter() - t0
        log.info("labels: %s, %d chunks inferred after the last frame in %.1f s", self.mode, n, self._drain_s)

    def vertex_labels(self, mesh) -> np.ndarray:
        return self.labeler.labels.mesh_labels(mesh)

    def completed_mesh(self) -> tuple[MeshArrays, np.ndarray]:
        done = self.labeler.completion.mesh()
        return done.mesh, done.labels

    def extras(self) -> dict:
        return self.labeler.labels.to_arrays() | self.labeler.completion.to_arrays()

    def stats(self) -> dict:
        """Work while fusing (`live`), in total, and the latency percentiles of the live updates."""
        total = self.labeler.stats()
        live = self._live or total
        keys = ("chunks_inferred", "sites_inferred", "regions_inferred")
        return {"mode": self.mode, "weights": self.labeler.model.weights_path, "turns": self.labeler.model.turns,
                **{k: total[k] for k in keys},
                "live": {k: live[k] for k in keys + ("chunks_skipped_unchanged", "infer_ms_p50", "infer_ms_p95",
                                                     "queue", "oldest_wait_s")},
                "drain_s": round(self._drain_s, 3), "label_classes": self.labeler.labels.class_counts(),
                "latency_s": ({"p50": live["latency_p50_s"], "p95": live["latency_p95_s"]}
                              if self.mode == "incremental" else None)}

    def close(self) -> None:
        self.labeler.stop()
        self.labeler.join(30.0)


def label_hook_factory(mode: str, model, config: LabelerConfig = LabelerConfig()):
    """Callable(pipeline) -> ReconstructLabels, for `ReconstructRequest.label_hook`."""
    def build(pipeline: FusionPipeline) -> ReconstructLabels:
        return ReconstructLabels(mode, pipeline, model, config)
    return build
