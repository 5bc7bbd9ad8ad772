"""Dirty-chunk bookkeeping: per-consumer sets, take-and-clear, chunk grid, marks from the pipeline."""
from __future__ import annotations

import threading

import numpy as np

from fusion.dirty import DirtyChunks, chunk_keys_of_blocks
from fusion.pipeline import FusionPipeline, PipelineConfig
from fusion.volume import VolumeConfig
from tests.scenes import SMALL, orbit


def test_each_consumer_takes_its_own_set():
    d = DirtyChunks()
    d.mark({(0, 0, 0), (1, 0, 0)})
    assert d.take("mesh") == {(0, 0, 0), (1, 0, 0)}
    assert d.take("mesh") == set()
    assert d.pending("semantics") == 2
    d.mark({(2, 0, 0)}, ("completion",))
    assert d.take("semantics") == {(0, 0, 0), (1, 0, 0)}
    assert d.take("completion") == {(0, 0, 0), (1, 0, 0), (2, 0, 0)}


def test_chunk_grid_groups_blocks():
    keys = np.array([[0, 0, 0], [9, 0, 0], [10, 0, 0], [-1, 0, 0]])
    # blocks of 0.16 m, chunks of 1.6 m: 10 blocks a chunk along each axis
    assert chunk_keys_of_blocks(keys, 0.16, 1.6) == {(0, 0, 0), (1, 0, 0), (-1, 0, 0)}


def test_concurrent_marks_and_takes_lose_nothing():
    d = DirtyChunks(("semantics",))
    taken = set()

    def consumer():
        for _ in range(2000):
            taken.update(d.take("semantics"))

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(2000):
        d.mark({(i, 0, 0)})
    t.join(timeout=10)
    taken.update(d.take("semantics"))
    assert taken == {(i, 0, 0) for i in range(2000)}


def test_pipeline_marks_chunks_for_every_consumer():
    pipe = FusionPipeline(PipelineConfig(volume=VolumeConfig(voxel_size_m=0.02, block_resolution=8, device="cpu"),
                                         poses="gt"))
    for f in orbit(3, SMALL):
        pipe.process(f)
    pipe.final_mesh()
    pipe.close()
    assert pipe.dirty.take("semantics") and pipe.dirty.take("completion") and pipe.dirty.take("mesh")
