"""Owns the hashed TSDF volume: Open3D VoxelBlockGrid (tsdf, weight, colour), integration and block bookkeeping.

Runs on CUDA when Open3D sees a GPU (device "auto"), else on the CPU. Each integration returns the
block coordinates it touched, the hook for dirty chunks and incremental meshing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import open3d as o3d
import open3d.core as o3c

from fusion.errors import UserError
from fusion.frame import Frame
from fusion.integrate import integrate_blocks
from fusion.raycast import BlockIndex, depth_ranges, raycast_depth

log = logging.getLogger(__name__)
o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)


#: the voxel attributes of every block, and their channels
VOXEL_ATTRS = ("tsdf", "weight", "color")
_VOXEL_CHANNELS = (1, 1, 3)
RAY_TILE_PX = 8  #: the raycaster skips empty space per tile of this many pixels an edge
RAY_GUIDE_MIN_WIDTH_PX = 160  #: renders this wide or wider start their rays from a half-resolution render
#: a room's worth of 16 cm blocks (a 5,000-frame scan of a synthetic room ends at 11,000): the hash map's start when
#: VolumeConfig.initial_blocks is None, scaled by block area for other block sizes
ROOM_BLOCKS_16CM = 12_000
MIN_START_BLOCKS = 512


@dataclass(frozen=True)
class VolumeConfig:
    voxel_size_m: float = 0.01          #: edge of one voxel
    block_resolution: int = 16          #: voxels along a block edge
    trunc_voxels: float = 5.0           #: truncation distance in voxels
    depth_min_m: float = 0.15           #: closer depth is ignored
    depth_max_m: float = 4.0            #: farther depth is ignored
    initial_blocks: int | None = None   #: hash map capacity at start (grows on demand); None: a room's worth
    max_blocks: int = 120_000           #: hard cap; beyond it only existing blocks are updated
    device: str = "auto"                #: auto | cpu | cuda
    own_kernel: bool = True             #: on the CPU integrate with fusion.integrate (False: Open3D's kernel)

    def __post_init__(self):
        r = self.block_resolution
        if r < 2 or r & (r - 1):
            raise ValueError("block_resolution must be a power of two")

    @property
    def block_size_m(self) -> float:
        return self.voxel_size_m * self.block_resolution

    @property
    def trunc_m(self) -> float:
        return self.voxel_size_m * self.trunc_voxels

    @property
    def start_blocks(self) -> int:
        """The hash map's capacity at start. Open3D holds the GIL while it grows a hash map, and a grow copies
        every block (4,000 to 8,000 blocks at 1 cm took a live frame 3.4-3.8 s on 2 cores, stalling the nets and
        the GUI with it): by default the map starts at a room's worth (about 0.9 GB at 1 cm), allocated once
        before the scan starts."""
        if self.initial_blocks is not None:
            return self.initial_blocks
        room = ROOM_BLOCKS_16CM * (0.16 / self.block_size_m) ** 2
        return int(min(max(MIN_START_BLOCKS, room), self.max_blocks))


def resolve_device(name: str) -> o3c.Device:
    """Open3D device for "auto" | "cpu" | "cuda"; refuses "cuda" when Open3D sees no GPU."""
    has_cuda = o3c.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise UserError("--device cuda: Open3D sees no CUDA device on this machine")
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {name!r} (auto, cpu or cuda)")
    return o3c.Device("CUDA:0" if name != "cpu" and has_cuda else "CPU:0")


def integration_matrix(intrinsics) -> np.ndarray:
    """K to hand Open3D's integrate: it truncates projected pixel coordinates instead of rounding them,
    so the principal point moves half a pixel to make voxels read their nearest pixel (measured by
    bench/accuracy_bench.py: it removes most of the fused surface's sub-voxel error)."""
    K = intrinsics.matrix()
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


class TsdfVolume:
    """TSDF + weight + colour voxel blocks in an Open3D VoxelBlockGrid.

    Thread: owned by the fusion thread; other threads read only snapshots it hands out.
    """

    def __init__(self, config: VolumeConfig = VolumeConfig()):
        self.config = config
        self.device = resolve_device(config.device)
        self.on_cpu = self.device.get_type() == o3c.Device.DeviceType.CPU
        self.frames_integrated = 0
        self.clear()

    def clear(self) -> None:
        """Drop every block (a fresh, empty grid); the count of frames integrated stays."""
        cfg = self.config
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=VOXEL_ATTRS,
            attr_dtypes=(o3c.float32,) * len(VOXEL_ATTRS),
            attr_channels=_VOXEL_CHANNELS,
            voxel_size=cfg.voxel_size_m,
            block_resolution=cfg.block_resolution,
            block_count=cfg.start_blocks,
            device=self.device,
        )
        self.capacity_warned = False
        self.last_blocks = np.zeros((0, 3), np.int32)  #: blocks the latest integration touched
        self.index = BlockIndex()
        self._index_capacity = -1

    def adopt(self, other: "TsdfVolume") -> "TsdfVolume":
        """Take `other`'s blocks (a map rebuilt elsewhere): everyone holding this volume sees the new map;
        the count of frames integrated stays. `other` gets this volume's old grid and is returned, for
        reuse once `empty`: its memory is allocated already."""
        mine = (self.grid, self.index, self._index_capacity, self.last_blocks, self.capacity_warned)
        self.grid, self.index, self._index_capacity = other.grid, other.index, other._index_capacity
        self.last_blocks, self.capacity_warned = other.last_blocks, other.capacity_warned
        other.grid, other.index, other._index_capacity, other.last_blocks, other.capacity_warned = mine
        return other

    @property
    def reusable(self) -> bool:
        """Whether `empty` keeps the grid's memory (on the CPU with our kernel, which zeroes the blocks it
        allocates; Open3D's kernel expects fresh blocks to be zero)."""
        return self.on_cpu and self.config.own_kernel

    def empty(self) -> None:
        """Drop every block. A `reusable` volume keeps its hash map and buffers: a new grid would be allocated
        and its memory first touched while Open3D holds the GIL (4 s for 15,000 blocks at 1 cm here: every
        thread of the app stalls); otherwise it is `clear`ed."""
        if not self.reusable:
            self.clear()
            return
        hashmap = self.grid.hashmap()
        if hashmap.size():
            hashmap.erase(hashmap.key_tensor()[hashmap.active_buf_indices().to(o3c.int64)])
        self.capacity_warned = False
        self.last_blocks = np.zeros((0, 3), np.int32)
        self.index = BlockIndex()
        self._index_capacity = -1

    # --- integration -------------------------------------------------------------------------
    def _images(self, frame: Frame):
        depth = np.where(frame.depth_m >= self.config.depth_min_m, frame.depth_m, 0).astype(np.float32)
        d = o3d.t.geometry.Image(o3c.Tensor(depth, device=self.device))
        # Open3D scales float colour by 255 when it stores it: hand it [0, 1] to store 0..255
        c = o3d.t.geometry.Image(o3c.Tensor(frame.color.astype(np.float32) / 255.0, device=self.device))
        return d, c

    def integrate(self, frame: Frame, T_world_cam: np.ndarray) -> np.ndarray:
        """Fuse `frame` seen from `T_world_cam`; return the touched block coordinates (N,3) int32."""
        cfg = self.config
        depth, color = self._images(frame)
        K = o3c.Tensor(integration_matrix(frame.intrinsics), o3c.float64)
        extrinsic = o3c.Tensor(np.linalg.inv(T_world_cam), o3c.float64)
        blocks = self.grid.compute_unique_block_coordinates(
            depth, K, extrinsic, 1.0, cfg.depth_max_m, trunc_voxel_multiplier=float(cfg.trunc_voxels)
        )
        blocks = self._limit_to_capacity(blocks)
        if blocks.shape[0] == 0:
            return np.zeros((0, 3), np.int32)
        rows = None
        if self.on_cpu and cfg.own_kernel:
            rows = self._integrate_cpu(blocks, frame, depth, T_world_cam)
        else:
            self.grid.integrate(blocks, depth, color, K, K, extrinsic, 1.0, cfg.depth_max_m,
                                trunc_voxel_multiplier=float(cfg.trunc_voxels))
        self.frames_integrated += 1
        self.last_blocks = blocks.cpu().numpy().astype(np.int32)
        self._update_index(rows)
        return self.last_blocks

    def _integrate_cpu(self, blocks: o3c.Tensor, frame: Frame, depth, T_world_cam: np.ndarray) -> np.ndarray:
        """Allocate `blocks` and fuse the frame into them with our kernel (fusion.integrate); returns their
        buffer rows."""
        cfg = self.config
        hashmap = self.grid.hashmap()
        buf, found = hashmap.find(blocks)
        buf, new = buf.numpy().astype(np.int64), ~found.numpy()
        if new.any():  # Open3D grows its map when size + the count handed in passes capacity: hand it only new blocks
            capacity, t0 = hashmap.capacity(), time.perf_counter()
            buf_new, _ = hashmap.activate(blocks[o3c.Tensor(new)])
            buf[new] = buf_new.numpy()
            if hashmap.capacity() != capacity:  # a grow re-inserted every block: their rows moved
                log.info("the volume's hash map grew to hold %d blocks in %.1f s (the scan waited)", hashmap.capacity(),
                         time.perf_counter() - t0)
                buf = hashmap.find(blocks)[0].numpy().astype(np.int64)
        tsdf, weight, color = self.voxel_arrays()  # after activate: a grown map has new buffers
        if new.any():  # rows of blocks erased before (`empty`) keep their old values
            rows = buf[new]
            tsdf[rows], weight[rows], color[rows] = 0.0, 0.0, 0.0
        K = integration_matrix(frame.intrinsics)
        integrate_blocks(tsdf, weight, color, blocks.numpy(), buf, depth.as_tensor().numpy()[..., 0],
                         np.ascontiguousarray(frame.color), K[0, 0], K[1, 1], K[0, 2], K[1, 2],
                         np.linalg.inv(T_world_cam), cfg.voxel_size_m, cfg.trunc_m, cfg.depth_max_m)
        return buf

    def _update_index(self, rows: np.ndarray | None = None) -> None:
        """Keep the dense block index in step with the latest integration (`rows`: its blocks' buffer rows when
        known, else looked up); a grown hash map may have moved every block."""
        capacity = int(self.grid.hashmap().capacity())
        if capacity != self._index_capacity:
            keys = self.active_keys()
            self.index.rebuild(keys, self.lookup(keys))
            self._index_capacity = capacity
        else:
            self.index.update(self.last_blocks, self.lookup(self.last_blocks) if rows is None else rows)

    def _limit_to_capacity(self, blocks: o3c.Tensor) -> o3c.Tensor:
        """Drop blocks that would take the grid past max_blocks (warn once); existing ones stay."""
        hashmap = self.grid.hashmap()
        if hashmap.size() + blocks.shape[0] <= self.config.max_blocks:
            return blocks
        _, found = hashmap.find(blocks)
        n_new = blocks.shape[0] - int(found.to(o3c.int64).sum().item())
        if hashmap.size() + n_new <= self.config.max_blocks:
            return blocks
        if not self.capacity_warned:
            log.warning("volume is full (%d blocks, max_blocks=%d): only already-scanned space is "
                        "updated from now on; raise max_blocks or use larger voxels",
                        hashmap.size(), self.config.max_blocks)
            self.capacity_warned = True
        return blocks[found]

    # --- access for meshing, raycasting and snapshots ---------------------------------------
    @property
    def n_blocks(self) -> int:
        return int(self.grid.hashmap().size())

    @property
    def capacity_blocks(self) -> int:
        """Blocks the hash map holds before it grows."""
        return int(self.grid.hashmap().capacity())

    @property
    def is_full(self) -> bool:
        return self.capacity_warned

    def memory_bytes(self) -> int:
        """Bytes held by the voxel buffers (capacity, not just active blocks)."""
        return sum(self.grid.attribute(n).num_elements() * 4 for n in VOXEL_ATTRS)

    def active_keys(self) -> np.ndarray:
        """(N,3) int32 coordinates of all allocated blocks."""
        hashmap = self.grid.hashmap()
        idx = hashmap.active_buf_indices().to(o3c.int64)
        return hashmap.key_tensor()[idx].cpu().numpy().astype(np.int32)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Buffer index of each block key (N,3); -1 where the block is not allocated."""
        if len(keys) == 0:
            return np.zeros(0, np.int64)
        buf, found = self.grid.hashmap().find(o3c.Tensor(np.ascontiguousarray(keys, np.int32), device=self.device))
        buf = buf.cpu().numpy().astype(np.int64)
        buf[~found.cpu().numpy()] = -1
        return buf

    def voxel_arrays(self, buf_indices: np.ndarray | None = None):
        """(tsdf, weight, color) as numpy arrays shaped (B, r, r, r[, 3]) indexed [b, z, y, x].

        On the CPU with buf_indices None these are zero-copy views of the whole buffer (re-fetch after
        every integrate: the hash map may move them). Otherwise the rows buf_indices are copied.
        """
        r = self.config.block_resolution
        out = []
        for name, ch in zip(VOXEL_ATTRS, _VOXEL_CHANNELS):
            t = self.grid.attribute(name)
            if self.on_cpu:  # numpy's row gather is about 20x faster than tensor indexing on the CPU
                a = t.numpy()
                a = a if buf_indices is None else np.take(a, np.asarray(buf_indices, np.int64), axis=0)
            else:
                if buf_indices is not None:
                    t = t[o3c.Tensor(np.asarray(buf_indices, np.int64), device=self.device)]
                a = t.cpu().numpy()
            out.append(a.reshape((a.shape[0], r, r, r) if ch == 1 else (a.shape[0], r, r, r, ch)))
        return tuple(out)

    def host_voxels(self, buf_indices: np.ndarray):
        """((tsdf, weight, color), rows) for a host kernel that reads the blocks buf_indices (-1: none):
        on the CPU zero-copy views of the whole buffer and buf_indices itself; on a GPU only the blocks
        used, copied to the host, and buf_indices renumbered into them (same shape, -1 kept)."""
        if self.on_cpu:
            return self.voxel_arrays(), buf_indices
        used = buf_indices >= 0
        unique, inverse = np.unique(buf_indices[used], return_inverse=True)
        rows = np.full_like(buf_indices, -1)
        rows[used] = inverse
        return self.voxel_arrays(unique), rows

    def set_voxel_rows(self, buf_indices: np.ndarray, arrays: dict) -> None:
        """Write voxel rows: arrays maps "tsdf"/"weight"/"color" to (N, ...) values for buf_indices (N,)."""
        idx = np.asarray(buf_indices, np.int64)
        for name, a in arrays.items():
            t = self.grid.attribute(name)  # fetched per call: growing the hash map moves the buffers
            a = np.ascontiguousarray(a, np.float32).reshape(len(idx), *t.shape[1:])
            if self.on_cpu:
                t.numpy()[idx] = a  # a view of the buffer; about 50x faster than tensor indexing
            else:
                t[o3c.Tensor(idx, device=self.device)] = o3c.Tensor(a, device=self.device)

    def render_depth(self, T_world_cam: np.ndarray, intrinsics, weight_min: float = 1.0) -> np.ndarray:
        """Depth (H,W) float32 metres of the model seen from T_world_cam (trilinear, sub-voxel accurate).

        Rays skip the space where no block lies; at RAY_GUIDE_MIN_WIDTH_PX and wider a render at half
        the resolution first tells each ray where to start."""
        T = np.asarray(T_world_cam, np.float64)
        guide = np.zeros((0, 0), np.float32)
        if intrinsics.width >= RAY_GUIDE_MIN_WIDTH_PX:
            guide = self.render_depth(T, intrinsics.scaled(0.5), weight_min)
        return self._raycast(T, intrinsics, weight_min, guide)

    def _raycast(self, T: np.ndarray, i, weight_min: float, guide: np.ndarray) -> np.ndarray:
        cfg = self.config
        tsdf, weight, _ = self.voxel_arrays()
        shift = int(cfg.block_resolution).bit_length() - 1
        lo, hi = depth_ranges(self.index.keys, cfg.block_size_m, 2 * cfg.voxel_size_m, np.linalg.inv(T),
                              i.fx, i.fy, i.cx, i.cy, i.width, i.height, RAY_TILE_PX, cfg.depth_min_m,
                              cfg.depth_max_m)
        return raycast_depth(tsdf, weight, self.index.table, self.index.origin.astype(np.float64), shift,
                             cfg.voxel_size_m, cfg.trunc_m, weight_min, T,
                             i.fx, i.fy, i.cx, i.cy, i.width, i.height, cfg.depth_min_m, cfg.depth_max_m,
                             lo, hi, RAY_TILE_PX, guide)
