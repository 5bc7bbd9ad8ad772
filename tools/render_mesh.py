"""Owns mesh previews: render a PLY to a PNG (vertex colours, headlight shading) with Open3D's RaycastingScene.

Usage: python tools/render_mesh.py MESH.ply OUT.png [--labels] [--size 960x720]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import open3d as o3d
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fusion.classes import palette_lut  # noqa: E402
from storage.plyio import read_labeled_ply  # noqa: E402


def view_from_bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eye, centre, up for a three-quarter view that frames the points."""
    lo, hi = np.percentile(points, 2, axis=0), np.percentile(points, 98, axis=0)
    centre = (lo + hi) / 2
    extent = np.linalg.norm(hi - lo)
    _, _, vt = np.linalg.svd(points[:: max(1, len(points) // 20000)] - centre, full_matrices=False)
    up = vt[2] if abs(vt[2][1]) > 0.3 else np.array([0.0, -1.0, 0.0])
    eye = centre + extent * (0.9 * np.cross(up, vt[0]) + 0.5 * up - 0.2 * vt[0])
    return eye, centre, up


def view_from_pose(T_world_cam: np.ndarray, back_m: float = 0.8) -> tuple:
    """Eye, centre, up looking where the camera looked, from `back_m` behind it."""
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    return t - back_m * R[:, 2], t + 2.0 * R[:, 2], R[:, 1]


def render(mesh: dict, size=(960, 720), by_label=False, view=None) -> np.ndarray:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh["xyz_m"]), o3d.core.Tensor(mesh["faces"].astype(np.uint32)))
    eye, centre, up = view if view is not None else view_from_bounds(mesh["xyz_m"])
    rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
        fov_deg=60, center=centre.tolist(), eye=eye.tolist(), up=up.tolist(), width_px=size[0], height_px=size[1])
    hit = scene.cast_rays(rays)
    prim = hit["primitive_ids"].numpy()
    valid = prim != o3d.t.geometry.RaycastingScene.INVALID_ID
    colors = palette_lut()[np.minimum(mesh["labels"], 40)] if by_label else mesh["rgb"]
    uv = hit["primitive_uvs"].numpy()
    tri = mesh["faces"][np.where(valid, prim, 0)]
    w = np.stack([1 - uv[..., 0] - uv[..., 1], uv[..., 0], uv[..., 1]], -1)
    rgb = np.sum(colors[tri].astype(np.float32) * w[..., None], -2)
    normal = hit["primitive_normals"].numpy()
    view = rays.numpy()[..., 3:]
    view /= np.linalg.norm(view, axis=-1, keepdims=True)
    shade = 0.35 + 0.65 * np.abs(np.sum(normal * view, -1))
    img = np.where(valid[..., None], rgb * shade[..., None], 255)
    return img.clip(0, 255).astype(np.uint8)


def main() -> int:
    p = argparse.ArgumentParser(description="Render a mesh PLY to PNG.")
    p.add_argument("mesh", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--labels", action="store_true", help="colour by label instead of RGB")
    p.add_argument("--size", default="960x720")
    p.add_argument("--trajectory", type=Path, help="TUM trajectory: view from its middle pose")
    a = p.parse_args()
    w, h = (int(x) for x in a.size.split("x"))
    view = None
    if a.trajectory:
        from fusion.trajectory import read_tum

        poses = read_tum(a.trajectory)[1]
        view = view_from_pose(poses[len(poses) // 2])
    Image.fromarray(render(read_labeled_ply(a.mesh), (w, h), a.labels, view)).save(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
