"""Owns label refinement at surface segments: the mesh is cut into segments where its surface bends or
its colour changes (graph-based segmentation over the mesh's edges), and within a segment large enough
to be a surface part, every point takes the segment's confidence-weighted majority label. The nets label
5 cm cells, so their edges fall between surface parts; a segment's edges fall where the surface's do.
A point a user corrected keeps its correction (and votes with full weight).

Pure functions: any thread may call them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from fusion.meshing import find_sorted


@dataclass(frozen=True)
class SegmentVoteConfig:
    """How the surface is segmented and how segments vote."""

    enabled: bool = True
    k: float = 0.02                  #: merge threshold: larger gives larger segments (edge weight units)
    colour_weight: float = 0.0       #: an edge's weight adds this times its colour difference (0..1 per channel, L2)
    min_segment_points: int = 100    #: smaller segments are merged into a neighbour; ...
    min_vote_points: int = 100       #: ... and only segments at least this large vote, ...
    min_labelled_share: float = 0.5  #: ... and only where at least this share of their points holds a label
    #: a corrected point's vote weighs this many fully confident predictions (the user knows the class; the nets'
    #: points weigh their confidence, at most 1), so a correction carries the rest of its surface segment
    correction_weight: float = 3.0


@numba.njit(cache=True, nogil=True)
def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _segment(n: int, ea: np.ndarray, eb: np.ndarray, w: np.ndarray, order: np.ndarray, k: float,
             min_size: int) -> np.ndarray:
    """Graph segmentation over edges (ea, eb) of weight w, taken lightest first (`order`): two parts merge
    when the edge between them is no heavier than either part's heaviest inner edge plus k / its size;
    then parts under min_size merge across their lightest edges. Returns a root id per node."""
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    inner = np.zeros(n)
    for t in order:
        a, b = _root(parent, ea[t]), _root(parent, eb[t])
        if a == b:
            continue
        if w[t] <= inner[a] + k / size[a] and w[t] <= inner[b] + k / size[b]:
            if size[a] < size[b]:
                a, b = b, a
            parent[b] = a
            size[a] += size[b]
            inner[a] = w[t]
    for t in order:
        a, b = _root(parent, ea[t]), _root(parent, eb[t])
        if a != b and (size[a] < min_size or size[b] < min_size):
            if size[a] < size[b]:
                a, b = b, a
            parent[b] = a
            size[a] += size[b]
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = _root(parent, i)
    return out


def surface_segments(normals: np.ndarray, colors: np.ndarray, faces: np.ndarray,
                     config: SegmentVoteConfig = SegmentVoteConfig()) -> np.ndarray:
    """(N,) int64 segment id per vertex (ids are arbitrary; equal ids share a segment). An edge weighs
    1 - cos(angle between its vertices' normals), plus `colour_weight` times their colour distance.
    Each face gives its three edges; an edge that faces share is taken once."""
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    n_vertices = len(normals)
    edges = np.sort(np.minimum(a, b) * n_vertices + np.maximum(a, b))
    edges = edges[np.r_[True, edges[1:] != edges[:-1]]]   # (np.unique: the same, many times slower here)
    ea, eb = edges // n_vertices, edges % n_vertices
    n = np.asarray(normals, np.float32)
    w = 1.0 - np.einsum("ij,ij->i", n[ea], n[eb])
    if config.colour_weight > 0:
        c = np.asarray(colors, np.float32) / 255.0
        w = w + config.colour_weight * np.linalg.norm(c[ea] - c[eb], axis=1)
    w = w.astype(np.float64)
    return _segment(n_vertices, ea, eb, w, np.argsort(w), float(config.k), int(config.min_segment_points))


def vote(labels: np.ndarray, conf: np.ndarray, segments: np.ndarray, fixed: np.ndarray,
         config: SegmentVoteConfig = SegmentVoteConfig()) -> np.ndarray:
    """Labels (N,) uint16 after each segment of at least `min_vote_points` points, most of them labelled
    (`min_labelled_share`), takes its majority label, each point weighted by its confidence (a fixed point
    by `correction_weight`). Unlabelled points (0) do not vote but take their segment's label; fixed points (user
    corrections) keep theirs."""
    labels = np.asarray(labels)
    if not len(labels):
        return labels.copy()
    _, seg, counts = np.unique(segments, return_inverse=True, return_counts=True)
    classes, cls = np.unique(labels, return_inverse=True)
    weight = np.where(fixed, config.correction_weight, np.asarray(conf, np.float64)) + 1e-6
    weight[labels == 0] = 0.0
    score = np.bincount(seg * len(classes) + cls, weights=weight,
                        minlength=len(counts) * len(classes)).reshape(len(counts), len(classes))
    best = classes[score.argmax(1)]
    labelled = np.bincount(seg, weights=(labels != 0).astype(np.float64), minlength=len(counts))
    votes = (counts >= config.min_vote_points) & (labelled >= config.min_labelled_share * counts) & (score.max(1) > 0)
    take = votes[seg] & ~np.asarray(fixed, bool)
    out = labels.copy()
    out[take] = best[seg[take]]
    return out


@dataclass(frozen=True)
class RefinedLabels:
    """A whole mesh's refined labels by vertex key (immutable), valid while the label store is still at
    `version`: the display shows them on its mesh chunks, which share the whole mesh's vertex keys."""

    version: int
    keys: np.ndarray     #: (N,) int64 sorted vertex keys
    labels: np.ndarray   #: (N,) uint16 NYU40 label of each

    @staticmethod
    def of_mesh(mesh, labels: np.ndarray, version: int) -> "RefinedLabels":
        keys = np.asarray(mesh.vertex_keys, np.int64)
        order = np.argsort(keys, kind="stable")
        return RefinedLabels(version, keys[order], np.asarray(labels)[order])

    def overlay(self, labels: np.ndarray, vertex_keys: np.ndarray) -> np.ndarray:
        """`labels` with every vertex found here given its refined label."""
        out = np.array(labels, copy=True)
        at = find_sorted(self.keys, np.asarray(vertex_keys, np.int64))
        out[at >= 0] = self.labels[at[at >= 0]]
        return out
