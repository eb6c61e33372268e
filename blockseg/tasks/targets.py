"""lsds, channels, weights: training targets of the ground truth (see workers/lsds.py, channels.py, weights.py)."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from blockseg.blocks import Block
from blockseg.config import ConfigError, PipelineConfig
from blockseg.graph.base import BlockOutput
from blockseg.run_state import TARGET_STAGES, Run, chunk_shape
from blockseg.task import OutputSpec, Stage
from blockseg.volume import open_volume


def targets_block(block: Block, labels_url: str, output_url: str, target: str, params: dict) -> BlockOutput:
    """Training targets of the ground truth in one block.

    The block reads its write ROI grown by the target's context, clipped to
    the data (so a block at the volume's edge sees what the whole-volume
    computation sees there), computes, and writes the write ROI.
    """
    from workers import channels as channels_worker
    from workers import lsds as lsds_worker
    from workers import weights as weights_worker

    labels_volume = open_volume(labels_url)
    read_roi = block.read_roi.intersect(labels_volume.roi)
    labels = labels_volume.read(read_roi)
    voxel_size = labels_volume.voxel_size
    if target == "lsds":
        result = lsds_worker.local_shape_descriptors(labels, voxel_size=voxel_size, **params)
    elif target == "channels":
        result = channels_worker.instance_channels(labels, voxel_size=voxel_size, **params)
    elif target == "weights":
        result = weights_worker.unet_weights(labels, voxel_size=voxel_size, **params)
    else:
        raise ValueError(f"unknown target {target!r}")
    crop = block.write_roi.slices(voxel_size, read_roi.offset)
    channels = (slice(None),) * (result.ndim - len(crop))
    open_volume(output_url, mode="r+").write(block.write_roi, result[channels + crop].astype(np.float32))
    return BlockOutput(stats={"voxels": int(np.prod([s.stop - s.start for s in crop]))})


def _target_params(run: Run, name: str) -> dict:
    """Keyword arguments of the worker function, from the stage's config."""
    cfg = getattr(run.config.stages, name)
    if name == "lsds":
        return {"sigma": cfg.sigma, "downsample": cfg.downsample, "components": cfg.components}
    if name == "channels":
        return {"channel_set": cfg.channel_set, "contour_thickness": cfg.contour_thickness, "distance_clip": cfg.distance_clip}
    return {"bws": cfg.bws, "fds": cfg.fds, "bwf": cfg.bwf, "fbr": cfg.fbr}


def _target_context(run: Run, name: str) -> tuple[int, ...]:
    from workers import channels as channels_worker
    from workers import lsds as lsds_worker
    from workers import weights as weights_worker

    cfg = getattr(run.config.stages, name)
    voxel_size = run.voxel_size
    if name == "lsds":
        context = lsds_worker.lsd_context(cfg.sigma, voxel_size, cfg.downsample)
    elif name == "channels":
        context = channels_worker.channels_context(
            cfg.channel_set, voxel_size=voxel_size, contour_thickness=cfg.contour_thickness,
            distance_clip=cfg.distance_clip, max_object_extent=cfg.max_object_extent,
        )
    else:
        context = weights_worker.weights_context(cfg.bws, cfg.fds, voxel_size, bwf=cfg.bwf, fbr=cfg.fbr)
    # whole voxels, rounded up
    return tuple(int(-(-c // v) * v) for c, v in zip(context, voxel_size))


def _target_channels(run: Run, name: str) -> tuple[int, ...]:
    from workers import channels as channels_worker
    from workers import lsds as lsds_worker

    cfg = getattr(run.config.stages, name)
    if name == "lsds":
        count = len(cfg.components) if cfg.components else lsds_worker.num_channels(3)
        return (count,)
    if name == "channels":
        return (len(channels_worker.channel_names(cfg.channel_set)),)
    return ()


def _target_stage(name: str) -> Stage:
    def enabled(run: Run) -> bool:
        return getattr(run.config.stages, name) is not None and run.ground_truth is not None

    return Stage(
        name,
        needs=(),
        enabled=enabled,
        params=lambda run: {**_target_params(run, name), "context": _target_context(run, name)},
        outputs=lambda run: [
            OutputSpec(
                run.dataset_url(name), "float32",
                chunk_shape(run, getattr(run.config.stages, name).chunk_shape), _target_channels(run, name),
            )
        ],
        context=lambda run: _target_context(run, name),
        block_function=lambda run: functools.partial(
            targets_block,
            labels_url=run.ground_truth.url,
            output_url=run.dataset_url(name),
            target=name,
            params=_target_params(run, name),
        ),
    )


def check_targets(config: PipelineConfig, voxel_size: Sequence[int]) -> None:
    """Let the worker functions judge the target parameters once, before any block runs."""
    from workers import channels as channels_worker
    from workers import lsds as lsds_worker

    stages = config.stages
    try:
        if stages.lsds is not None:
            lsds_worker.lsd_context(stages.lsds.sigma, voxel_size, stages.lsds.downsample)
            lsds_worker._parse_components(stages.lsds.components, 3)
            step = [stages.lsds.downsample * v for v in voxel_size]
            if any(b % s for b, s in zip(config.block_shape, step)):
                raise ValueError(
                    f"block_shape {config.block_shape} nm must be a multiple of downsample x voxel size {step} nm"
                )
        if stages.channels is not None:
            channels_worker.channels_context(
                stages.channels.channel_set, voxel_size=voxel_size,
                contour_thickness=stages.channels.contour_thickness, distance_clip=stages.channels.distance_clip,
                max_object_extent=stages.channels.max_object_extent,
            )
    except ValueError as error:
        raise ConfigError(f"config error: stages: {error}") from None


STAGES = [_target_stage(name) for name in TARGET_STAGES]
