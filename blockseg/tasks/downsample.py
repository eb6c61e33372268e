"""downsample: OME-Zarr pyramids of the inputs and outputs (how levels are laid out: blockseg/pyramid.py)."""

from __future__ import annotations

import functools

import numpy as np

from blockseg.config import ConfigError
from blockseg.pyramid import create_pyramids, downsample_block, level_factors, pyramid_sources
from blockseg.run_state import Run, input_identity
from blockseg.task import OutputSpec, Stage, no_context
from blockseg.volume import open_volume


def _block_function(run: Run):
    factors = level_factors(run)
    levels = len(factors) + 1
    sources = [
        (source.source_url, [source.level_url(k) for k in range(levels)], source.method) for source in pyramid_sources(run)
    ]
    return functools.partial(
        downsample_block,
        sources=sources,
        total_offset=run.total_roi.offset,
        voxel_size=run.voxel_size,
        factors=factors,
    )


def _outputs(run: Run) -> list[OutputSpec]:
    """Level 0 of each pyramid: the arrays the ledger checks for the stage's token and chunk alignment.

    The coarser levels are not listed: their voxel size need not divide the
    run's ROI offset, which the generic alignment check asks of an output.
    The specs only name the arrays (``create_pyramids`` makes them, with the
    source's dtype), so they can be listed before the sources exist.
    """
    return [OutputSpec(source.level_url(0), "", run.block_voxels) for source in pyramid_sources(run)]


def _params(run: Run) -> dict:
    return {
        **run.config.stages.downsample.model_dump(),
        "factors": [list(f) for f in level_factors(run)],
        "sources": [vars(source) for source in pyramid_sources(run)],
        # inputs are not tracked by an upstream stage's token
        "inputs": {
            "raw": input_identity(run.raw),
            "affinities": input_identity(run.input_affinities),
            "ground_truth": input_identity(run.ground_truth),
        },
    }


def _prepare(run: Run) -> None:
    """Refuse what cannot be downsampled before a level is created (open_run checked the config)."""
    for source in pyramid_sources(run):
        volume = open_volume(source.source_url)
        kind = volume.dtype
        if source.method == "mode" and not np.issubdtype(kind, np.integer):
            raise ConfigError(f"config error: stages.downsample: {source.source_url} has dtype {kind}; labels must be integers")


STAGE = Stage(
    "downsample",
    # relabel is current only while the pieces it read are: that covers them too
    needs=("relabel",),
    enabled=lambda run: run.config.stages.downsample is not None and run.segmenting,
    params=_params,
    outputs=_outputs,
    context=no_context,
    block_function=_block_function,
    prepare=_prepare,
    create_outputs=create_pyramids,
)
