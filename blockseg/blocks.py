"""A grid of blocks tiling a ROI: write ROIs, and read ROIs with context.

Examples
--------
>>> grid = BlockGrid(Roi((0, 0, 0), (100, 100, 100)), block_shape=(50, 50, 60), context=(10, 10, 10))
>>> grid.num_blocks
8
>>> grid.write_roi(7).shape   # the last block is clipped to the total ROI
(50, 50, 40)
>>> grid.read_roi(0).offset
(-10, -10, -10)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

from blockseg.geometry import Coordinate, Roi, coordinate


class AlignmentError(ValueError):
    """A block's write ROI is not made of whole chunks of an output."""


@dataclass(frozen=True)
class Block:
    """One block of a grid: its id, the ROI it writes and the ROI it reads."""

    block_id: int
    write_roi: Roi
    read_roi: Roi


class BlockGrid:
    """Write ROIs of a fixed shape tiling ``total_roi``, numbered row-major.

    Parameters
    ----------
    total_roi : Roi
        What the stage writes, in nm.
    block_shape : sequence of int
        Shape of a write ROI in nm. Blocks at the far end are clipped.
    context : sequence of int
        How far a block reads beyond its write ROI on every side, in nm.
    """

    def __init__(self, total_roi: Roi, block_shape: Sequence[int], context: Sequence[int] | None = None) -> None:
        self.total_roi = total_roi
        self.block_shape: Coordinate = coordinate(block_shape)
        self.context: Coordinate = coordinate(context) if context is not None else (0,) * total_roi.dims
        if any(b <= 0 for b in self.block_shape):
            raise ValueError(f"block shape must be positive, got {self.block_shape}")
        self.grid_shape: Coordinate = tuple(
            max(1, math.ceil(s / b)) for s, b in zip(total_roi.shape, self.block_shape)
        )

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid_shape)

    def block_index(self, block_id: int) -> Coordinate:
        """Grid position of ``block_id`` (row-major)."""
        if not 0 <= block_id < self.num_blocks:
            raise IndexError(f"block id {block_id} outside the grid of {self.num_blocks} blocks")
        index = []
        for size in reversed(self.grid_shape):
            index.append(block_id % size)
            block_id //= size
        return tuple(reversed(index))

    def write_roi(self, block_id: int) -> Roi:
        index = self.block_index(block_id)
        offset = tuple(o + i * b for o, i, b in zip(self.total_roi.offset, index, self.block_shape))
        return Roi(offset, self.block_shape).intersect(self.total_roi)

    def read_roi(self, block_id: int) -> Roi:
        return self.write_roi(block_id).grow(self.context)

    def block(self, block_id: int) -> Block:
        write_roi = self.write_roi(block_id)
        return Block(block_id, write_roi, write_roi.grow(self.context))

    def __iter__(self) -> Iterator[Block]:
        for block_id in range(self.num_blocks):
            yield self.block(block_id)

    def __len__(self) -> int:
        return self.num_blocks

    def check_alignment(self, outputs: Sequence[object]) -> None:
        """Raise :class:`AlignmentError` unless every write ROI is whole chunks of each output.

        ``outputs`` are :class:`blockseg.volume.Volume` objects. Checking the
        first block and the block shape is enough: all interior blocks are
        translates of the first, and the last ones end at the data's end.
        """
        for volume in outputs:
            chunk_nm = tuple(c * v for c, v in zip(volume.chunk_shape, volume.voxel_size))
            # along an axis with a single block, that block ends at the total
            # ROI's end, so its shape need not be whole chunks
            bad_shape = [b % c != 0 and g > 1 for b, c, g in zip(self.block_shape, chunk_nm, self.grid_shape)]
            if any(bad_shape):
                raise AlignmentError(
                    f"block_shape {list(self.block_shape)} nm is not a multiple of the chunk shape "
                    f"{list(chunk_nm)} nm of {volume.url}"
                )
            for block_id in {0, self.num_blocks - 1}:
                roi = self.write_roi(block_id)
                if not volume.is_write_aligned(roi):
                    raise AlignmentError(f"write ROI {roi} of block {block_id} is not whole chunks of {volume.url}")
