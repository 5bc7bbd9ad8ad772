"""Benchmark that plays the user correcting labels: K region clicks, one learning round, mIoU on untouched vertices.

    python -m bench.corrections_bench [--cache /tmp/corr] [--seeds 1000,1001,1002] [--ks 1,3,5,10]
                                      [--budget-s 30] [--threads 2] [--method head|finetune]
                                      [--user careful|literal]
                                      [--no-real-room] [--spread] [--set FIELD=VALUE] [--json FILE]
                                      [--store-set FIELD=VALUE] [--vote-set FIELD=VALUE]

Scenes: the shared real ScanNet room (rendered and reconstructed with ground-truth poses and the shipped
weights, `nets.real_room`; built once into CACHE/real, which must lie outside the repository) and
held-out synthetic rooms (`reconstruct synthetic:SEED --labels final`, built once into CACHE/synth_SEED).
For each scene and K, starting from the shipped weights' labels as the app shows them and every export
writes them (the cells' labels refined at surface segments, `LabelStore.mesh_labels`; a correction's
points vote there, so a click also relabels the rest of its surface segment): K times, find the largest connected
set of mesh vertices that are still wrongly labeled (same predicted and same true class, connected
through mesh edges) and click its vertex nearest its centroid with the region tool and the true class
(no learning between clicks). What the click relabels (`--user`): "precise" (default), the cells of that
wrong region (a region tool that stops at the object's true boundary); "literal", the app's region tool
(`connected_region` toward the class set), which floods the connected cells of the clicked label that the
nets find at least half as likely to be that class as the clicked cell (until 2026-12-04 every connected cell
of the clicked label, so a picture labeled "wall" clicked as picture turned the whole wall into picture);
"careful", the app's tool, but a click is undone when less than half the surface it relabels truly has the
class it sets, and the next largest wrong region is tried. Then one learning round
(`nets.adapt.CorrectionLearner`, the app's and `relabel`'s code) and the relabel. Scored: per-vertex
ScanNet-20 mIoU (`nets.real_room.vertex_scores`) of those labels on the vertices no correction touched (their
cell, or the neighbour cell their label is read from, was not corrected), before and after the round, and
beside it the gain of the corrections alone, before the round (`clicks only`: what their surface segments
spread), the gain of the cells' interpolated labels alone (`cells gain`, what the benchmark scored until
2026-12-04), and mIoU on every scored vertex before and after (`all`: what the user ends with, the corrected
vertices too, so a click that floods beyond the wrong region shows there); wall
time and the optimiser steps the round took (the machine may be shared: steps say how much learning the
budget bought). Prints a table; writes bench/results/corrections.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py: spinning OpenMP threads stall on a shared CPU
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

import numpy as np  # noqa: E402
from scipy.sparse import coo_matrix  # noqa: E402
from scipy.sparse.csgraph import connected_components  # noqa: E402

from bench.settings import setting_parser, with_settings
from fusion.coarse import CoarseGridConfig, CoarseRegion
from fusion.meshing import MeshArrays
from nets.adapt import AdaptConfig, CorrectionLearner, scene_region
from nets.labels import LabelStore, LabelStoreConfig
from nets.real_room import vertex_scores
from nets.segment_vote import SegmentVoteConfig, surface_segments

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scene:
    """A reconstructed room with its base labels and per-vertex truth (immutable)."""

    name: str
    region: CoarseRegion
    store_arrays: dict        #: the base labels (LabelStore.to_arrays)
    vertices_m: np.ndarray    #: (N,3) float32 mesh vertices
    faces: np.ndarray         #: (M,3) int64
    gt: np.ndarray            #: (N,) NYU40 truth, 0: not scored
    normals: np.ndarray | None = None  #: (N,3) unit vertex normals (None: score the cells' labels only)
    colors: np.ndarray | None = None   #: (N,3) uint8 vertex colours

    def mesh(self) -> MeshArrays:
        keys = np.zeros(len(self.vertices_m), np.int64)
        return MeshArrays(self.vertices_m, self.colors, self.normals, self.faces, keys)

    def segments(self, vote: SegmentVoteConfig) -> np.ndarray | None:
        """The mesh's surface segments under `vote` (they do not change with the labels); None without normals."""
        return None if self.normals is None else surface_segments(self.normals, self.colors, self.faces, vote)

    def labels(self, store: LabelStore, vote: SegmentVoteConfig = SegmentVoteConfig(),
               segments: np.ndarray | None = None) -> np.ndarray:
        """(N,) what the app shows and every export writes at each vertex: the store's labels refined at
        surface segments (`LabelStore.mesh_labels`; `segments` from `self.segments(vote)`); without normals,
        the cells' interpolated labels."""
        if self.normals is None:
            return store.labels_at(self.vertices_m)[0]
        return store.mesh_labels(self.mesh(), vote, segments)


# --- building the scenes once ------------------------------------------------------------------
def _save_cache(path: Path, scene: Scene) -> None:
    r = scene.region
    np.savez(path, coords=r.coords, features=r.features, vertices_m=scene.vertices_m, faces=scene.faces,
             gt=scene.gt, normals=scene.normals, colors=scene.colors,
             **{f"store__{k}": v for k, v in scene.store_arrays.items()})


def _load_cache(path: Path, name: str) -> Scene | None:
    """The cached scene; None when there is none, or it was written without the mesh's normals (rebuilt from
    its session)."""
    if not path.exists():
        return None
    z = np.load(path)
    if "normals" not in z.files:
        return None
    coords = z["coords"]
    region = CoarseRegion((), coords, z["features"], np.ones(len(coords), bool), CoarseGridConfig())
    store = {k[len("store__"):]: z[k] for k in z.files if k.startswith("store__")}
    return Scene(name, region, store, z["vertices_m"], z["faces"], z["gt"], z["normals"], z["colors"])


def _from_session(name: str, session_path: Path, gt_of) -> Scene:
    from storage.session import load_session

    s = load_session(session_path)
    try:
        region = scene_region(s.pipeline.volume, CoarseGridConfig())
        mesh = s.pipeline.final_mesh()
    finally:
        s.pipeline.close()
    store = LabelStore.from_arrays(s.extras).to_arrays()
    verts = np.asarray(mesh.positions_m, np.float32)
    return Scene(name, region, store, verts, np.asarray(mesh.faces, np.int64), gt_of(verts),
                 np.asarray(mesh.normals, np.float32), np.asarray(mesh.colors, np.uint8))


def real_room(cache: Path, model) -> Scene:
    """The real ScanNet room, reconstructed once (GT poses, shipped weights) into cache/real."""
    from nets.real_room import (RealRoomConfig, RoomSource, VARIANTS, build_surface, output_to_gt, plan_path,
                                points_path, read_points, reconstruct_variant, write_variants)
    from scipy.spatial import cKDTree

    from fusion.trajectory import read_tum

    folder = cache / "real"
    npz = folder / "scene.npz"
    cached = _load_cache(npz, "real ScanNet room")
    if cached is not None:
        return cached
    cfg = RealRoomConfig()
    points = read_points(points_path())
    rec = folder / f"reconstruct_{VARIANTS['gt']}"
    if not (rec / "session").exists():
        world = build_surface(points, cfg)
        src = write_variants(RoomSource(world, plan_path(world, cfg), cfg), folder, cfg.progress)["gt"]
        reconstruct_variant(src, rec, "gt", model, cfg)
    _, gt_poses = read_tum(folder / VARIANTS["gt"] / "groundtruth.txt")
    T = output_to_gt(rec / "trajectory.txt", gt_poses[0])
    tree = cKDTree(points.xyz_m)

    def gt_of(verts):
        dist, idx = tree.query(verts.astype(np.float64) @ T[:3, :3].T + T[:3, 3],
                               distance_upper_bound=cfg.match_distance_m)
        ok = np.isfinite(dist)
        out = np.zeros(len(verts), np.uint16)
        out[ok] = points.labels[idx[ok]]
        return out

    scene = _from_session("real ScanNet room", rec / "session", gt_of)
    _save_cache(npz, scene)
    return scene


def synthetic_room(seed: int, cache: Path, model, frames: int) -> Scene:
    """A held-out synthetic room (seeds 1000+ are never trained on), reconstructed once."""
    from fusion.pipeline import PipelineConfig
    from fusion.reconstruct import ReconstructRequest, reconstruct
    from nets.data import CLASS_IDS, IGNORE, closest_surface, nyu40_to_class_index
    from nets.reconstruct_labels import label_hook_factory
    from synth.world import build_world

    folder = cache / f"synth_{seed}"
    npz = folder / "scene.npz"
    cached = _load_cache(npz, f"synthetic room {seed}")
    if cached is not None:
        return cached
    if not (folder / "session").exists():
        reconstruct(ReconstructRequest(f"synthetic:{seed}", folder, PipelineConfig(poses="gt"), frames, "final",
                                       progress=False, label_hook=label_hook_factory("final", model)))
    world = build_world(seed)

    def gt_of(verts):
        _, cls = closest_surface(world.vertices, world.triangles, nyu40_to_class_index(world.tri_labels), verts)
        ids = np.append(CLASS_IDS, 0).astype(np.uint16)
        return ids[np.where(cls == IGNORE, len(CLASS_IDS), cls).astype(np.int64)]

    scene = _from_session(f"synthetic room {seed}", folder / "session", gt_of)
    _save_cache(npz, scene)
    return scene


# --- playing the user --------------------------------------------------------------------------
def wrong_regions(scene: Scene, pred: np.ndarray, most: int) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """(click point, true class, member vertices) for the `most` largest connected sets of wrongly labeled vertices that
    share their predicted and their true class, largest first."""
    wrong = (scene.gt > 0) & (pred != scene.gt)
    if not wrong.any():
        return []
    e = np.concatenate([scene.faces[:, [0, 1]], scene.faces[:, [1, 2]], scene.faces[:, [2, 0]]])
    same = wrong[e[:, 0]] & wrong[e[:, 1]] & (pred[e[:, 0]] == pred[e[:, 1]]) & (scene.gt[e[:, 0]] == scene.gt[e[:, 1]])
    e = e[same]
    n = len(pred)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp[wrong], minlength=comp.max() + 1)
    out = []
    for c in np.argsort(-sizes)[:most]:
        members = np.flatnonzero(wrong & (comp == c))
        if not len(members):
            break
        centre = scene.vertices_m[members].mean(0)
        pick = members[np.argmin(np.linalg.norm(scene.vertices_m[members] - centre, axis=1))]
        out.append((scene.vertices_m[pick].astype(np.float64), int(scene.gt[pick]), members))
    return out


USERS = ("precise", "careful", "literal")


def click(scene: Scene, store: LabelStore, pred: np.ndarray, user: str,
          corrected: np.ndarray) -> tuple[np.ndarray, int, np.ndarray] | None:
    """The next region click on the largest wrong region: (point, class, cells it relabels).
    "literal": the app's region tool at that point, toward the class set, whatever it floods. "careful":
    the same, but a click whose flood relabels more correctly labeled surface than wrong is undone and the
    next largest wrong region tried. "precise" (default): a region tool that stops at the object's true
    boundary, i.e. exactly the cells of the wrong region's vertices. A wrong region whose cells are all
    corrected already is passed over (vertices of two classes sharing a 5 cm cell: a click cannot fix it,
    it would flip the cell back and forth)."""
    from nets.cells import pack_cells

    vertex_cells = pack_cells(store.cells_at(scene.vertices_m))
    for point, label, members in wrong_regions(scene, pred, 30):
        if user == "precise":
            cells = np.unique(store.cells_at(scene.vertices_m[members]), axis=0)
        else:
            cells = store.connected_region(point, toward=label)
        if not len(cells) or np.isin(pack_cells(cells), corrected).all():
            continue
        if user == "precise":
            return point, label, cells
        inside = np.isin(vertex_cells, pack_cells(cells)) & (scene.gt > 0)
        if user == "literal" or np.mean(scene.gt[inside] == label) >= 0.5:
            return point, label, cells
    return None


def touched_vertices(store: LabelStore, vertices_m: np.ndarray, corrected_packed: np.ndarray) -> np.ndarray:
    """Vertices whose label a correction decides: their cell is corrected, or (their cell holds no
    label) a corrected neighbour cell could give it."""
    from nets.cells import pack_cells

    cells = store.cells_at(vertices_m)
    own = np.isin(pack_cells(cells), corrected_packed)
    lab, _ = store.labels_of_cells(cells)
    out = own.copy()
    empty = np.flatnonzero(lab == 0)
    for d in np.array([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)]):
        out[empty] |= np.isin(pack_cells(cells[empty] + d), corrected_packed)
    return out


def cell_truth(store: LabelStore, scene: Scene, coords: np.ndarray) -> np.ndarray:
    """(N,) NYU40 truth of each cell: the most common truth of the scored vertices in it (0: none)."""
    from nets.cells import pack_cells

    ok = scene.gt > 0
    pairs, counts = np.unique(np.stack([pack_cells(store.cells_at(scene.vertices_m[ok])), scene.gt[ok]], 1),
                              axis=0, return_counts=True)
    pairs = pairs[np.lexsort((-counts, pairs[:, 0]))]
    first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
    cells, truth = pairs[first, 0], pairs[first, 1]
    key = pack_cells(coords)
    pos = np.minimum(np.searchsorted(cells, key), len(cells) - 1)
    return np.where(cells[pos] == key, truth[pos], 0).astype(np.uint16)


def spread(scene: Scene, store: LabelStore, corrected: np.ndarray, model, cfg: AdaptConfig) -> dict:
    """Why corrections do or do not spread, per corrected class c, in the features the head reads (the
    anchor's): of the observed uncorrected cells truly c, the share whose nearest other cell among the
    corrected and the confidently predicted ones (the pseudo-label pool) is a corrected one (against
    `chance`, the corrected cells' share of those), and the share of them in the pool with a class other
    than c (pseudo-labels that fight the correction)."""
    from scipy.spatial import cKDTree

    from nets.adapt import scene_features
    from nets.cells import CLASS_IDS, pack_cells

    sf = scene_features(model.net, scene.region)
    truth = cell_truth(store, scene, sf.coords)
    is_corr = np.isin(pack_cells(sf.coords), corrected) & sf.observed
    anchor = np.append(CLASS_IDS, 0)[sf.probs.argmax(1)]
    pool = sf.observed & ~is_corr & (sf.probs.max(1) >= cfg.pseudo_min_conf) & (anchor > 0)
    seeds = np.flatnonzero(is_corr | pool)
    tree = cKDTree(sf.features[seeds])
    out = {}
    for c in np.unique(store.labels_of_cells(sf.coords[is_corr])[0]):
        same = np.flatnonzero(sf.observed & ~is_corr & (truth == c))
        if not len(same):
            continue
        _, nn = tree.query(sf.features[same], k=2)
        nearest = np.where(seeds[nn[:, 0]] == same, seeds[nn[:, 1]], seeds[nn[:, 0]])
        out[int(c)] = {"untouched_cells": int(len(same)), "nearest_is_corrected": float(np.mean(is_corr[nearest])),
                       "chance": float(np.mean(is_corr[seeds])),
                       "pseudo_other": float(np.mean(pool[same] & (anchor[same] != c)))}
    return out


def play(scene: Scene, model, k: int, cfg: AdaptConfig, user: str = "precise", diagnose: bool = False,
         store_config: LabelStoreConfig = LabelStoreConfig(), vote: SegmentVoteConfig = SegmentVoteConfig()) -> dict:
    """K clicks, one learning round; scores on the untouched vertices before and after (and, with
    `diagnose`, `spread`'s figures)."""
    from nets.cells import pack_cells

    store = LabelStore.from_arrays(scene.store_arrays, config=store_config)
    segments = scene.segments(vote)

    def shown() -> np.ndarray:
        return scene.labels(store, vote, segments)

    before, cells_before = shown(), store.labels_at(scene.vertices_m)[0]
    pred, clicks, corrected = before.copy(), [], np.zeros(0, np.int64)
    for _ in range(k):
        found = click(scene, store, pred, user, corrected)
        if found is None:
            break
        point, label, cells = found
        store.correct(cells, label)
        corrected = np.union1d(corrected, pack_cells(cells))
        clicks.append({"point_m": point.round(3).tolist(), "label": label, "cells": int(len(cells))})
        pred = shown()
    clicked = pred   # the corrections alone, before the round learns from them
    diagnosis = {"spread": spread(scene, store, corrected, model, cfg)} if diagnose else {}
    learner = CorrectionLearner(model, cfg)
    t0 = time.perf_counter()
    result = learner.learn(scene.region, store)
    wall_s = time.perf_counter() - t0
    after, cells_after = shown(), store.labels_at(scene.vertices_m)[0]
    scored = scene.gt > 0   # every scored vertex, the corrected ones too: what the user ends with
    keep = ~touched_vertices(store, scene.vertices_m, corrected) & scored

    def miou(labels: np.ndarray, where: np.ndarray) -> float:
        return vertex_scores(labels[where], scene.gt[where])["miou"]

    s0, s1 = vertex_scores(before[keep], scene.gt[keep]), vertex_scores(after[keep], scene.gt[keep])
    cells_gain = miou(cells_after, keep) - miou(cells_before, keep)
    clicks_gain = miou(clicked, keep) - s0["miou"]
    all_before, all_after = miou(before, scored), miou(after, scored)
    return {"scene": scene.name, "k": k, "user": user, "clicks": clicks, "untouched_vertices": int(keep.sum()),
            "scored_vertices": int(scored.sum()), "miou_before": s0["miou"], "miou_after": s1["miou"],
            "gain": s1["miou"] - s0["miou"], "clicks_gain": clicks_gain, "cells_gain": cells_gain,
            "miou_all_before": all_before, "miou_all_after": all_after,
            "accuracy_before": s0["accuracy"], "accuracy_after": s1["accuracy"],
            "steps": result.steps, "learn_s": round(result.learn_s, 2), "relabel_s": round(result.relabel_s, 2),
            "round_wall_s": round(wall_s, 2), "class_iou_before": s0["class_iou"],
            "class_iou_after": s1["class_iou"]} | diagnosis


def table(rows: list[dict]) -> str:
    head = f"{'scene':<22}{'K':>3}{'untouched':>11}{'mIoU before':>13}{'after':>8}{'gain':>8}{'clicks only':>13}" \
           f"{'cells gain':>12}{'all before':>12}{'all after':>11}{'steps':>7}{'learn s':>9}{'relabel s':>11}"
    lines = [head] + [f"{r['scene']:<22}{r['k']:>3}{r['untouched_vertices']:>11}{r['miou_before']:>13.3f}"
                      f"{r['miou_after']:>8.3f}{r['gain']:>+8.3f}{r['clicks_gain']:>+13.3f}"
                      f"{r['cells_gain']:>+12.3f}{r['miou_all_before']:>12.3f}{r['miou_all_after']:>11.3f}"
                      f"{r['steps']:>7}{r['learn_s']:>9.1f}"
                      f"{r['relabel_s']:>11.1f}" for r in rows]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.corrections_bench", description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path("/tmp/corr"), help="scenes are built once into this folder "
                   "(outside the repository)")
    p.add_argument("--seeds", default="1000,1001,1002", help="held-out synthetic rooms ('' for none)")
    p.add_argument("--ks", default="1,3,5,10")
    p.add_argument("--frames", type=int, default=150, help="frames of each synthetic room")
    p.add_argument("--budget-s", type=float, default=AdaptConfig.budget_s, help="learning time of a round")
    p.add_argument("--threads", type=int, default=2, help="torch threads while learning")
    p.add_argument("--method", choices=("head", "finetune"), default=AdaptConfig.method,
                   help="how a round learns (AdaptConfig.method; see nets.adapt)")
    p.add_argument("--no-real-room", action="store_true")
    p.add_argument("--user", choices=USERS, default="precise",
                   help="how a click relabels: precise (the wrong region's cells), careful or literal (the app's "
                        "region tool; careful undoes floods that break more than they fix); see click()")
    p.add_argument("--set", type=setting_parser(AdaptConfig()), action="append", default=[], metavar="FIELD=VALUE",
                   help="override an AdaptConfig field for this run (repeatable), e.g. --set head_pseudo_weight=10")
    p.add_argument("--store-set", type=setting_parser(LabelStoreConfig()), action="append", default=[],
                   metavar="FIELD=VALUE", help="override a LabelStoreConfig field (repeatable), e.g. "
                   "--store-set region_min_share=0 (the region tool before 2026-12-04)")
    p.add_argument("--vote-set", type=setting_parser(SegmentVoteConfig()), action="append", default=[],
                   metavar="FIELD=VALUE", help="override a SegmentVoteConfig field of the labels shown (repeatable), "
                   "e.g. --vote-set correction_weight=1 (the vote before 2026-12-04)")
    p.add_argument("--spread", action="store_true", help="also report, per corrected class, how near the room's "
                   "other cells of that class lie to the corrected ones in the head's features (see spread())")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "corrections.json")
    return p


def main(argv=None) -> int:
    import torch

    from nets.infer import ChunkModel

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    cache = args.cache.resolve()
    if cache == ROOT or ROOT in cache.parents:
        print(f"error: --cache {cache}: keep the scenes outside the repository", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    model = ChunkModel.load()
    cfg = with_settings(dataclasses.replace(AdaptConfig(), budget_s=args.budget_s, threads=args.threads,
                                            method=args.method), args.set)
    store_config = with_settings(LabelStoreConfig(), args.store_set)
    vote = with_settings(SegmentVoteConfig(), args.vote_set)
    scenes = [] if args.no_real_room else [lambda: real_room(cache, model)]
    scenes += [lambda s=int(s): synthetic_room(s, cache, model, args.frames) for s in args.seeds.split(",") if s]
    rows = []
    for make in scenes:
        scene = make()
        for k in (int(v) for v in args.ks.split(",")):
            rows.append(play(scene, model, k, cfg, args.user, args.spread, store_config, vote))
            print(table(rows[-1:]).splitlines()[1], flush=True)
            for c, v in rows[-1].get("spread", {}).items():
                print(f"    class {c}: {v['untouched_cells']} untouched cells, nearest is corrected "
                      f"{v['nearest_is_corrected']:.3f} (chance {v['chance']:.3f}), pseudo-labeled another class "
                      f"{v['pseudo_other']:.3f}")
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python -m bench.corrections_bench " + " ".join(sys.argv[1:] if argv is None else argv),
           "budget_s": args.budget_s, "threads": args.threads, "adapt_config": dataclasses.asdict(cfg),
           "label_store_config": dataclasses.asdict(store_config), "segment_vote_config": dataclasses.asdict(vote),
           "rows": rows}
    args.json.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
