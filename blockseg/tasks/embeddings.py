"""embeddings_to_affinities, pca_preview: affinities from pixel embeddings, and an RGB view of them (one PCA of the whole volume)."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from blockseg.blocks import Block, BlockGrid
from blockseg.graph.base import BlockOutput
from blockseg.run_state import InputError, Run, chunk_shape
from blockseg.task import OutputSpec, Stage, no_context
from blockseg.tasks.instances import offset_reach
from blockseg.volume import open_volume


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


def _e2a_context(run: Run) -> tuple[int, ...]:
    # an affinity links a voxel to one at most the largest offset away
    reach = offset_reach(run.config.stages.embeddings_to_affinities.offsets)
    return tuple(r * v for r, v in zip(reach, run.voxel_size))


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
        raise InputError(f"input.embeddings: {volume.url} contains NaN/inf values; the PCA preview needs finite embeddings")
    run.pca_model = embeddings_worker.fit_embedding_pca(samples, n_components=3)


EMBEDDINGS_TO_AFFINITIES = Stage(
    "embeddings_to_affinities",
    needs=(),
    enabled=lambda run: run.config.stages.embeddings_to_affinities is not None and run.has_affinities,
    params=lambda run: {**run.config.stages.embeddings_to_affinities.model_dump(), "context": _e2a_context(run)},
    outputs=lambda run: [
        OutputSpec(
            run.dataset_url("affinities"), "float32",
            chunk_shape(run, run.config.stages.embeddings_to_affinities.chunk_shape),
            (len(run.config.stages.embeddings_to_affinities.offsets),),
        )
    ],
    context=_e2a_context,
    block_function=lambda run: functools.partial(
        embeddings_to_affinities_block,
        embeddings_url=run.embeddings.url,
        affinities_url=run.dataset_url("affinities"),
        offsets=run.config.stages.embeddings_to_affinities.offsets,
        delta=run.config.stages.embeddings_to_affinities.delta,
        invert=run.config.stages.embeddings_to_affinities.invert,
    ),
)


PCA_PREVIEW = Stage(
    "pca_preview",
    needs=(),
    enabled=lambda run: run.config.stages.pca_preview is not None and (
        run.input_embeddings is not None or run.embeddings_predicted
    ),
    params=lambda run: run.config.stages.pca_preview.model_dump(),
    outputs=lambda run: [
        OutputSpec(
            run.dataset_url("pca_preview"), "uint8",
            chunk_shape(run, run.config.stages.pca_preview.chunk_shape), (3,),
            axis_names=("c", "z", "y", "x"),
            # napari shows the three channels as red, green and blue
            attrs={"omero": {"channels": [
                {"label": label, "color": color, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                for label, color in (("pc1", "FF0000"), ("pc2", "00FF00"), ("pc3", "0000FF"))
            ], "rdefs": {"model": "color"}}},
        )
    ],
    context=no_context,
    block_function=lambda run: functools.partial(
        pca_preview_block,
        embeddings_url=run.embeddings.url if run.embeddings is not None else "",
        preview_url=run.dataset_url("pca_preview"),
        model=run.pca_model,
    ),
    prepare=_pca_prepare,
)
