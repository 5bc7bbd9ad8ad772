"""Owns the GUI's hookup to the nets: the label store of the current scan, the incremental labeler
(nets worker thread) and the completion overlay, plus what the display needs from them.

This is the only module of app/ that imports nets/. When the labeling nets are missing (no weights
yet, or a build without them) scanning and manual label correction still work and `status()` says why
the nets are off. Learning from corrections (`nets.adapt`) runs through it too: the learner of the current
scan (the base model as its anchor), the adapted model handed to the labeler, and the adapted weights
saved with sessions.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from app.snapshots import MeshDisplay, pack_mesh
from fusion.coarse import CoarseGridConfig
from fusion.errors import UserError
from nets.completion import PREFIX as COMPLETION_PREFIX
from nets.adapt_config import ADAPTED_WEIGHTS as ADAPTED_NAME
from nets.adapt_config import AdaptConfig
from nets.completion import CompletionStore
from nets.incremental import IncrementalLabeler, LabelerConfig
from nets.labels import LabelStore, LabelStoreConfig, has_label_arrays
from nets.segment_vote import RefinedLabels
from nets.turns import FINAL_TURNS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetsConfig:
    """Whether and how the nets label the scan."""

    enabled: bool = True                  #: run the labeler (when weights are available)
    untrained: bool = False               #: use an untrained model when no weights are shipped (tests)
    grid: CoarseGridConfig = field(default_factory=CoarseGridConfig)      #: the nets' cell grid
    store: LabelStoreConfig = field(default_factory=LabelStoreConfig)     #: label fusion settings
    join_timeout_s: float = 2.0           #: bound on joining the nets thread
    labeler: LabelerConfig = field(default_factory=LabelerConfig)         #: the nets worker's settings
    counts_interval_s: float = 0.5        #: class amounts recounted at most this often
    completion_interval_s: float = 1.0    #: the completion overlay re-meshed at most this often
    adapt: AdaptConfig = field(default_factory=AdaptConfig)  #: a learning round (budget, anchor pull, ...)
    #: when a source ends the whole scene is relabeled with each prediction the mean over this many quarter
    #: turns, as `reconstruct --labels final` does (1: the live labels stay)
    final_turns: int = FINAL_TURNS


class NetsHookup:
    """Thread: created on the GUI thread; attach/detach/set_enabled and the display queries run on the
    fusion thread. `store` (thread-safe) is read by the GUI thread for picking and corrections."""

    def __init__(self, config: NetsConfig = NetsConfig()):
        self.config = config
        self._lock = threading.Lock()
        self._store = LabelStore(config.grid, config.store)
        self._completion = CompletionStore(config.grid)
        self.enabled = config.enabled
        self.message = "nets off" if not config.enabled else ""
        self._model, self._untrained = None, False
        self._loader: threading.Thread | None = None
        self._labeler = None
        self._pipeline = None
        self._seen_version = 0
        self._completion_version, self._completion_at = 0, 0.0
        self._counts_at, self._counts_version = 0.0, -1
        self._learner = None                  # nets.adapt.CorrectionLearner of this scan (made with the model)
        self._adapted_blob = None             # the session's adapted weights, until the model has loaded
        self._blob_cache: tuple | None = None  # (model, weights array) last saved
        self._final_running = False            # the final pass runs (the status bar shows it)
        self._refined: RefinedLabels | None = None  # the final pass's labels refined at surface segments
        self._refined_news = False             # ... not shown yet

    @property
    def store(self) -> LabelStore:
        """The current scan's label store (replaced on reset and session load)."""
        with self._lock:
            return self._store

    # --- lifecycle (fusion thread) ------------------------------------------------------------
    def attach(self, pipeline, extras: dict | None = None) -> None:
        """A new scan: fresh stores (or the session's), and the labeler when enabled."""
        self.detach()
        store, completion = LabelStore(self.config.grid, self.config.store), CompletionStore(self.config.grid)
        try:
            if extras and has_label_arrays(extras):
                store = LabelStore.from_arrays(extras, self.config.grid, self.config.store)
            if extras and any(k.startswith(COMPLETION_PREFIX) for k in extras):
                completion = CompletionStore.from_arrays(extras, self.config.grid)
        except ValueError as exc:
            log.warning("session labels not restored: %s", exc)
        with self._lock:
            self._store, self._completion = store, completion
            self._learner, self._adapted_blob = None, (extras or {}).get(ADAPTED_NAME)
        self._seen_version, self._counts_version = -1, -1
        self._completion_version = 0 if completion.version == 0 else -1
        self._refined, self._refined_news = None, False
        self._pipeline = pipeline
        if self.enabled:
            self._start_labeler()

    def detach(self) -> None:
        """Stop and join the nets thread (bounded)."""
        labeler, self._labeler = self._labeler, None
        if labeler is not None:
            labeler.stop()
            if not labeler.join(self.config.join_timeout_s):
                log.warning("nets thread did not end within %.1f s", self.config.join_timeout_s)

    def close(self) -> None:
        """Detach and join the model loader (bounded); the hookup is not used afterwards."""
        self.detach()
        self._pipeline = None
        loader = self._loader
        if loader is not None and loader.ident is not None:
            loader.join(self.config.join_timeout_s)

    def set_enabled(self, on: bool, pipeline) -> None:
        self.enabled = bool(on)
        if not on:
            self.detach()
            self.message = "nets off"
        else:
            self._pipeline = pipeline if pipeline is not None else self._pipeline
            self._start_labeler()

    def _start_labeler(self) -> None:
        """Start the labeler once the model is loaded (loading runs on its own thread the first time)."""
        if not self.enabled or self._labeler is not None or self._pipeline is None:
            return
        if self._model is None:
            if self._loader is None:
                self.message = "nets: loading the model…"
                self._loader = threading.Thread(target=self._load_model, name="nets-load", daemon=True)
                self._loader.start()
            return
        self._labeler = IncrementalLabeler(self._pipeline, self.learner().model, self.store, self._completion,
                                           self.config.labeler)
        self._labeler.start()
        self.message = "nets on" + (" (untrained model)" if self._untrained else "")

    def _load_model(self) -> None:
        """Thread "nets-load": import torch, load the weights (or the untrained model in tests)."""
        try:
            from nets.infer import ChunkModel

            try:
                model = ChunkModel.load()
            except UserError as exc:
                if not self.config.untrained:
                    self.message = "nets off: no trained weights shipped yet (scanning and manual labels work)"
                    log.warning("labeling nets off: %s", exc)
                    return
                self._untrained, model = True, ChunkModel.untrained()
        except Exception as exc:  # torch missing or broken: the app goes on without nets
            self.message = f"nets off: cannot load the model ({type(exc).__name__}: {exc})"
            log.exception("loading the nets failed")
            return
        g, mine = model.grid, self.config.grid
        if (g.voxel_size_m, g.chunk_voxels) != (mine.voxel_size_m, mine.chunk_voxels):
            self.message = f"nets off: the weights use a {g.voxel_size_m} m grid, the app {mine.voxel_size_m} m"
            log.warning("%s", self.message)
            return
        self._model = model

    # --- display queries (fusion thread) ------------------------------------------------------
    def display_labels(self, mesh) -> tuple[np.ndarray, np.ndarray]:
        """(labels, confidence) of a mesh chunk's vertices as shown: the store's `labels_at`, or, after the
        final pass and until the labels change again, the labels an export writes (refined at surface
        segments)."""
        if len(mesh.positions_m) == 0:
            return np.zeros(0, np.uint16), np.zeros(0, np.float32)
        labels, conf = self.store.labels_at(mesh.positions_m)
        refined = self._refined
        if refined is not None and refined.version == self.store.version:
            labels = refined.overlay(labels, mesh.vertex_keys)
        return labels, conf

    def mesh_labels(self, mesh) -> np.ndarray:
        """Labels of a whole mesh for export, refined at surface segments (`LabelStore.mesh_labels`)."""
        return self.store.mesh_labels(mesh)

    def changed_boxes(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(lo_m, hi_m) boxes of the nets chunks whose labels changed since the last call."""
        version, keys = self.store.changed_since(self._seen_version)
        self._seen_version = version
        if self._refined_news:  # every chunk shows the refined labels now
            self._refined_news = False
            return [(np.full(3, -np.inf), np.full(3, np.inf))]
        size = self.config.grid.chunk_size_m
        return [(np.asarray(k, float) * size, (np.asarray(k, float) + 1) * size) for k in keys]

    @property
    def seen_version(self) -> int:
        """The label-store version whose changes the display has taken (see changed_boxes)."""
        return self._seen_version

    def drain(self, timeout_s: float = 30.0) -> int:
        """Label every pending chunk now (fusion thread only: it serves the labeler's snapshots);
        returns the chunks inferred, 0 when the nets are off."""
        return 0 if self._labeler is None else self._labeler.drain(timeout_s)

    def final_pass(self, announce) -> tuple[str, str] | None:
        """After a source ended: relabel the whole scene as `reconstruct --labels final` does (fusion thread
        only; announce() first publishes the status saying so). Returns (level, text) for the user, None
        when the nets are off or `final_turns` is 1."""
        turns = self.config.final_turns
        if self._labeler is None or turns <= 1:
            return None
        self._final_running = True
        announce()
        t0 = time.perf_counter()
        try:
            n = self._labeler.final_pass(turns)
            self._refine()
        except Exception as exc:  # the live labels stay
            log.exception("the final label pass failed")
            return "warning", f"final labels failed ({type(exc).__name__}: {exc}); the live labels stay"
        finally:
            self._final_running = False
        return "info", f"final labels: {n} chunks relabeled, {turns} quarter turns averaged ({time.perf_counter() - t0:.1f} s)"

    def _refine(self) -> None:
        """Refine the whole mesh's labels as an export does, to be shown until they change (fusion thread).
        A failure leaves the view with the cells' labels (an export refines again on its own)."""
        store = self.store
        version = store.version
        try:
            mesh = self._pipeline.final_mesh()
            self._refined = RefinedLabels.of_mesh(mesh, store.mesh_labels(mesh), version)
        except Exception:  # the final labels stand; only their refined view is missing
            log.exception("refining the final labels at surface segments failed")
            return
        self._refined_news = True

    def label_changes_pending(self) -> bool:
        """Labels changed since the display last took them (any thread; for tests and scripts)."""
        return self.store.version != self._seen_version

    def _due(self, version: int, seen: int, at_s: float, interval_s: float) -> bool:
        return version != seen and time.monotonic() - at_s >= interval_s

    def poll(self) -> None:
        """Start the labeler once its model has loaded; without a labeler, move the label store (user
        corrections) with the map corrections of loop closure (fusion thread, every loop iteration; cheap)."""
        if self.enabled and self._labeler is None and self._model is not None and self._pipeline is not None:
            self._start_labeler()
        loops = getattr(self._pipeline, "loops", None)
        if self._labeler is None and loops is not None and len(loops.events) > self.store.world:
            self.store.follow([e.surface_transforms for e in loops.events])

    def has_news(self) -> bool:
        """Whether class amounts or the completion are due to be handed out again."""
        c = self.config
        return (self._due(self.store.version, self._counts_version, self._counts_at, c.counts_interval_s)
                or self._due(self._completion.version, self._completion_version, self._completion_at,
                             c.completion_interval_s))

    def class_counts(self) -> dict | None:
        """{NYU40 id: cells} when they changed (at most every counts_interval_s), else None."""
        store = self.store
        version = store.version
        if not self._due(version, self._counts_version, self._counts_at, self.config.counts_interval_s):
            return None
        self._counts_version, self._counts_at = version, time.monotonic()
        return store.class_counts()

    def completion_display(self) -> MeshDisplay | None:
        """The completed geometry when it changed (at most every completion_interval_s), else None."""
        comp = self._completion
        version = comp.version
        if not self._due(version, self._completion_version, self._completion_at, self.config.completion_interval_s):
            return None
        self._completion_version, self._completion_at = version, time.monotonic()
        done = comp.mesh()
        m = done.mesh
        return pack_mesh(m.positions_m, m.colors, m.normals, m.faces, done.labels, np.ones(len(done.labels)))

    def status(self) -> dict:
        """enabled, message and whatever the labeler's stats() reports (queue, latency)."""
        loading = self._loader is not None and self._loader.is_alive()
        out = {"enabled": self._labeler is not None, "loading": loading, "message": self.message,
               "final_pass": self._final_running}
        if self._labeler is not None:
            try:
                out |= dict(self._labeler.stats())
            except Exception:  # stats are informative only
                log.exception("labeler stats failed")
        return out

    def session_extras(self) -> dict:
        """Arrays to save with a session: the label store (corrections included), the completion and
        the adapted weights (when corrections were learned from)."""
        blob = self.adapted_weights()
        return self.store.to_arrays() | self._completion.to_arrays() | ({ADAPTED_NAME: blob} if blob is not None else {})

    # --- learning from corrections ------------------------------------------------------------
    def learner(self):
        """This scan's CorrectionLearner (None until the model has loaded). Any thread."""
        from nets.adapt import CorrectionLearner
        from nets.session_weights import model_from_array

        with self._lock:
            if self._learner is None and self._model is not None:
                self._learner = CorrectionLearner(self._model, self.config.adapt)
                if self._adapted_blob is not None:
                    try:
                        self._learner.use_adapted(model_from_array(self._adapted_blob))
                    except UserError as exc:
                        log.warning("adapted weights not restored: %s", exc)
                    self._adapted_blob = None
            return self._learner

    def learning_problem(self) -> str:
        """Why learning from corrections cannot run now ('' when it can). Any thread."""
        if not self.enabled:
            return "learning from corrections needs the labeling nets: turn them on"
        if self._model is None:
            return "the labeling nets are still loading" if self._loader is not None and self._loader.is_alive() \
                else self.message or "the labeling nets are off"
        return ""

    def scene_region(self):
        """The whole scan's coarse sites for a learning round (fusion thread: it reads the volume)."""
        from nets.adapt import scene_region

        return scene_region(self._pipeline.volume, self.config.grid)

    def adopt(self, learner) -> None:
        """After a round: the labeler labels new geometry with the learner's current model (any thread;
        the worker picks it up with its next region)."""
        labeler = self._labeler
        if labeler is not None and learner is self._learner:
            labeler.model = learner.model

    def adapted_weights(self):
        """The adapted weights as a weights-file array (None: nothing learned). Any thread."""
        from nets.session_weights import weights_array

        learner = self._learner
        if learner is None:
            return self._adapted_blob
        if not learner.adapted:
            return None
        model = learner.model
        if self._blob_cache is None or self._blob_cache[0] is not model:
            self._blob_cache = (model, weights_array(model, {"adapted_from": str(learner.base.weights_path)}))
        return self._blob_cache[1]
