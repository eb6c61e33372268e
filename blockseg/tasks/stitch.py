"""stitch: RAG edges between the pieces of neighbouring blocks, scored 1 - IoU of the two blocks' segmentations near their face."""

from __future__ import annotations

import functools

from blockseg import stitch
from blockseg.run_state import Run
from blockseg.task import Stage, no_outputs
from blockseg.tasks.instances import instance_context, whole_voxels


def _stitch_band(run: Run) -> tuple[int, ...]:
    """How far from a block face the stitch stage compares the two blocks' segmentations.

    Default half the context: a block's segmentation is least reliable near
    the edge of its read ROI (it did not see what lies beyond), so comparing
    only the half next to the face, where both blocks saw at least half the
    context on either side, follows the whole-volume result more closely
    (on the demo affinities: VOI 0.13 -> 0.05 from the whole-volume mutex
    watershed with a 320 nm context).
    """
    context = instance_context(run)
    configured = getattr(run.config.stages, run.fragment_stage).stitch_band
    if configured is not None:
        return tuple(min(b, c) for b, c in zip(whole_voxels(run, configured), context))
    return tuple(max(v, c // 2 // v * v) for c, v in zip(context, run.voxel_size))


STAGE = Stage(
    "stitch",
    needs=(),
    enabled=lambda run: run.fragment_stage != "fragments" and run.segmenting,
    params=lambda run: {"source": run.fragment_stage, "context": instance_context(run), "band": _stitch_band(run)},
    outputs=no_outputs,
    context=instance_context,
    block_function=lambda run: functools.partial(
        stitch.stitch_block,
        grid=run.grid(instance_context(run)),
        halos_url=run.halos_url,
        ids_per_block=run.ids_per_block,
        band=_stitch_band(run),
    ),
)
