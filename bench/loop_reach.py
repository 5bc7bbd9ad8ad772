"""Loop reach diagnosis: can the keyframes of a stretch of a drifting scan close a loop at all?

For each keyframe of the synthetic scan `SEED` (drifted odometry as in `bench.loop_bench`, keyframes taken
as the loop closer takes them) from frame `--from-frame` on, it prints:
- `seen`: the share of the surface it sees (true poses) that keyframes at least `--walk-m` of path earlier
  saw within 3 cm: near 0 is new ground (no loop can exist), near 1 a place seen before;
- the best verification against every keyframe that far back, with the gates relaxed to `--min-matches`
  matches and inliers: accepted (with its error against the true relative pose) or the rejection that got
  furthest (most RANSAC inliers);
- its alignment to the map of those keyframes at their true poses (`loopclosure.map_align`, a corrected map),
  from its true pose put `--map-offset-m` and `--map-offset-deg` off, with `--map-walked-m` walked since its
  last loop edge: the edge's error against the truth, or why it was rejected.
Keyframes are described from their full frames, as the worker does when it keeps up.

    python -m bench.loop_reach SEED [--frames 600] [--from-frame 400] [--walk-m 3.0] [--min-matches 20]
                                    [--map-offset-m 0.03] [--map-offset-deg 1.5] [--map-walked-m 1.0]
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys

import numpy as np
from scipy.spatial import cKDTree

from bench.drift import DriftedFrames, pose_offset
from fusion.sources.synthetic import SyntheticSource
from fusion.tracking import relative_motion
from loopclosure.config import LoopClosureConfig
from loopclosure.detect import LoopDetectConfig, LoopDetector, depth_points
from loopclosure.keyframes import reduced_keyframe
from loopclosure.map_align import MapAligner

SEEN_M = 0.03


def keyframes(src: DriftedFrames, config: LoopClosureConfig, detector: LoopDetector):
    """(keyframes, drifted poses, true poses, path walked) of the scan, each keyframe described."""
    kfs, poses, true, path = [], [], [], []
    for f in src:
        T = f.T_world_cam_gt
        if poses:
            m, deg = relative_motion(poses[-1], T)
            if m < config.keyframe_step_m and deg < config.keyframe_step_deg:
                continue
            path.append(path[-1] + float(np.linalg.norm(T[:3, 3] - poses[-1][:3, 3])))
        else:
            path.append(0.0)
        kfs.append(reduced_keyframe(len(kfs), f))
        poses.append(T)
        true.append(src.true_poses[f.index])
        detector.describe(kfs[-1].kid, f)
    return kfs, np.array(poses), np.array(true), np.array(path)


def _world_points(kf, T: np.ndarray, depth_max_m: float) -> np.ndarray:
    p = depth_points(kf, depth_max_m)[::5].astype(np.float64)
    return p @ T[:3, :3].T + T[:3, 3]


def best_verdict(detector: LoopDetector, kfs, poses, true, path, j: int, old: list) -> str:
    best, best_inliers = "no candidate", -1
    for i in old:
        v = detector.verify(kfs[i], kfs[j], np.linalg.inv(poses[i]) @ poses[j], path[j] - path[i])
        if v.edge is not None:
            m, deg = relative_motion(np.linalg.inv(true[i]) @ true[j], v.edge.T_old_cur)
            return f"accepted with frame {kfs[i].index} ({v.edge.inliers} inliers; off the truth {m * 100:.1f} cm / {deg:.1f} deg)"
        found = re.match(r"(\d+) RANSAC inliers", v.reason)
        inliers = int(found.group(1)) if found else (10**6 if "matches" not in v.reason else 0)
        if inliers > best_inliers:
            best, best_inliers = f"frame {kfs[i].index}: {v.reason}", inliers
    return best


def map_verdict(aligner: MapAligner, kfs, true, j: int, old: list, offset: np.ndarray, walked_m: float) -> str:
    """Keyframe j aligned to the map of `old` at their true poses, from its true pose moved by `offset`."""
    v = aligner.align(kfs[j], true[j] @ offset, [kfs[i] for i in old], true[old], walked_m)
    if v.edge is None:
        return f"map: rejected ({v.reason})"
    i = next(i for i in old if kfs[i].kid == v.edge.old)
    m, deg = relative_motion(np.linalg.inv(true[i]) @ true[j], v.edge.T_old_cur)
    return f"map: aligned to frame {v.edge.old_frame}'s (off the truth {m * 100:.1f} cm / {deg:.2f} deg)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--from-frame", type=int, default=400)
    ap.add_argument("--walk-m", type=float, default=3.0)
    ap.add_argument("--min-matches", type=int, default=20, help="relaxed: fewest matches and RANSAC inliers")
    ap.add_argument("--map-offset-m", type=float, default=0.03, help="map alignment starts this far off the true pose")
    ap.add_argument("--map-offset-deg", type=float, default=1.5, help="... and turned this much")
    ap.add_argument("--map-walked-m", type=float, default=1.0, help="path walked since the last loop edge (drift allowed)")
    ap.add_argument("--yaw-deg-per-m", type=float, default=1.5)
    ap.add_argument("--scale-error", type=float, default=0.01)
    args = ap.parse_args(argv)
    src = DriftedFrames(SyntheticSource(args.seed, n_frames=args.frames), args.yaw_deg_per_m, args.scale_error)
    detect = dataclasses.replace(LoopDetectConfig(), min_matches=args.min_matches, min_inliers=args.min_matches)
    detector = LoopDetector(detect)
    config = LoopClosureConfig()
    kfs, poses, true, path = keyframes(src, config, detector)
    aligner = MapAligner(config.map_align, detector.cloud_of, detect.depth_max_m)
    offset = pose_offset(args.map_offset_m, args.map_offset_deg)
    world = [_world_points(k, T, detect.depth_max_m) for k, T in zip(kfs, true)]
    for j, kf in enumerate(kfs):
        old = [i for i in range(j) if path[j] - path[i] >= args.walk_m]
        if kf.index < args.from_frame:
            continue
        seen = 0.0
        if old:
            d, _ = cKDTree(np.concatenate([world[i] for i in old])).query(world[j], distance_upper_bound=SEEN_M)
            seen = float(np.mean(d < SEEN_M))
        drift_m, drift_deg = relative_motion(poses[j], true[j])
        print(f"frame {kf.index}: drift {drift_m * 100:.1f} cm / {drift_deg:.1f} deg, seen {args.walk_m:g} m back {seen:.2f}, "
              f"{best_verdict(detector, kfs, poses, true, path, j, old)}; "
              f"{map_verdict(aligner, kfs, true, j, old, offset, args.map_walked_m) if old else 'map: none far enough back'}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
