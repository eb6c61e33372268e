"""relabel: each block's fragments through its own rows of each threshold's lookup table, into a segmentation volume."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from blockseg.blocks import Block
from blockseg.graph.base import BlockOutput
from blockseg.run_state import chunk_shape
from blockseg.lut_pieces import read_range
from blockseg.task import OutputSpec, Stage, no_context
from blockseg.tasks.segments import segmenting
from blockseg.volume import open_volume
from workers.relabel import relabel


def relabel_block(
    block: Block,
    fragments_url: str,
    segmentation_urls: Sequence[str],
    lut_paths: Sequence[str],
    ids_per_block: int,
) -> BlockOutput:
    """Write each threshold's segmentation of the block, reading only its LUT rows.

    ``lut_paths`` are the LUTs' index files; the rows of the block's
    fragments lie in one piece of each LUT, which is memory-mapped.
    """
    fragments = open_volume(fragments_url).read(block.write_roi)
    low = block.block_id * ids_per_block
    for url, lut_path in zip(segmentation_urls, lut_paths):
        lut_ids, lut_segments = read_range(Path(lut_path), low, low + ids_per_block)
        segmentation = relabel(fragments, lut_ids, lut_segments)
        open_volume(url, mode="r+").write(block.write_roi, segmentation)
    return BlockOutput(stats={"voxels": int(fragments.size) * len(segmentation_urls)})


STAGE = Stage(
    "relabel",
    needs=("fragments", "segments"),
    enabled=segmenting,
    params=lambda run: {**run.config.stages.relabel.model_dump(), "thresholds": run.config.relabel_thresholds},
    outputs=lambda run: [
        OutputSpec(run.segmentation_url(t), "uint64", chunk_shape(run, run.config.stages.relabel.chunk_shape))
        for t in run.config.relabel_thresholds
    ],
    context=no_context,
    block_function=lambda run: functools.partial(
        relabel_block,
        fragments_url=run.fragments_url,
        segmentation_urls=[run.segmentation_url(t) for t in run.config.relabel_thresholds],
        lut_paths=[str(run.store.lut_path(t)) for t in run.config.relabel_thresholds],
        ids_per_block=run.ids_per_block,
    ),
)
