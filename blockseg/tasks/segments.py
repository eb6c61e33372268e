"""segments: connected components of the RAG edges at each threshold, computed on the cluster and stored as LUT pieces by home block."""

from __future__ import annotations

import logging

from blockseg.distributed_segments import distributed_luts
from blockseg.run_state import Run
from blockseg.task import Stage, no_context, no_outputs

log = logging.getLogger("blockseg")

# the built-in stages that write RAG nodes or edges; users' tasks may write them too
_GRAPH_STAGES = ("fragments", "agglomerate", "mws", "channel_instances", "stitch")


def segmenting(run: Run) -> bool:
    """The segmentation stages need affinities (or boundaries, embeddings, channels)."""
    return run.segmenting


def graph_stages(run: Run) -> list[str]:
    """The stages whose blocks may have written RAG nodes or edges (those with results in the store)."""
    names = [*_GRAPH_STAGES, *(task.name for task in run.user_tasks)]
    return [name for name in names if run.store.stage_state(name) is not None]


def _segments_step(run: Run) -> None:
    # Workers read the blocks' rows and write the LUT pieces; the driver holds futures and counts.
    thresholds = run.config.stages.segments.thresholds
    counts = distributed_luts(
        run.client, run.store, graph_stages(run), thresholds, run.grid().num_blocks, run.ids_per_block
    )
    log.info("segments: %s", describe_counts(counts))


def describe_counts(counts: dict[float, tuple[int, int]]) -> str:
    """One line for every threshold's ``(fragments, segments)``, e.g. ``120 fragments -> segments at 0.1: 40, 0.5: 12``."""
    fragments = {n for n, _ in counts.values()}
    per_threshold = ", ".join(
        f"{threshold:g}: {segments}" + ("" if len(fragments) == 1 else f" (of {n})")
        for threshold, (n, segments) in counts.items()
    )
    head = f"{fragments.pop()} fragments -> " if len(fragments) == 1 else "fragments -> "
    return f"{head}segments at {per_threshold}"


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
