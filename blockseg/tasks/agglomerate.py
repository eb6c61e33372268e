"""agglomerate: RAG edges inside each block, scored by waterz's hierarchical agglomeration; each edge by the block owning its smaller id."""

from __future__ import annotations

import functools
import uuid

import numpy as np

from blockseg.blocks import Block
from blockseg.graph.base import BlockOutput, Edges
from blockseg.run_state import Run
from blockseg.task import Stage, no_outputs
from blockseg.tasks.fragments import _masked_out, classic
from blockseg.volume import open_volume
from workers import agglomerate as agglomerate_worker


def agglomerate_block(
    block: Block,
    source_url: str,
    source_kind: str,
    mask_url: str | None,
    fragments_url: str,
    ids_per_block: int,
    scoring: str,
    discretize_queue: int,
    cache_scope: str = "",
) -> BlockOutput:
    """Merge scores of the RAG edges this block owns (``u`` is one of its fragments).

    A block wholly outside the mask has no fragments, so it owns no edge and
    reads nothing. Fragments are 0 outside the mask, so no edge crosses it.
    With a ``cache_scope`` (one per stage run) decoded chunks of the
    affinities and fragments are kept for the worker's next blocks.
    """
    from blockseg import chunk_cache
    from blockseg.sources import read_affinities

    if cache_scope:
        chunk_cache.use(cache_scope)

    source = open_volume(source_url)
    voxel_size = source.voxel_size
    voxels = int(np.prod(block.write_roi.shape) // int(np.prod(voxel_size)))
    if mask_url is not None and _masked_out(mask_url, block, voxel_size)[0]:
        empty = np.zeros(0, np.uint64)
        return BlockOutput(edges=Edges(empty, empty, np.zeros(0, np.float32)), stats={"voxels": voxels, "edges": 0})
    affs = read_affinities(source, source_kind, block.read_roi, bool(cache_scope))
    fragments = open_volume(fragments_url).read(block.read_roi, cached=bool(cache_scope))
    u, v, scores = agglomerate_worker.agglomerate_block(affs, fragments, scoring=scoring, discretize_queue=discretize_queue)
    # Each edge is written once: by the home block of its smaller endpoint.
    own = (u // np.uint64(ids_per_block)) == np.uint64(block.block_id)
    stats = {"voxels": voxels, "edges": int(own.sum())}
    return BlockOutput(edges=Edges(u[own], v[own], scores[own].astype(np.float32)), stats=stats)


def _agglomerate_context(run: Run) -> tuple[int, ...]:
    cfg = run.config.stages.agglomerate
    if cfg.context is not None:
        return tuple(cfg.context)
    return tuple(8 * v for v in run.voxel_size)


STAGE = Stage(
    "agglomerate",
    needs=("fragments",),
    enabled=classic,
    params=lambda run: {**run.config.stages.agglomerate.model_dump(), "context": _agglomerate_context(run)},
    outputs=no_outputs,
    context=_agglomerate_context,
    block_function=lambda run: functools.partial(
        agglomerate_block,
        **run.source_arguments(),
        scoring=run.config.stages.agglomerate.scoring,
        discretize_queue=run.config.stages.agglomerate.discretize_queue,
        # a new scope per stage run: fragments rewritten by a restarted
        # fragments stage are never served from an older agglomerate's cache
        cache_scope=uuid.uuid4().hex,
    ),
)
