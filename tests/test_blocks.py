"""Tests of blockseg.blocks.BlockGrid: numbering, tiling, context and chunk alignment."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from blockseg.blocks import AlignmentError, BlockGrid
from blockseg.geometry import Roi
from blockseg.volume import create_volume


def test_num_blocks_and_grid_shape():
    grid = BlockGrid(Roi((0, 0, 0), (100, 100, 100)), block_shape=(50, 50, 60), context=(10, 10, 10))
    assert grid.grid_shape == (2, 2, 2)
    assert grid.num_blocks == len(grid) == 8
    odd = BlockGrid(Roi((10, -20, 30), (70, 45, 33)), block_shape=(20, 20, 10))
    assert odd.grid_shape == (4, 3, 4)
    assert odd.num_blocks == 48


def test_non_positive_block_shape_raises():
    with pytest.raises(ValueError, match="positive"):
        BlockGrid(Roi((0, 0, 0), (10, 10, 10)), block_shape=(5, 0, 5))


def test_block_ids_are_row_major():
    total = Roi((10, -20, 30), (70, 45, 33))
    block_shape = (20, 20, 10)
    grid = BlockGrid(total, block_shape)
    for block_id in range(grid.num_blocks):
        index = tuple(int(i) for i in np.unravel_index(block_id, grid.grid_shape))  # C order = row-major
        assert grid.block_index(block_id) == index
        expected_offset = tuple(o + i * b for o, i, b in zip(total.offset, index, block_shape))
        assert grid.write_roi(block_id).offset == expected_offset
    # the last axis varies fastest
    assert grid.write_roi(1).offset == (10, -20, 40)
    assert grid.write_roi(grid.grid_shape[2]).offset == (10, 0, 30)
    with pytest.raises(IndexError):
        grid.block_index(grid.num_blocks)
    with pytest.raises(IndexError):
        grid.write_roi(-1)


def test_last_blocks_are_clipped_to_the_total_roi():
    grid = BlockGrid(Roi((0, 0, 0), (100, 100, 100)), block_shape=(50, 50, 60))
    assert grid.write_roi(7).shape == (50, 50, 40)
    assert grid.write_roi(7).end == (100, 100, 100)
    assert grid.write_roi(0).shape == (50, 50, 60)
    assert grid.write_roi(1).shape == (50, 50, 40)


def test_read_roi_is_write_roi_grown_by_context():
    context = (3, 0, 7)
    grid = BlockGrid(Roi((10, -20, 30), (70, 45, 33)), block_shape=(20, 20, 10), context=context)
    blocks = list(grid)
    assert [b.block_id for b in blocks] == list(range(grid.num_blocks))
    for block in blocks:
        write = grid.write_roi(block.block_id)
        assert block.write_roi == write
        assert block.read_roi == grid.read_roi(block.block_id)
        assert block.read_roi.offset == tuple(o - c for o, c in zip(write.offset, context))
        assert block.read_roi.end == tuple(e + c for e, c in zip(write.end, context))
    # no context: read == write
    plain = BlockGrid(Roi((0, 0, 0), (10, 10, 10)), block_shape=(5, 5, 5))
    assert all(b.read_roi == b.write_roi for b in plain)


@pytest.mark.parametrize(
    "total, block_shape",
    [
        (Roi((10, -20, 30), (70, 45, 33)), (20, 20, 10)),
        (Roi((0, 0, 0), (16, 16, 16)), (4, 8, 16)),
        (Roi((-5, 3, 0), (7, 9, 11)), (100, 100, 100)),  # one block bigger than everything
        (Roi((0, 0, 0), (9, 9, 9)), (1, 2, 4)),
    ],
)
def test_write_rois_tile_the_total_roi_exactly(total, block_shape):
    grid = BlockGrid(total, block_shape, context=(2, 2, 2))
    painted = np.zeros(total.shape, np.int32)
    for block in grid:
        write = block.write_roi
        assert not write.empty
        assert total.contains(write)
        painted[write.slices((1, 1, 1), total.offset)] += 1
    # every voxel written exactly once: no overlap, and the union is the total ROI
    assert painted.min() == 1 and painted.max() == 1
    assert sum(math.prod(b.write_roi.shape) for b in grid) == math.prod(total.shape)


def test_write_rois_are_disjoint_pairwise():
    grid = BlockGrid(Roi((0, 0, 0), (30, 25, 20)), block_shape=(10, 10, 10))
    rois = [b.write_roi for b in grid]
    for a, b in itertools.combinations(rois, 2):
        assert a.intersect(b).empty


# ---------------------------------------------------------------------------
# alignment with real zarr outputs
# ---------------------------------------------------------------------------


@pytest.fixture
def output(tmp_path):
    """4 x 20 x 19 voxels of 20 x 10 x 10 nm, chunks of 2 x 8 x 8 voxels (40 x 80 x 80 nm)."""
    roi = Roi((0, 0, 0), (80, 200, 190))
    return create_volume(tmp_path / "out.zarr" / "labels", roi, (20, 10, 10), np.uint64, (2, 8, 8))


def test_check_alignment_passes_for_whole_chunks(output):
    # z: 2 blocks of one chunk; y: 3 blocks, the last [160, 200) ends at the data end;
    # x: 2 blocks, the last [160, 190) is a partial chunk ending at the data end
    grid = BlockGrid(output.roi, block_shape=(40, 80, 160), context=(20, 30, 30))
    assert grid.grid_shape == (2, 3, 2)
    grid.check_alignment([output])
    # the alignment check is really about every block, verify independently
    assert all(output.is_write_aligned(b.write_roi) for b in grid)


@pytest.mark.parametrize("block_shape", [(40, 80, 100), (20, 80, 80), (40, 120, 80)])
def test_check_alignment_rejects_partial_chunks(output, block_shape):
    grid = BlockGrid(output.roi, block_shape=block_shape)
    with pytest.raises(AlignmentError, match="out.zarr/labels"):
        grid.check_alignment([output])
    # an AlignmentError is a ValueError, so config code may catch either
    assert issubclass(AlignmentError, ValueError)


def test_check_alignment_rejects_total_roi_off_the_chunk_grid(output):
    # starts 10 nm into a chunk along x
    shifted = BlockGrid(Roi((0, 0, 10), (80, 160, 160)), block_shape=(40, 80, 80))
    with pytest.raises(AlignmentError):
        shifted.check_alignment([output])
    # ends inside a chunk that is not the data's last one
    short = BlockGrid(Roi((0, 0, 0), (80, 160, 120)), block_shape=(40, 80, 80))
    with pytest.raises(AlignmentError):
        short.check_alignment([output])


def test_check_alignment_accepts_any_block_shape_along_an_axis_with_one_block(output):
    # x: a single block wider than the data, clipped to [0, 190): it ends at the
    # data end, so its write ROI is whole chunks although 200 nm is not 80 nm chunks
    grid = BlockGrid(output.roi, block_shape=(40, 80, 200))
    assert grid.grid_shape == (2, 3, 1)
    assert all(output.is_write_aligned(b.write_roi) for b in grid)
    grid.check_alignment([output])
    # the same block shape along an axis with several blocks is still rejected
    with pytest.raises(AlignmentError):
        BlockGrid(output.roi, block_shape=(40, 100, 200)).check_alignment([output])


def test_check_alignment_checks_every_output(output, tmp_path):
    coarse = create_volume(tmp_path / "out.zarr" / "coarse", output.roi, (20, 10, 10), np.uint8, (4, 16, 16))
    grid = BlockGrid(output.roi, block_shape=(40, 80, 80))
    grid.check_alignment([output])
    with pytest.raises(AlignmentError, match="coarse"):
        grid.check_alignment([output, coarse])
