"""The one place the built-in stages are registered, in the order they run.

This module imports the task modules; no task module imports it (so there is
no import cycle). To add a built-in stage: write its task module under
``blockseg/tasks/`` and add it to ``_BUILT_IN`` below. Users' tasks join a
run's stages after the built-in ones (:func:`stages_of`).
"""

from __future__ import annotations

from blockseg.task import Stage
from blockseg.tasks import (
    agglomerate, check, downsample, embeddings, evaluate, fragments, instances, predict, relabel, segments, stitch,
    targets,
)

_BUILT_IN: list[Stage] = [
    predict.STAGE,
    *targets.STAGES,  # lsds, channels, weights
    embeddings.EMBEDDINGS_TO_AFFINITIES,
    embeddings.PCA_PREVIEW,
    check.STAGE,
    fragments.STAGE,
    agglomerate.STAGE,
    instances.MWS,
    instances.CHANNEL_INSTANCES,
    stitch.STAGE,
    segments.STAGE,
    relabel.STAGE,
    evaluate.STAGE,
    downsample.STAGE,
]

STAGES: dict[str, Stage] = {stage.name: stage for stage in _BUILT_IN}
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)


def stages_of(run) -> dict[str, Stage]:
    """The stages a run can run, in order: the built-in ones, then the users' tasks (each after those it reads)."""
    return {**STAGES, **{task.name: task for task in run.user_tasks}}
