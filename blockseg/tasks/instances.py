"""mws, channel_instances: pieces per block (mutex watershed of affinities or embeddings; BiaPy channels), in place of fragments + agglomerate.

Each block writes its write ROI's pieces with global ids, and its read ROI's
segmentation into a halo slot that the stitch stage compares across faces.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np

from blockseg.blocks import Block, BlockGrid
from blockseg.config import ConfigError, PipelineConfig
from blockseg.graph.base import BlockOutput, Nodes
from blockseg.run_state import InputError, Run, chunk_shape
from blockseg.task import OutputSpec, Stage
from blockseg.sources import as_float
from blockseg.volume import Volume, open_volume
from workers import fragments as fragments_worker


def _instances_block(
    block: Block,
    segment: Callable[[np.ndarray], np.ndarray],
    input_url: str,
    fragments_url: str,
    halos_url: str,
    grid: BlockGrid,
    ids_per_block: int,
) -> BlockOutput:
    """Segment the read ROI, keep the write ROI as global fragments and the rest as the block's halo.

    The read ROI is clipped to the data (not padded), so a block at the
    volume's edge segments what the whole-volume computation sees there.
    """
    from blockseg.stitch import HaloLayout, global_ids, halo_labels

    volume = open_volume(input_url)
    voxel_size = volume.voxel_size
    read_roi = block.read_roi.intersect(volume.roi)
    labels = segment(volume.read(read_roi))
    crop = block.write_roi.slices(voxel_size, read_roi.offset)
    local, inner = halo_labels(labels, crop)
    fragments = global_ids(inner, block.block_id, ids_per_block)
    open_volume(fragments_url, mode="r+").write(block.write_roi, fragments)
    # the whole slot (one chunk) is written, so a rerun replaces all of it
    layout = HaloLayout.of(grid)
    slot_roi = layout.slot(grid.block_index(block.block_id))
    slot = np.zeros(slot_roi.to_voxels(voxel_size)[1], np.uint32)
    slot[read_roi.slices(voxel_size, block.read_roi.offset)] = local
    open_volume(halos_url, mode="r+").write(slot_roi, slot)
    ids, centers, sizes = fragments_worker.fragment_nodes(fragments, voxel_size, block.write_roi.offset)
    return BlockOutput(nodes=Nodes(ids, centers, sizes), stats={"voxels": int(fragments.size), "fragments": int(len(ids))})


def _mutex_watershed(affs: np.ndarray, offsets, bias, attractive, strides, randomize_strides, seed) -> np.ndarray:
    from workers import mutex

    return mutex.mutex_watershed(
        as_float(affs), offsets, bias=bias, attractive=attractive, strides=strides,
        randomize_strides=randomize_strides, seed=seed,
    )


def _embedding_mutex_watershed(
    embeddings: np.ndarray, offsets, distance, delta, bias, strides, randomize_strides, seed
) -> np.ndarray:
    import functools

    from workers import embeddings as embeddings_worker

    weight = functools.partial(embeddings_worker.push_dissimilarity, delta=delta) if delta is not None else None
    return embeddings_worker.segment_embeddings_mws(
        embeddings.astype(np.float32, copy=False), offsets, distance, bias=bias, strides=strides,
        randomize_strides=randomize_strides, seed=seed, weight_function=weight,
    )


def mws_block(
    block: Block,
    affinities_url: str,
    distance: str | None,
    delta: float | None,
    fragments_url: str,
    halos_url: str,
    grid: BlockGrid,
    ids_per_block: int,
    offsets: Sequence[Sequence[int]],
    bias: float | Sequence[float],
    attractive: int | None,
    strides: Sequence[int] | None,
    randomize_strides: bool,
    seed: int,
) -> BlockOutput:
    """Mutex watershed of the block's read ROI; its write ROI becomes fragments, the rest its halo.

    With ``distance`` the input is embeddings, segmented on their distances
    (``affinities_url`` then names the embeddings).
    """
    import functools

    common = dict(strides=list(strides) if strides else None, randomize_strides=randomize_strides, seed=seed)
    if distance is not None:
        segment = functools.partial(
            _embedding_mutex_watershed, offsets=[list(o) for o in offsets], distance=distance, delta=delta, bias=bias,
            **common,
        )
    else:
        segment = functools.partial(
            _mutex_watershed, offsets=[list(o) for o in offsets], bias=bias, attractive=attractive, **common
        )
    return _instances_block(block, segment, affinities_url, fragments_url, halos_url, grid, ids_per_block)


def _segment_channels(channels: np.ndarray, channel_set: str, parameters: dict, voxel_size) -> np.ndarray:
    from workers import channel_instances

    # D / Dv2 are distances, not probabilities: only uint8 storage is rescaled
    return channel_instances.segment_channels(
        as_float(channels), channel_set, voxel_size=voxel_size, **parameters
    )


def channel_instances_block(
    block: Block,
    channels_url: str,
    fragments_url: str,
    halos_url: str,
    grid: BlockGrid,
    ids_per_block: int,
    channel_set: str,
    parameters: dict,
    voxel_size: Sequence[int],
) -> BlockOutput:
    """BiaPy channels of the read ROI to instances; stitched like the mutex watershed's pieces.

    ``voxel_size`` is the channels' (the driver knows it), so a block opens
    the channels volume once, in ``_instances_block``.
    """
    import functools

    segment = functools.partial(_segment_channels, channel_set=channel_set, parameters=dict(parameters), voxel_size=voxel_size)
    return _instances_block(block, segment, channels_url, fragments_url, halos_url, grid, ids_per_block)


def check_channel_input(volume: Volume, key: str, reference: Volume | None) -> None:
    """Embeddings and BiaPy channels: (c, z, y, x), float or uint8, on the reference's voxel grid."""
    if len(volume.voxel_size) != 3 or len(volume.channel_shape) != 1:
        raise InputError(
            f"{key}: {volume.url} must have axes (c, z, y, x) with a 3D voxel_size, "
            f"got shape {volume.array.shape} and voxel_size {list(volume.voxel_size)}"
        )
    if not (np.issubdtype(volume.dtype, np.floating) or volume.dtype == np.uint8):
        raise InputError(f"{key}: {volume.url} has dtype {volume.dtype}; expected float32/float64 or uint8")
    if reference is not None and volume.voxel_size != reference.voxel_size:
        raise InputError(
            f"{key}: voxel_size {list(volume.voxel_size)} nm does not match the input voxel_size "
            f"{list(reference.voxel_size)} nm"
        )


def _unit_offset(offset: Sequence[int], axis: int) -> bool:
    return abs(offset[axis]) == 1 and not any(o for i, o in enumerate(offset) if i != axis)


def mws_offsets(config: PipelineConfig) -> list[list[int]] | None:
    """The offsets of the affinities mws reads: its own, else those embeddings_to_affinities writes."""
    stages = config.stages
    if stages.mws is not None and stages.mws.offsets is not None:
        return stages.mws.offsets
    if stages.embeddings_to_affinities is not None:
        return stages.embeddings_to_affinities.offsets
    return None


def check_config(
    config: PipelineConfig,
    affinities: Volume | None,
    embeddings: Volume | None,
    channels: Volume | None,
    truth: Volume | None,
) -> None:
    """Check what the embedding, mws and channel-instance stages need, before any work."""
    stages = config.stages
    predicted = stages.predict.outputs if stages.predict is not None else {}
    has_embeddings = embeddings is not None or "embeddings" in predicted
    e2a = stages.embeddings_to_affinities
    for name in ("embeddings_to_affinities", "pca_preview"):
        if getattr(stages, name) is not None and not has_embeddings:
            raise ConfigError(f"config error: stages.{name}: needs input.embeddings (or predict outputs: embeddings)")
    if e2a is not None and (affinities is not None or "affinities" in predicted):
        raise ConfigError(
            "config error: stages.embeddings_to_affinities: the affinities would come from two places; "
            "drop input.affinities (or the predict output affinities) or this stage"
        )
    if e2a is not None and stages.mws is None and stages.channel_instances is None:
        # the fragments stage takes the first three channels as the nearest neighbours
        if len(e2a.offsets) < 3 or not all(_unit_offset(e2a.offsets[a], a) for a in range(3)):
            raise ConfigError(
                f"config error: stages.embeddings_to_affinities.offsets: the fragments stage needs the nearest "
                f"neighbours first ([-1, 0, 0], [0, -1, 0], [0, 0, -1]), got {e2a.offsets[:3]}"
            )
    mws = stages.mws
    if mws is not None and mws.distance is not None:
        # the embedding mutex watershed: distances of the embeddings, no affinities
        if not has_embeddings:
            raise ConfigError("config error: stages.mws.distance: needs input.embeddings (or predict outputs: embeddings)")
        if e2a is not None:
            raise ConfigError(
                "config error: stages.mws.distance: segments the embeddings directly; drop it or "
                "stages.embeddings_to_affinities (whose affinities would go unused)"
            )
        if mws.offsets is None:
            raise ConfigError("config error: stages.mws.offsets: required with stages.mws.distance")
        if isinstance(mws.bias, list) or mws.attractive is not None:
            raise ConfigError(
                "config error: stages.mws: with distance, bias is one value (added to the repulsive priorities) "
                "and attractive is not used (the face neighbours attract)"
            )
    elif mws is not None:
        if mws.delta is not None:
            raise ConfigError("config error: stages.mws.delta: weighs embedding distances; it needs stages.mws.distance")
        if e2a is None and affinities is None and "affinities" not in predicted:
            raise ConfigError("config error: stages.mws: needs affinities (input.affinities, predict, or embeddings_to_affinities)")
        offsets = mws_offsets(config)
        if offsets is None:
            raise ConfigError(
                "config error: stages.mws.offsets: required unless stages.embeddings_to_affinities gives them "
                "(one offset (z, y, x) per affinity channel)"
            )
        if e2a is not None and mws.offsets is not None and mws.offsets != e2a.offsets:
            raise ConfigError(
                f"config error: stages.mws.offsets {mws.offsets} differ from stages.embeddings_to_affinities.offsets "
                f"{e2a.offsets}, which make the affinities; leave them out"
            )
        count = affinities.channel_shape[0] if affinities is not None else (
            predicted["affinities"] if "affinities" in predicted else len(offsets)
        )
        if count != len(offsets):
            raise InputError(f"stages.mws.offsets: {len(offsets)} offsets for {count} affinity channels; give one per channel")
        if isinstance(mws.bias, list) and len(mws.bias) != len(offsets):
            raise ConfigError(f"config error: stages.mws.bias: {len(mws.bias)} values for {len(offsets)} offsets; give one or one per offset")
        if mws.attractive is not None and mws.attractive > len(offsets):
            raise ConfigError(f"config error: stages.mws.attractive: {mws.attractive} is more than the {len(offsets)} offsets")
    instances = stages.channel_instances
    if instances is not None:
        if channels is None and (stages.channels is None or truth is None):
            raise ConfigError(
                "config error: stages.channel_instances: needs input.channels (or the channels stage with input.ground_truth)"
            )
        if channels is None and stages.channels.channel_set != instances.channel_set:
            raise ConfigError(
                f"config error: stages.channel_instances.channel_set {instances.channel_set} differs from "
                f"stages.channels.channel_set {stages.channels.channel_set}, whose output it reads"
            )
        if instances.context is None and instances.max_object_extent is None:
            raise ConfigError(
                "config error: stages.channel_instances: give max_object_extent (nm; the context is half of it) or context"
            )
        from workers import channels as channels_worker

        expected = len(channels_worker.channel_names(instances.channel_set))
        if channels is not None and channels.channel_shape[0] != expected:
            raise InputError(
                f"input.channels: {channels.url} has {channels.channel_shape[0]} channel(s); "
                f"channel set {instances.channel_set} has {expected}"
            )
        _check_instance_parameters(instances.channel_set, instances.parameters)


def _check_instance_parameters(channel_set: str, parameters: dict) -> None:
    """Let the worker judge the parameter names and values (thresholds in [0, 1], ...) on a tiny block, once."""
    from workers import channel_instances as instances_worker
    from workers import channels as channels_worker

    count = len(channels_worker.channel_names(channel_set))
    try:
        instances_worker.segment_channels(np.zeros((count, 2, 2, 2), np.float32), channel_set, **parameters)
    except (ValueError, TypeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"config error: stages.channel_instances.parameters: {message}") from None


def whole_voxels(run: Run, context_nm: Sequence[float]) -> tuple[int, ...]:
    """A context in nm rounded up to whole voxels (halo slots and crops need voxel-aligned ROIs)."""
    return tuple(int(-(-c // v) * v) for c, v in zip(context_nm, run.voxel_size))


def offset_reach(offsets: Sequence[Sequence[int]]) -> tuple[int, ...]:
    return tuple(max(abs(o[axis]) for o in offsets) for axis in range(3))


def _mws_context(run: Run) -> tuple[int, ...]:
    cfg = run.config.stages.mws
    if cfg.context is not None:
        return whole_voxels(run, cfg.context)
    # Twice the longest offset: a voxel near the face then sees every
    # repulsive edge that constrains it, and the pieces those edges link.
    # At least 8 voxels: with nearest neighbours only, 2 voxels left the demo
    # blockwise result 0.32 VOI from the whole-volume one, 8 voxels 0.19.
    voxels = [max(8, 2 * r) for r in offset_reach(mws_offsets(run.config))]
    if cfg.strides:
        # context and block shape multiples of the strides keep the subsampled
        # edges on one grid across blocks (when the block shape allows)
        voxels = [-(-c // s) * s for c, s in zip(voxels, cfg.strides)]
    return tuple(c * v for c, v in zip(voxels, run.voxel_size))


def _channel_instances_context(run: Run) -> tuple[int, ...]:
    cfg = run.config.stages.channel_instances
    if cfg.context is not None:
        return whole_voxels(run, cfg.context)
    # a block sees half an object beyond its faces: every object that reaches
    # into it is seen up to its middle, where the markers sit
    return whole_voxels(run, [cfg.max_object_extent / 2] * 3)


def instance_context(run: Run) -> tuple[int, ...]:
    return _mws_context(run) if run.fragment_stage == "mws" else _channel_instances_context(run)


def _instance_outputs(run: Run, name: str) -> list[OutputSpec]:
    from blockseg.stitch import HaloLayout

    cfg = getattr(run.config.stages, name)
    layout = HaloLayout.of(run.grid(instance_context(run)))
    slot_voxels = tuple(r // v for r, v in zip(layout.read_shape, run.voxel_size))
    return [
        OutputSpec(run.fragments_url, "uint64", chunk_shape(run, cfg.chunk_shape)),
        OutputSpec(run.halos_url, "uint32", slot_voxels, roi=layout.roi, aligned=False),
    ]


def _mws_block_function(run: Run):
    cfg = run.config.stages.mws
    return functools.partial(
        mws_block,
        affinities_url=run.embeddings.url if run.mws_on_embeddings else run.affinities.url,
        distance=cfg.distance,
        delta=cfg.delta,
        fragments_url=run.fragments_url,
        halos_url=run.halos_url,
        grid=run.grid(_mws_context(run)),
        ids_per_block=run.ids_per_block,
        offsets=mws_offsets(run.config),
        bias=cfg.bias,
        attractive=cfg.attractive,
        strides=cfg.strides,
        randomize_strides=cfg.randomize_strides,
        seed=cfg.seed,
    )


def _channel_instances_block_function(run: Run):
    cfg = run.config.stages.channel_instances
    return functools.partial(
        channel_instances_block,
        channels_url=run.channels_source.url,
        fragments_url=run.fragments_url,
        halos_url=run.halos_url,
        grid=run.grid(_channel_instances_context(run)),
        ids_per_block=run.ids_per_block,
        channel_set=cfg.channel_set,
        parameters=cfg.parameters,
        voxel_size=tuple(run.channels_source.voxel_size),
    )


MWS = Stage(
    "mws",
    needs=(),
    enabled=lambda run: run.fragment_stage == "mws" and run.segmenting,
    params=lambda run: {
        **run.config.stages.mws.model_dump(),
        "offsets": mws_offsets(run.config),
        "ids_per_block": run.ids_per_block,
        "context": _mws_context(run),
    },
    outputs=lambda run: _instance_outputs(run, "mws"),
    context=_mws_context,
    block_function=_mws_block_function,
)


CHANNEL_INSTANCES = Stage(
    "channel_instances",
    needs=(),
    enabled=lambda run: run.fragment_stage == "channel_instances" and run.segmenting,
    params=lambda run: {
        **run.config.stages.channel_instances.model_dump(),
        "ids_per_block": run.ids_per_block,
        "context": _channel_instances_context(run),
    },
    outputs=lambda run: _instance_outputs(run, "channel_instances"),
    context=_channel_instances_context,
    block_function=_channel_instances_block_function,
)
