"""The pipeline stages of embeddings, mutex watershed, channel instances and PCA previews.

``embeddings_to_affinities`` turns pixel embeddings into affinities (for the
fragments stage or ``mws``); ``mws`` and ``channel_instances`` make pieces
per block that the ``stitch`` stage joins across blocks through RAG edges
(see :mod:`blockseg.stitch`), in place of ``fragments`` + ``agglomerate``;
``pca_preview`` writes an RGB view of the embeddings. Here are their config
checks, contexts, outputs and registry entries; :mod:`blockseg.pipeline`
wires them into the run (which stage needs which, fingerprints).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from blockseg import stages as block_functions
from blockseg import stitch
from blockseg.blocks import BlockGrid
from blockseg.config import ConfigError, PipelineConfig
from blockseg.volume import Volume

if TYPE_CHECKING:
    from blockseg.pipeline import OutputSpec, Run, Stage


def _pipeline():
    """:mod:`blockseg.pipeline`, imported when first used: it imports this module while it loads."""
    from blockseg import pipeline

    return pipeline


def check_channel_input(volume: Volume, key: str, reference: Volume | None) -> None:
    """Embeddings and BiaPy channels: (c, z, y, x), float or uint8, on the reference's voxel grid."""
    if len(volume.voxel_size) != 3 or len(volume.channel_shape) != 1:
        raise _pipeline().InputError(
            f"{key}: {volume.url} must have axes (c, z, y, x) with a 3D voxel_size, "
            f"got shape {volume.array.shape} and voxel_size {list(volume.voxel_size)}"
        )
    if not (np.issubdtype(volume.dtype, np.floating) or volume.dtype == np.uint8):
        raise _pipeline().InputError(f"{key}: {volume.url} has dtype {volume.dtype}; expected float32/float64 or uint8")
    if reference is not None and volume.voxel_size != reference.voxel_size:
        raise _pipeline().InputError(
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
            raise _pipeline().InputError(f"stages.mws.offsets: {len(offsets)} offsets for {count} affinity channels; give one per channel")
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
            raise _pipeline().InputError(
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


def _whole_voxels(run: Run, context_nm: Sequence[float]) -> tuple[int, ...]:
    """A context in nm rounded up to whole voxels (halo slots and crops need voxel-aligned ROIs)."""
    return tuple(int(-(-c // v) * v) for c, v in zip(context_nm, run.voxel_size))


def _offset_reach(offsets: Sequence[Sequence[int]]) -> tuple[int, ...]:
    return tuple(max(abs(o[axis]) for o in offsets) for axis in range(3))


def _e2a_context(run: Run) -> tuple[int, ...]:
    # an affinity links a voxel to one at most the largest offset away
    reach = _offset_reach(run.config.stages.embeddings_to_affinities.offsets)
    return tuple(r * v for r, v in zip(reach, run.voxel_size))


def _mws_context(run: Run) -> tuple[int, ...]:
    cfg = run.config.stages.mws
    if cfg.context is not None:
        return _whole_voxels(run, cfg.context)
    # Twice the longest offset: a voxel near the face then sees every
    # repulsive edge that constrains it, and the pieces those edges link.
    # At least 8 voxels: with nearest neighbours only, 2 voxels left the demo
    # blockwise result 0.32 VOI from the whole-volume one, 8 voxels 0.19.
    voxels = [max(8, 2 * r) for r in _offset_reach(mws_offsets(run.config))]
    if cfg.strides:
        # context and block shape multiples of the strides keep the subsampled
        # edges on one grid across blocks (when the block shape allows)
        voxels = [-(-c // s) * s for c, s in zip(voxels, cfg.strides)]
    return tuple(c * v for c, v in zip(voxels, run.voxel_size))


def _channel_instances_context(run: Run) -> tuple[int, ...]:
    cfg = run.config.stages.channel_instances
    if cfg.context is not None:
        return _whole_voxels(run, cfg.context)
    # a block sees half an object beyond its faces: every object that reaches
    # into it is seen up to its middle, where the markers sit
    return _whole_voxels(run, [cfg.max_object_extent / 2] * 3)


def _instance_context(run: Run) -> tuple[int, ...]:
    return _mws_context(run) if run.fragment_stage == "mws" else _channel_instances_context(run)


def _stitch_band(run: Run) -> tuple[int, ...]:
    """How far from a block face the stitch stage compares the two blocks' segmentations.

    Default half the context: a block's segmentation is least reliable near
    the edge of its read ROI (it did not see what lies beyond), so comparing
    only the half next to the face, where both blocks saw at least half the
    context on either side, follows the whole-volume result more closely
    (on the demo affinities: VOI 0.13 -> 0.05 from the whole-volume mutex
    watershed with a 320 nm context).
    """
    context = _instance_context(run)
    configured = getattr(run.config.stages, run.fragment_stage).stitch_band
    if configured is not None:
        return tuple(min(b, c) for b, c in zip(_whole_voxels(run, configured), context))
    return tuple(max(v, c // 2 // v * v) for c, v in zip(context, run.voxel_size))


def _instance_outputs(run: Run, name: str) -> list[OutputSpec]:
    from blockseg.stitch import HaloLayout

    cfg = getattr(run.config.stages, name)
    layout = HaloLayout.of(run.grid(_instance_context(run)))
    slot_voxels = tuple(r // v for r, v in zip(layout.read_shape, run.voxel_size))
    return [
        _pipeline().OutputSpec(run.fragments_url, "uint64", _pipeline()._chunk_shape(run, cfg.chunk_shape)),
        _pipeline().OutputSpec(run.halos_url, "uint32", slot_voxels, roi=layout.roi, aligned=False),
    ]


def _mws_block_function(run: Run):
    cfg = run.config.stages.mws
    return functools.partial(
        block_functions.mws_block,
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
        block_functions.channel_instances_block,
        channels_url=run.channels_source.url,
        fragments_url=run.fragments_url,
        halos_url=run.halos_url,
        grid=run.grid(_channel_instances_context(run)),
        ids_per_block=run.ids_per_block,
        channel_set=cfg.channel_set,
        parameters=cfg.parameters,
        voxel_size=tuple(run.channels_source.voxel_size),
    )


def _pca_prepare(run: Run) -> None:
    """Fit the one PCA of the preview on a random sample of the whole volume's embeddings.

    A point-wise random sample would decompress one chunk per voxel drawn,
    which on a terabyte volume is most of it. Instead ``sample_chunks``
    chunks of the embeddings are drawn at random (fixed seed) from all those
    the total ROI touches, read whole, and ``samples`` voxels are drawn from
    them evenly. The same seed gives the same model on a resume, so blocks
    coloured before and after agree.
    """
    from workers import embeddings as embeddings_worker

    cfg = run.config.stages.pca_preview
    volume = run.embeddings
    rng = np.random.default_rng(cfg.seed)
    chunk_nm = tuple(c * v for c, v in zip(volume.chunk_shape, volume.voxel_size))
    chunk_grid = BlockGrid(run.total_roi, chunk_nm)
    chosen = np.sort(rng.choice(chunk_grid.num_blocks, min(cfg.sample_chunks, chunk_grid.num_blocks), replace=False))
    per_chunk = -(-cfg.samples // len(chosen))
    parts = []
    for chunk_id in chosen:
        data = volume.read(chunk_grid.write_roi(int(chunk_id)))
        flat = data.reshape(len(data), -1)
        parts.append(flat[:, rng.integers(0, flat.shape[1], per_chunk)].T)
    samples = np.concatenate(parts).astype(np.float64)[: cfg.samples]
    if not np.all(np.isfinite(samples)):
        raise _pipeline().InputError(f"input.embeddings: {volume.url} contains NaN/inf values; the PCA preview needs finite embeddings")
    run.pca_model = embeddings_worker.fit_embedding_pca(samples, n_components=3)


def registry_entries() -> list[Stage]:
    """The stages of this module, for :func:`blockseg.pipeline._registry`."""
    pipeline = _pipeline()
    none: Callable[[Run], list[OutputSpec]] = lambda run: []  # noqa: E731
    return [
        pipeline.Stage(
            "embeddings_to_affinities",
            needs=(),
            enabled=lambda run: run.config.stages.embeddings_to_affinities is not None and run.has_affinities,
            params=lambda run: {**run.config.stages.embeddings_to_affinities.model_dump(), "context": _e2a_context(run)},
            outputs=lambda run: [
                pipeline.OutputSpec(
                    run.dataset_url("affinities"), "float32",
                    pipeline._chunk_shape(run, run.config.stages.embeddings_to_affinities.chunk_shape),
                    (len(run.config.stages.embeddings_to_affinities.offsets),),
                )
            ],
            context=_e2a_context,
            block_function=lambda run: functools.partial(
                block_functions.embeddings_to_affinities_block,
                embeddings_url=run.embeddings.url,
                affinities_url=run.dataset_url("affinities"),
                offsets=run.config.stages.embeddings_to_affinities.offsets,
                delta=run.config.stages.embeddings_to_affinities.delta,
                invert=run.config.stages.embeddings_to_affinities.invert,
            ),
        ),
        pipeline.Stage(
            "pca_preview",
            needs=(),
            enabled=lambda run: run.config.stages.pca_preview is not None and (
                run.input_embeddings is not None or run.embeddings_predicted
            ),
            params=lambda run: run.config.stages.pca_preview.model_dump(),
            outputs=lambda run: [
                pipeline.OutputSpec(
                    run.dataset_url("pca_preview"), "uint8",
                    pipeline._chunk_shape(run, run.config.stages.pca_preview.chunk_shape), (3,),
                    axis_names=("c", "z", "y", "x"),
                    # napari shows the three channels as red, green and blue
                    attrs={"omero": {"channels": [
                        {"label": label, "color": color, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                        for label, color in (("pc1", "FF0000"), ("pc2", "00FF00"), ("pc3", "0000FF"))
                    ], "rdefs": {"model": "color"}}},
                )
            ],
            context=lambda run: None,
            block_function=lambda run: functools.partial(
                block_functions.pca_preview_block,
                embeddings_url=run.embeddings.url if run.embeddings is not None else "",
                preview_url=run.dataset_url("pca_preview"),
                model=run.pca_model,
            ),
            prepare=_pca_prepare,
        ),
        pipeline.Stage(
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
        ),
        pipeline.Stage(
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
        ),
        pipeline.Stage(
            "stitch",
            needs=(),
            enabled=lambda run: run.fragment_stage != "fragments" and run.segmenting,
            params=lambda run: {"source": run.fragment_stage, "context": _instance_context(run), "band": _stitch_band(run)},
            outputs=none,
            context=_instance_context,
            block_function=lambda run: functools.partial(
                stitch.stitch_block,
                grid=run.grid(_instance_context(run)),
                halos_url=run.halos_url,
                ids_per_block=run.ids_per_block,
                band=_stitch_band(run),
            ),
        ),
    ]
