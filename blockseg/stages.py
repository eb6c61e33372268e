"""What each stage does to one block: read zarr, call a worker function, write.

These functions run on dask workers. They get a :class:`~blockseg.blocks.Block`
and plain parameters (bound with ``functools.partial`` by the pipeline), open
the volumes themselves (data never passes through the scheduler) and return a
small :class:`~blockseg.graph.base.BlockOutput` for the driver to commit.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from blockseg.blocks import Block, BlockGrid
from blockseg.graph.base import BlockOutput, Edges, Nodes
from blockseg.segments import read_lut_range
from blockseg.volume import open_volume
from workers import agglomerate as agglomerate_worker
from workers import evaluate as evaluate_worker
from workers import fragments as fragments_worker
from workers.relabel import relabel


def _as_float_affinities(affs: np.ndarray) -> np.ndarray:
    if affs.dtype == np.uint8:
        return affs.astype(np.float32) / np.float32(255)
    return affs.astype(np.float32, copy=False)


def check_affinities_block(block: Block, affinities_url: str) -> BlockOutput:
    """Look for NaN/inf and values outside [0, 1] in the block's affinities."""
    affs = open_volume(affinities_url).read(block.write_roi)
    summary = {"nan": 0, "min": 0.0, "max": 0.0}
    if np.issubdtype(affs.dtype, np.floating):
        finite = np.isfinite(affs)
        summary["nan"] = int(affs.size - np.count_nonzero(finite))
        values = affs[finite]
        if values.size:
            summary["min"], summary["max"] = float(values.min()), float(values.max())
    elif affs.size:
        summary["min"], summary["max"] = float(affs.min()) / 255, float(affs.max()) / 255
    return BlockOutput(result=json.dumps(summary).encode())


def _masked_out(mask_url: str | None, block: Block, voxel_size) -> tuple[bool, np.ndarray | None]:
    """(whether the block's write ROI lies wholly outside the mask, the mask over its read ROI)."""
    if mask_url is None:
        return False, None
    from blockseg.sources import read_mask

    mask = read_mask(open_volume(mask_url), block.read_roi, voxel_size)
    crop = block.write_roi.slices(voxel_size, block.read_roi.offset)
    return not mask[crop].any(), mask


def fragments_block(
    block: Block,
    source_url: str,
    source_kind: str,
    mask_url: str | None,
    fragments_url: str,
    ids_per_block: int,
    method: str,
    boundary_threshold: float,
    min_seed_distance: float,
    smooth_sigma: float,
    mws_bias: float,
    mws_min_size: int,
    fragments_in_xy: bool,
    min_mean_affinity: float | None,
    epsilon_agglomerate: float,
) -> BlockOutput:
    """Fragments of the read ROI, cropped to the write ROI, with global ids; written, and their RAG nodes.

    A block whose write ROI lies wholly outside the mask writes zeros and
    reads nothing else.
    """
    from blockseg.sources import read_block_inputs

    source = open_volume(source_url)
    voxel_size = source.voxel_size
    output = open_volume(fragments_url, mode="r+")
    outside, mask = _masked_out(mask_url, block, voxel_size)
    if outside:
        _, shape = block.write_roi.to_voxels(voxel_size)
        output.write(block.write_roi, np.zeros(shape, np.uint64))
        nodes = Nodes.empty()
        nodes.attrs["mean_affinity"] = np.zeros(0, np.float32)
        return BlockOutput(nodes=nodes, stats={"voxels": int(np.prod(shape)), "fragments": 0, "masked_blocks": 1})
    need_affinities = method == "mutex_watershed" or epsilon_agglomerate > 0
    affs, boundary, mean = read_block_inputs(source, source_kind, block.read_roi, need_affinities)
    fragments = fragments_worker.make_fragments(
        method, affs, boundary, voxel_size, boundary_threshold=boundary_threshold,
        min_seed_distance=min_seed_distance, smooth_sigma=smooth_sigma, mws_bias=mws_bias,
        mws_min_size=mws_min_size, fragments_in_xy=fragments_in_xy, mask=mask,
    )
    if min_mean_affinity is not None:
        fragments = fragments_worker.drop_weak_fragments(fragments, mean, min_mean_affinity)
    if epsilon_agglomerate > 0:
        fragments = agglomerate_worker.epsilon_agglomerate(affs, fragments, epsilon_agglomerate)
    crop = block.write_roi.slices(voxel_size, block.read_roi.offset)
    fragments, ids, centers, sizes, means = fragments_worker.global_fragments_and_nodes(
        fragments[crop], block.block_id, ids_per_block, voxel_size, block.write_roi.offset, mean[crop]
    )
    output.write(block.write_roi, fragments)
    attrs = {"mean_affinity": means.astype(np.float32)}
    stats = {"voxels": int(fragments.size), "fragments": int(len(ids))}
    return BlockOutput(nodes=Nodes(ids, centers, sizes, attrs), stats=stats)


def agglomerate_block(
    block: Block,
    source_url: str,
    source_kind: str,
    mask_url: str | None,
    fragments_url: str,
    ids_per_block: int,
    scoring: str,
    discretize_queue: int,
) -> BlockOutput:
    """Merge scores of the RAG edges this block owns (``u`` is one of its fragments).

    A block wholly outside the mask has no fragments, so it owns no edge and
    reads nothing. Fragments are 0 outside the mask, so no edge crosses it.
    """
    from blockseg.sources import read_affinities

    source = open_volume(source_url)
    voxel_size = source.voxel_size
    voxels = int(np.prod(block.write_roi.shape) // int(np.prod(voxel_size)))
    if mask_url is not None and _masked_out(mask_url, block, voxel_size)[0]:
        empty = np.zeros(0, np.uint64)
        return BlockOutput(edges=Edges(empty, empty, np.zeros(0, np.float32)), stats={"voxels": voxels, "edges": 0})
    affs = read_affinities(source, source_kind, block.read_roi)
    fragments = open_volume(fragments_url).read(block.read_roi)
    u, v, scores = agglomerate_worker.agglomerate_block(affs, fragments, scoring=scoring, discretize_queue=discretize_queue)
    # Each edge is written once: by the home block of its smaller endpoint.
    own = (u // np.uint64(ids_per_block)) == np.uint64(block.block_id)
    stats = {"voxels": voxels, "edges": int(own.sum())}
    return BlockOutput(edges=Edges(u[own], v[own], scores[own].astype(np.float32)), stats=stats)


def relabel_block(
    block: Block,
    fragments_url: str,
    segmentation_urls: Sequence[str],
    lut_paths: Sequence[str],
    ids_per_block: int,
) -> BlockOutput:
    """Write each threshold's segmentation of the block, reading only its LUT rows."""
    fragments = open_volume(fragments_url).read(block.write_roi)
    low = block.block_id * ids_per_block
    for url, lut_path in zip(segmentation_urls, lut_paths):
        lut_ids, lut_segments = read_lut_range(Path(lut_path), low, low + ids_per_block)
        segmentation = relabel(fragments, lut_ids, lut_segments)
        open_volume(url, mode="r+").write(block.write_roi, segmentation)
    return BlockOutput(stats={"voxels": int(fragments.size) * len(segmentation_urls)})


def contingency_block(block: Block, labels_url: str, ground_truth_url: str) -> BlockOutput:
    """Contingency counts of (labels, ground truth) in the block's write ROI."""
    labels = open_volume(labels_url).read(block.write_roi)
    truth = open_volume(ground_truth_url).read(block.write_roi)
    table = evaluate_worker.contingency_table(labels, truth)
    return BlockOutput(result=pack_arrays(*table), stats={"voxels": int(labels.size)})


def pack_arrays(*arrays: np.ndarray) -> bytes:
    """Arrays as ``.npz`` bytes (no pickling) for the store's result column."""
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def unpack_arrays(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


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


_MODELS: dict[tuple[str, str], object] = {}


def _keep_freed_memory() -> None:
    """Stop glibc from handing every freed network buffer back to the kernel.

    dask's nanny sets MALLOC_TRIM_THRESHOLD_ low so idle workers shrink; for a
    network that allocates and frees large buffers on every window that means
    page faults on every window, and about twice the CPU time. A worker that
    predicts keeps its buffers instead (some 150 MiB more resident memory).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 * 2**20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def _model(spec: str, device: str):
    """One loaded model per worker process: loading is slow and models do not pickle."""
    from workers.predict import load_model

    key = (spec, device)
    if key not in _MODELS:
        _keep_freed_memory()
        _MODELS[key] = load_model(spec, device)
    return _MODELS[key]


def probe_model(spec: str, device: str, input_shape: Sequence[int], output_shape: Sequence[int], channels: int) -> None:
    """Load the model where blocks will run and check its output on one window of zeros."""
    from workers.predict import ModelError

    model = _model(spec, device)
    out = model(np.zeros((1, 1, *input_shape), np.float32))
    if tuple(out.shape[2:]) != tuple(output_shape):
        raise ModelError(
            f"model {spec} output shape {list(out.shape[2:])} does not match output_shape {list(output_shape)} "
            f"in the config (input_shape {list(input_shape)})"
        )
    if out.shape[1] != channels:
        raise ModelError(f"model {spec} gives {out.shape[1]} channels; the config's outputs add up to {channels}")


def predict_block(
    block: Block,
    raw_url: str,
    output_urls: Sequence[str],
    output_channels: Sequence[int],
    spec: str,
    device: str,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    normalize_mode: str,
    mean: float | None,
    std: float | None,
    output_dtype: str,
    batch_size: int,
) -> BlockOutput:
    """Run the model over the block: raw (+ context) in, each output cropped to the write ROI."""
    from workers.predict import normalize, predict_volume, to_storage

    raw_volume = open_volume(raw_url)
    voxel_size = raw_volume.voxel_size
    # Normalise what lies inside the data, pad with zeros in normalised space:
    # the rule a whole-volume prediction with the same windows follows.
    inside = block.read_roi.intersect(raw_volume.roi)
    _, read_shape = block.read_roi.to_voxels(voxel_size)
    data = np.zeros(read_shape, np.float32)
    data[inside.slices(voxel_size, block.read_roi.offset)] = normalize(raw_volume.read(inside), normalize_mode, mean, std)
    origin, _ = block.write_roi.shift(tuple(-o for o in raw_volume.offset)).to_voxels(voxel_size)
    prediction = predict_volume(
        _model(spec, device), data, input_shape, output_shape, batch_size=batch_size, origin=origin,
        total_shape=raw_volume.spatial_shape, out_channels=sum(output_channels),
    )
    start = 0
    for url, count in zip(output_urls, output_channels):
        part = to_storage(prediction[start : start + count], output_dtype)
        open_volume(url, mode="r+").write(block.write_roi, part)
        start += count
    return BlockOutput(stats={"voxels": int(prediction[0].size)})


# -- embeddings, mutex watershed, channel instances, PCA preview ----------------


def embeddings_to_affinities_block(
    block: Block,
    embeddings_url: str,
    affinities_url: str,
    offsets: Sequence[Sequence[int]],
    delta: float,
    invert: bool,
) -> BlockOutput:
    """Affinities of the block from its embeddings and context.

    The read ROI is clipped to the data: the worker gives an affinity of 0
    where the neighbour lies outside its array, so a block at the volume's
    edge does what the whole-volume computation does there, and inside the
    volume the context (the largest offset) supplies every neighbour.
    Blockwise therefore equals whole.
    """
    from workers import embeddings as embeddings_worker

    embeddings = open_volume(embeddings_url)
    voxel_size = embeddings.voxel_size
    read_roi = block.read_roi.intersect(embeddings.roi)
    data = embeddings.read(read_roi).astype(np.float32, copy=False)
    affinities = embeddings_worker.embeddings_to_affinities(data, [list(o) for o in offsets], delta, invert=invert)
    crop = block.write_roi.slices(voxel_size, read_roi.offset)
    open_volume(affinities_url, mode="r+").write(block.write_roi, np.asarray(affinities[(slice(None),) + crop], np.float32))
    return BlockOutput(stats={"voxels": int(np.prod([s.stop - s.start for s in crop]))})


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
        _as_float_affinities(affs), offsets, bias=bias, attractive=attractive, strides=strides,
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
        _as_float_affinities(channels), channel_set, voxel_size=voxel_size, **parameters
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


def pca_preview_block(block: Block, embeddings_url: str, preview_url: str, model) -> BlockOutput:
    """Colours of the block from the one PCA fitted on the whole volume (so seams do not show)."""
    from workers import embeddings as embeddings_worker

    if model is None:
        raise ValueError("pca_preview: no fitted PCA model (the stage's prepare step did not run)")
    data = open_volume(embeddings_url).read(block.write_roi).astype(np.float32, copy=False)
    rgb = embeddings_worker.apply_embedding_pca(data, model)
    # [0, 1] -> 0..255, rounded; values the sample did not span are clipped
    preview = np.clip(np.rint(np.asarray(rgb, np.float32) * 255), 0, 255).astype(np.uint8)
    open_volume(preview_url, mode="r+").write(block.write_roi, preview)
    return BlockOutput(stats={"voxels": int(preview[0].size)})
