"""segments: connected components of the RAG edges at each threshold, stored as one lookup table per threshold."""

from __future__ import annotations

import logging

import numpy as np

from blockseg.run_state import Run
from blockseg.segments import connected_component_luts
from blockseg.task import Stage, no_context, no_outputs

log = logging.getLogger("blockseg")


def segmenting(run: Run) -> bool:
    """The segmentation stages need affinities (or boundaries, embeddings, channels)."""
    return run.segmenting


def _segments_step(run: Run) -> None:
    nodes = run.store.read_nodes()
    edges = run.store.read_edges()
    thresholds = run.config.stages.segments.thresholds
    for threshold, fragment_ids, segment_ids in connected_component_luts(
        nodes.ids, edges.u, edges.v, edges.scores, thresholds
    ):
        run.store.write_lut(threshold, fragment_ids, segment_ids)
        log.info("segments: threshold %r: %d fragments -> %d segments", threshold, len(fragment_ids), len(np.unique(segment_ids)))


STAGE = Stage(
    "segments",
    needs=("fragments", "agglomerate"),
    enabled=segmenting,
    params=lambda run: run.config.stages.segments.model_dump(),
    outputs=no_outputs,
    context=no_context,
    block_function=None,
    global_step=_segments_step,
)
