"""Block functions that misbehave on purpose, importable by dask workers."""

from __future__ import annotations

import time

from blockseg.graph.base import BlockOutput


def hang_on(block, hung_block: int, seconds: float = 3600) -> BlockOutput:
    """Sleep (as good as forever) on one block, return at once on the others."""
    if block.block_id == hung_block:
        time.sleep(seconds)
    return BlockOutput(stats={"voxels": 1})
