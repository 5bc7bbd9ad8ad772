"""Writes tiny dataset folders (7-Scenes, TUM RGB-D, Open3D/Redwood layouts) from the analytic test scene.

Each writer takes frames rendered by `tests.scenes` (exact depth, known poses and intrinsics) and a
folder, writes the layout's files and returns the dataset folder. Depth is quantised to the layout's
units; `quantised_depth_m` gives what a reader should return.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from fusion.frame import Frame, Intrinsics
from fusion.trajectory import pose_to_tum
from tests.scenes import orbit

TINY = Intrinsics(fx=60.0, fy=60.0, cx=31.5, cy=23.5, width=64, height=48)
TUM_T0_S = 1305031102.175304


def scene_frames(n_frames: int = 4, intr: Intrinsics = TINY) -> list[Frame]:
    """`n_frames` frames orbiting the analytic scene, 3 degrees apart."""
    return orbit(n_frames, intr, step_deg=3.0)


def quantised_depth_m(depth_m: np.ndarray, units_per_m: float) -> np.ndarray:
    """The depth a reader returns after a round trip through uint16 `units_per_m` PNGs (65535 kept)."""
    raw = np.clip(np.round(np.asarray(depth_m, np.float64) * units_per_m), 0, 65535)
    return (raw / units_per_m).astype(np.float32)


def write_depth_png(path: Path, depth_m: np.ndarray, units_per_m: float) -> None:
    raw = np.round(np.asarray(depth_m, np.float64) * units_per_m)
    Image.fromarray(np.clip(raw, 0, 65535).astype(np.uint16)).save(path)


def write_color(path: Path, color: np.ndarray) -> None:
    """PNG (lossless) or JPG (quality 95, no chroma subsampling) by the path's suffix."""
    img = Image.fromarray(np.asarray(color, np.uint8))
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=95, subsampling=0)
    else:
        img.save(path)


def _k_text(intr: Intrinsics) -> str:
    K = intr.matrix()
    return "\n".join(" ".join(f"{v:.8e}" for v in row) for row in K) + "\n"


def _matrix_text(T: np.ndarray) -> str:
    return "\n".join(" ".join(f"{v:.9e}" for v in row) for row in T) + "\n"


def pinhole_json(intr: Intrinsics) -> str:
    """Open3D PinholeCameraIntrinsic json (column-major intrinsic_matrix)."""
    k = intr.matrix().T.reshape(-1).tolist()
    return json.dumps({"width": intr.width, "height": intr.height, "intrinsic_matrix": k})


def write_sevenscenes(
    root: Path,
    frames: Sequence[Frame],
    subfolder: Optional[str] = "rgbd-frames",
    color_ext: str = ".png",
    poses: bool = True,
    intrinsics_file: bool = True,
    first_number: int = 0,
) -> Path:
    """7-Scenes / tsdf-fusion layout: camera-intrinsics.txt and frame-NNNNNN.{color,depth,pose} files."""
    root = Path(root)
    frames_dir = root / subfolder if subfolder else root
    frames_dir.mkdir(parents=True, exist_ok=True)
    if intrinsics_file:
        (root / "camera-intrinsics.txt").write_text(_k_text(frames[0].intrinsics))
    for i, f in enumerate(frames):
        stem = frames_dir / f"frame-{first_number + i:06d}"
        write_color(Path(f"{stem}.color{color_ext}"), f.color)
        write_depth_png(Path(f"{stem}.depth.png"), f.depth_m, 1000.0)
        if poses:
            Path(f"{stem}.pose.txt").write_text(_matrix_text(f.T_world_cam_gt))
    return root


def write_tum(
    root: Path,
    frames: Sequence[Frame],
    rgb_offset_s: float = 0.005,
    groundtruth: bool = True,
    camera_file: Optional[str] = "camera.txt",
) -> Path:
    """TUM RGB-D layout: rgb/, depth/, rgb.txt, depth.txt, groundtruth.txt and a camera file.

    Depth frame i is at TUM_T0_S + i/30 s, its rgb frame `rgb_offset_s` later. `camera_file` is
    "camera.txt", "intrinsics.json" or None (intrinsics then come from the folder name).
    """
    root = Path(root)
    for sub in ("rgb", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rgb_lines, depth_lines, gt_lines = ["# color images"], ["# depth maps"], ["# timestamp tx ty tz qx qy qz qw"]
    for i, f in enumerate(frames):
        t_depth, t_rgb = TUM_T0_S + i / 30.0, TUM_T0_S + i / 30.0 + rgb_offset_s
        write_color(root / f"rgb/{t_rgb:.6f}.png", f.color)
        write_depth_png(root / f"depth/{t_depth:.6f}.png", f.depth_m, 5000.0)
        rgb_lines.append(f"{t_rgb:.6f} rgb/{t_rgb:.6f}.png")
        depth_lines.append(f"{t_depth:.6f} depth/{t_depth:.6f}.png")
        gt_lines.append(f"{t_depth:.6f} " + " ".join(f"{v:.9f}" for v in pose_to_tum(f.T_world_cam_gt)))
    (root / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    if groundtruth:
        (root / "groundtruth.txt").write_text("\n".join(gt_lines) + "\n")
    intr = frames[0].intrinsics
    if camera_file == "camera.txt":
        (root / "camera.txt").write_text(f"{intr.fx} {intr.fy} {intr.cx} {intr.cy} 0 0 0 0 0\n")
    elif camera_file == "intrinsics.json":
        (root / "intrinsics.json").write_text(pinhole_json(intr))
    return root


def write_redwood(
    root: Path,
    frames: Sequence[Frame],
    log_name: Optional[str] = "trajectory.log",
    intrinsic_name: Optional[str] = "intrinsic.json",
    color_ext: str = ".png",
) -> Path:
    """Open3D / Redwood layout: color/, depth/ (mm), intrinsic json and a Redwood .log trajectory."""
    root = Path(root)
    for sub in ("color", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    log_lines = []
    for i, f in enumerate(frames):
        write_color(root / f"color/{i:06d}{color_ext}", f.color)
        write_depth_png(root / f"depth/{i:06d}.png", f.depth_m, 1000.0)
        log_lines.append(f"{i} {i} {i + 1}\n" + _matrix_text(f.T_world_cam_gt))
    if log_name:
        (root / log_name).write_text("".join(log_lines))
    if intrinsic_name:
        (root / intrinsic_name).write_text(pinhole_json(frames[0].intrinsics))
    return root
