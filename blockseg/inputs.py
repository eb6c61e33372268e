"""Open a run: check the config against its inputs, before anything is written.

Every check raises a one-line :class:`~blockseg.run_state.InputError` or
:class:`~blockseg.config.ConfigError` naming the key at fault.
"""

from __future__ import annotations

import os

import numpy as np

from blockseg.blocks import BlockGrid
from blockseg.config import ConfigError, PipelineConfig
from blockseg.data_defaults import DATA_DEFAULT_KEYS, fill_fragments_defaults
from blockseg.geometry import Roi
from blockseg.graph import StoreError, open_store
from blockseg.layout import check_layouts, prepare_storage
from blockseg.pyramid import check_downsample_config
from blockseg.run_state import TARGET_STAGES, InputError, Run
from blockseg.tasks import instances
from blockseg.tasks.targets import check_targets
from blockseg.user_tasks import bind_tasks
from blockseg.volume import Volume, VolumeError, open_volume


def _open_input(url: str, key: str) -> Volume:
    try:
        return open_volume(url)
    except VolumeError as error:
        raise InputError(f"{key}: {error}") from None


def open_run(config: PipelineConfig, restart: bool = False) -> Run:
    """Check the config against its inputs and open the graph store.

    Parameters
    ----------
    restart : bool
        Accept a graph store written by a run with another block grid or
        input (its results are dropped as the stages restart).

    Raises
    ------
    InputError, ConfigError, StoreError
        With a one-line message, before anything is written.
    """
    prepare_storage(config)
    affinities = None
    if config.input.affinities:
        affinities = _open_input(config.resolve(config.input.affinities), "input.affinities")
        _check_affinities(affinities)
    if config.input.boundaries:
        affinities = _open_input(config.resolve(config.input.boundaries), "input.boundaries")
        _check_boundaries(affinities, config)
    raw = None
    if config.input.raw:
        raw = _open_input(config.resolve(config.input.raw), "input.raw")
        _check_raw(raw, affinities)
    if config.stages.predict is not None:
        if raw is None:
            raise ConfigError("config error: stages.predict: needs input.raw")
        _check_normaliser(raw, config)
    embeddings = channels = None
    if config.input.embeddings:
        embeddings = _open_input(config.resolve(config.input.embeddings), "input.embeddings")
        instances.check_channel_input(embeddings, "input.embeddings", affinities if affinities is not None else raw)
    if config.input.channels:
        channels = _open_input(config.resolve(config.input.channels), "input.channels")
        first = next((v for v in (affinities, embeddings, raw) if v is not None), None)
        instances.check_channel_input(channels, "input.channels", first)
    truth = None
    if config.input.ground_truth:
        truth = _open_input(config.resolve(config.input.ground_truth), "input.ground_truth")
        _check_ground_truth(truth, next((v for v in (affinities, embeddings, channels, raw) if v is not None), None))
    reference = next(v for v in (affinities, embeddings, channels, raw, truth) if v is not None)
    given = config.stages.fragments
    config = _with_data_defaults(config, reference.voxel_size)
    filled = {
        key: getattr(config.stages.fragments, key) for key in DATA_DEFAULT_KEYS if getattr(given, key) is None
    }
    total_roi = _total_roi(config, reference)
    mask = None
    if config.input.mask:
        mask = _open_input(config.resolve(config.input.mask), "input.mask")
        _check_mask(mask, reference, total_roi)
    _check_blocks(config, reference, total_roi)
    check_layouts(config, reference.voxel_size)
    check_targets(config, reference.voxel_size)
    instances.check_config(config, affinities, embeddings, channels, truth)
    if config.stages.downsample is not None:
        check_downsample_config(config, reference.voxel_size, total_roi)
    wanted = [n for n in TARGET_STAGES if getattr(config.stages, n) is not None]
    if wanted and truth is None:
        raise ConfigError(f"config error: stages.{wanted[0]}: needs input.ground_truth")
    user_tasks = []
    if config.user_tasks:
        # what users' tasks read and write, checked before the store is opened: a mistake writes nothing
        given_boundaries = affinities if config.input.boundaries else None
        provisional = Run(
            config, None, None if given_boundaries is not None else affinities, truth, total_roi, raw,
            input_embeddings=embeddings, input_channels=channels, input_boundaries=given_boundaries, mask=mask,
        )
        user_tasks = bind_tasks(provisional, config.user_tasks, _built_in_writers(provisional))
    output_dir = config.output_dir
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"config error: output: {output_dir} exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"config error: output: cannot create {output_dir} ({error.strerror})") from None
    if not os.access(output_dir, os.W_OK):
        raise ConfigError(f"config error: output: {output_dir} is not writable")
    store = open_store(config.graph_url)
    meta = _store_meta(config, reference, total_roi)
    written = store.read_meta()
    if written is not None and written != meta and not restart:
        store.close()
        changed = sorted(k for k in meta if written.get(k) != meta[k])
        raise StoreError(
            f"graph store {config.graph_url} holds a run with another {', '.join(changed)} "
            f"({', '.join(f'{k}={written.get(k)}' for k in changed)}); use another graph URL or --restart"
        )
    if written != meta:
        store.write_meta(meta)
    boundaries = None
    if config.input.boundaries:
        affinities, boundaries = None, affinities
    return Run(
        config, store, affinities, truth, total_roi, raw, input_embeddings=embeddings, input_channels=channels,
        input_boundaries=boundaries, mask=mask, user_tasks=user_tasks, data_defaults=filled,
    )


def _with_data_defaults(config: PipelineConfig, voxel_size) -> PipelineConfig:
    """``config`` with the ``stages.fragments`` keys it leaves out filled from the data (blockseg/data_defaults.py)."""
    kind = "boundaries" if config.input.boundaries else "affinities" if config.input.affinities or config.stages.predict else None
    fragments = fill_fragments_defaults(config.stages.fragments, kind, voxel_size)
    if fragments is config.stages.fragments:
        return config
    return config.model_copy(update={"stages": config.stages.model_copy(update={"fragments": fragments})})


def with_data_defaults(config: PipelineConfig) -> PipelineConfig:
    """``config`` as a run of it would see it: the keys left to the data filled (only the input's metadata is read).

    For what shows a config before its run opens (``blockseg tune``'s
    combinations); :func:`open_run` fills them itself. A config whose input
    cannot be opened comes back as it is: the run reports that input.
    """
    given = [k for k in ("affinities", "boundaries", "raw", "embeddings", "channels", "ground_truth") if getattr(config.input, k)]
    if not given:
        return config
    try:
        reference = open_volume(config.resolve(getattr(config.input, given[0])))
    except VolumeError:
        return config
    return _with_data_defaults(config, reference.voxel_size)


def _built_in_writers(run: Run) -> dict[str, str]:
    """The URL of every dataset an enabled built-in stage of ``run`` writes, and the stage."""
    from blockseg.registry import STAGES

    writers = {}
    for name, stage in STAGES.items():
        if stage.enabled(run):
            for spec in stage.outputs(run):
                writers[spec.url] = name
    return writers


def _store_meta(config: PipelineConfig, reference: Volume, total_roi: Roi) -> dict:
    """What a graph store's rows are tied to: the block grid and the input."""
    return {
        "block_shape": list(config.block_shape),
        "roi": [list(total_roi.offset), list(total_roi.shape)],
        "input": reference.url,
        "ids_per_block": config.stages.fragments.ids_per_block,
    }


def _check_affinities(affinities: Volume) -> None:
    dtype = affinities.dtype
    shape = affinities.array.shape
    if len(affinities.voxel_size) != 3 or len(affinities.channel_shape) != 1:
        raise InputError(
            f"input.affinities: {affinities.url} must have axes (c, z, y, x) with a 3D voxel_size, "
            f"got shape {shape} and voxel_size {list(affinities.voxel_size)}"
        )
    channels = affinities.channel_shape[0]
    if not (np.issubdtype(dtype, np.floating) or dtype == np.uint8):
        raise InputError(
            f"input.affinities: {affinities.url} has dtype {dtype}; expected float32/float64 in [0, 1] "
            f"or uint8 (affinity x 255)"
        )
    if channels < 3:
        raise InputError(
            f"input.affinities: {affinities.url} has {channels} channel(s); expected at least 3 "
            f"(the z, y, x nearest-neighbour affinities first)"
        )


def _check_boundaries(boundaries: Volume, config: PipelineConfig) -> None:
    shape = boundaries.array.shape
    key = f"input.boundaries: {boundaries.url}"
    if len(boundaries.voxel_size) != 3 or boundaries.channel_shape not in ((), (1,)):
        raise InputError(
            f"{key} must be one channel, axes (z, y, x) or (1, z, y, x), with a 3D voxel_size; got shape {shape} "
            f"and voxel_size {list(boundaries.voxel_size)}"
        )
    if not (np.issubdtype(boundaries.dtype, np.floating) or boundaries.dtype == np.uint8):
        raise InputError(f"{key} has dtype {boundaries.dtype}; expected float in [0, 1] or uint8 (probability x 255)")
    stages = config.stages
    predicted = stages.predict.outputs if stages.predict is not None else {}
    if "affinities" in predicted or stages.embeddings_to_affinities is not None:
        raise ConfigError(
            "config error: input.boundaries: the segmentation input would come from two places; drop it or the "
            "stage that makes affinities (predict outputs: affinities, embeddings_to_affinities)"
        )


def _check_mask(mask: Volume, reference: Volume, total_roi: Roi) -> None:
    key = f"input.mask: {mask.url}"
    if mask.channel_shape or len(mask.voxel_size) != 3:
        raise InputError(f"{key} must have axes (z, y, x), got shape {mask.array.shape}")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
        raise InputError(f"{key} has dtype {mask.dtype}; expected uint8 or bool (nonzero inside the tissue)")
    voxel_size = reference.voxel_size
    if any(m % v for m, v in zip(mask.voxel_size, voxel_size)):
        raise InputError(
            f"{key}: voxel_size {list(mask.voxel_size)} nm is not a whole multiple of the input's "
            f"{list(voxel_size)} nm"
        )
    if any(o % m for o, m in zip(mask.offset, mask.voxel_size)):
        raise InputError(f"{key}: offset {list(mask.offset)} nm is not a multiple of its voxel_size {list(mask.voxel_size)}")
    if not mask.roi.contains(total_roi):
        raise InputError(f"{key} covers {mask.roi}, which does not contain the ROI to segment {total_roi}")


def _check_normaliser(raw: Volume, config: PipelineConfig) -> None:
    from workers.predict import normalize

    cfg = config.stages.predict
    try:
        normalize(np.zeros(1, raw.dtype), cfg.normalize, cfg.mean, cfg.std)
    except ValueError as error:
        raise InputError(f"input.raw: {raw.url}: {error}") from None


def _check_raw(raw: Volume, affinities: Volume | None) -> None:
    if raw.channel_shape or len(raw.voxel_size) != 3:
        raise InputError(f"input.raw: {raw.url} must have axes (z, y, x), got shape {raw.array.shape}")
    if affinities is not None and raw.voxel_size != affinities.voxel_size:
        raise InputError(
            f"input.raw: voxel_size {list(raw.voxel_size)} nm does not match input.affinities "
            f"voxel_size {list(affinities.voxel_size)} nm"
        )


def _check_ground_truth(truth: Volume, affinities: Volume | None) -> None:
    if not np.issubdtype(truth.dtype, np.integer):
        raise InputError(f"input.ground_truth: {truth.url} has dtype {truth.dtype}; expected integer labels")
    if truth.channel_shape:
        raise InputError(f"input.ground_truth: {truth.url} must have axes (z, y, x), got shape {truth.array.shape}")
    if affinities is not None and truth.voxel_size != affinities.voxel_size:
        raise InputError(
            f"input.ground_truth: voxel_size {list(truth.voxel_size)} nm does not match "
            f"the input voxel_size {list(affinities.voxel_size)} nm"
        )


def _total_roi(config: PipelineConfig, reference: Volume) -> Roi:
    affinities = reference
    if config.roi is None:
        return affinities.roi
    try:
        roi = Roi(config.roi.offset, config.roi.shape)
    except ValueError as error:
        raise ConfigError(f"config error: roi: {error}") from None
    if roi.dims != 3 or not roi.is_aligned(affinities.voxel_size):
        raise ConfigError(f"config error: roi: {roi} must be 3D and aligned to the voxel size {list(affinities.voxel_size)}")
    if not affinities.roi.contains(roi):
        raise ConfigError(f"config error: roi: {roi} is not inside the input {affinities.url} {affinities.roi}")
    return roi


def _check_blocks(config: PipelineConfig, reference: Volume, total_roi: Roi) -> None:
    voxel_size = reference.voxel_size
    block = config.block_shape
    if len(block) != 3:
        raise ConfigError(f"config error: block_shape: expected 3 values (z, y, x) in nm, got {block}")
    if any(b % v for b, v in zip(block, voxel_size)):
        raise ConfigError(f"config error: block_shape: {block} nm is not a multiple of the voxel size {list(voxel_size)} nm")
    for key, chunk in (
        ("stages.fragments.chunk_shape", config.stages.fragments.chunk_shape),
        ("stages.relabel.chunk_shape", config.stages.relabel.chunk_shape),
        *(
            (f"stages.{name}.chunk_shape", getattr(config.stages, name).chunk_shape)
            for name in ("lsds", "channels", "weights", "embeddings_to_affinities", "pca_preview", "mws", "channel_instances")
            if getattr(config.stages, name) is not None
        ),
    ):
        if chunk is None:
            continue
        if len(chunk) != 3:
            raise ConfigError(f"config error: {key}: expected 3 values (z, y, x) in voxels, got {chunk}")
        chunk_nm = [c * v for c, v in zip(chunk, voxel_size)]
        if any(b % c for b, c in zip(block, chunk_nm)):
            raise ConfigError(
                f"config error: block_shape: {block} nm is not a multiple of {key} {chunk} voxels "
                f"(= {chunk_nm} nm); blocks must be whole chunks so concurrent writes are safe"
            )
    ids_per_block = config.stages.fragments.ids_per_block
    if ids_per_block is not None:
        num_blocks = BlockGrid(total_roi, block).num_blocks
        if ids_per_block * num_blocks >= 2**63:
            raise ConfigError(
                f"config error: stages.fragments.ids_per_block: {ids_per_block} x {num_blocks} blocks "
                f"overflows the 63-bit id space"
            )
