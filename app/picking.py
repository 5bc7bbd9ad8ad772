"""Owns surface picking in the viewport: read back a window of the depth buffer and turn its pixels
into world points. Call on the GUI thread; it makes the widget's GL context current."""
from __future__ import annotations

import numpy as np
from OpenGL import GL


def read_surface(widget, camera, px: int, py: int, r: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """World points of the drawn surface in the (2r+1)^2 pixel square around (px, py) (from the top-left,
    device pixels) and each one's squared pixel distance to the centre; empty where nothing is drawn."""
    x0, y0 = max(px - r, 0), max(h - 1 - py - r, 0)
    x1, y1 = min(px + r + 1, w), min(h - py + r, h)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 3)), np.zeros(0)
    widget.makeCurrent()
    try:
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, widget.defaultFramebufferObject())
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
        raw = GL.glReadPixels(x0, y0, x1 - x0, y1 - y0, GL.GL_DEPTH_COMPONENT, GL.GL_FLOAT)
    finally:
        widget.doneCurrent()
    depth = np.asarray(raw, np.float32).reshape(y1 - y0, x1 - x0) if isinstance(raw, np.ndarray) else \
        np.frombuffer(raw, np.float32).reshape(y1 - y0, x1 - x0)
    rows, cols = np.nonzero(depth < 1.0)
    if not len(rows):
        return np.zeros((0, 3)), np.zeros(0)
    xs, ys_bottom = x0 + cols, y0 + rows
    ndc = np.stack([2 * (xs + 0.5) / w - 1, 2 * (ys_bottom + 0.5) / h - 1,
                    2 * depth[rows, cols].astype(np.float64) - 1, np.ones(len(xs))], 1)
    inv = np.linalg.inv(camera.projection(w / max(h, 1)).astype(np.float64) @ camera.view())
    p = ndc @ inv.T
    points = p[:, :3] / p[:, 3:4]
    dist2 = (xs - px) ** 2 + ((h - 1 - ys_bottom) - py) ** 2
    return points, dist2.astype(np.float64)
