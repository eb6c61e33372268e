"""The ``downsample`` stage: OME-Zarr multiscale pyramids, written blockwise.

Where the levels live
---------------------
Each dataset gets its own OME-Zarr 0.5 image group under
``volumes.zarr/pyramids/``::

    volumes.zarr/pyramids/raw/{s0, s1, ...}                       mean
    volumes.zarr/pyramids/affinities/{s0, s1, ...}                mean, channels kept
    volumes.zarr/pyramids/fragments/{s0, s1, ...}                 mode (image-label); mws / instances
                                                                  when those stages make the pieces
    volumes.zarr/pyramids/segmentation/threshold_<t>/{s0, ...}    mode (image-label)
    volumes.zarr/pyramids/ground_truth/{s0, ...}                  mode (image-label)

A group holds every level of its image, ``s0`` (full resolution) included,
because OME-Zarr readers (ome-zarr-py, napari-ome-zarr, neuroglancer's
``zarr3://`` source) resolve a level's ``path`` inside the group and zarr
refuses ``..`` in paths, so a group cannot point at the pipeline's own
``volumes.zarr/fragments``. ``s0`` is therefore a copy of level 0 (for
labels, which compress well, a small one). Open ``pyramids/<name>`` in a
viewer; the pipeline's single-scale datasets stay where they were.

Coordinates
-----------
Level ``k`` has voxel size ``voxel_size * F_k`` (``F_k`` the product of the
factors of levels 1..k) and covers the run's ROI from its corner. Its
``translation`` is the world position (nm) of the *centre* of its first
voxel, ``offset + F_k * voxel_size / 2``: OME-NGFF places pixel ``i`` at
``i * scale + translation``, and ome-zarr-py, napari and neuroglancer (which
shifts OME translations by half a voxel to its corner convention) read that
position as the pixel's centre, so the levels overlay each other exactly.
(blockseg's ``offset`` attribute is the corner of the first voxel.)

Blocks
------
One block of the run's grid writes its part of every level, each level
computed from the one above it (:func:`workers.downsample.pyramid`). A block
starts at a multiple of the coarsest total factor (checked before any work),
so no window straddles two blocks and the blockwise pyramid equals the
whole-volume one exactly.

Storage
-------
The groups and levels are made through :mod:`blockseg.storage` at the run's
``volumes_url``, local or ``s3://`` with the configured storage options, and
the block functions open the levels themselves, as every other stage does.
A level takes the codec of its source's layout (``storage.outputs``) and is
sharded when the source is and the level's block (``block / F_k``) is a whole
number of the source's shards scaled by ``F_k``; otherwise it is chunked by
the level's block (:func:`level_layout`). Either way every block writes
whole objects of every level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import zarr

from blockseg import storage
from blockseg.blocks import Block, BlockGrid
from blockseg.config import ConfigError
from blockseg.geometry import Roi
from blockseg.graph.base import BlockOutput
from blockseg.layout import largest_divisor_at_most, output_layout
from blockseg.volume import TOKEN_ATTR, VolumeError, make_compressors, open_volume, split_array_url
from workers import downsample as downsample_worker

if TYPE_CHECKING:
    from blockseg.config import PipelineConfig
    from blockseg.run_state import Run

PYRAMIDS = "pyramids"
OME_VERSION = "0.5"
LABEL_DATASETS = ("fragments", "segmentation", "ground_truth")
DEFAULT_DATASETS = ("raw", "affinities", "fragments", "segmentation")


@dataclass(frozen=True)
class PyramidSource:
    """One dataset to downsample: where level 0 is, where its pyramid goes, and how."""

    name: str
    source_url: str
    group_url: str
    method: str

    def level_url(self, level: int) -> str:
        return f"{self.group_url}/s{level}"

    @property
    def is_label(self) -> bool:
        return self.method == "mode"


def pyramid_group_url(run: "Run", name: str) -> str:
    """``volumes.zarr/pyramids/<name>`` of a run."""
    return run.dataset_url(f"{PYRAMIDS}/{name}")


def pyramid_sources(run: "Run") -> list[PyramidSource]:
    """The datasets of ``run`` that get a pyramid, in a fixed order.

    Raises
    ------
    ConfigError
        If the config names a dataset the run does not have.
    """
    cfg = run.config.stages.downsample
    wanted = list(cfg.datasets) if cfg.datasets is not None else None
    available: dict[str, list[tuple[str, str]]] = {}
    if run.raw is not None:
        available["raw"] = [("raw", run.raw.url)]
    if run.input_affinities is not None:
        available["affinities"] = [("affinities", run.input_affinities.url)]
    elif run.affinity_stage is not None:
        available["affinities"] = [("affinities", run.dataset_url("affinities"))]
    if run.segmenting:
        # the pieces relabel reads: fragments, or the mws / channel_instances output
        available["fragments"] = [(Path(run.fragments_url).name, run.fragments_url)]
        available["segmentation"] = [
            (f"segmentation/threshold_{float(t)!r}", run.segmentation_url(t)) for t in run.config.relabel_thresholds
        ]
    if run.ground_truth is not None:
        available["ground_truth"] = [("ground_truth", run.ground_truth.url)]
    if wanted is None:
        wanted = [name for name in DEFAULT_DATASETS if name in available]
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ConfigError(
            f"config error: stages.downsample.datasets: {missing} not in this run (it has {sorted(available)})"
        )
    sources = []
    for kind in sorted(set(wanted), key=wanted.index):
        method = "mode" if kind in LABEL_DATASETS else "mean"
        for name, url in available[kind]:
            sources.append(PyramidSource(name, url, pyramid_group_url(run, name), method))
    return sources


def level_factors(run: "Run") -> list[tuple[int, ...]]:
    """Per-level factors of the run's pyramids (each relative to the level above)."""
    return _factors(run.config, run.voxel_size)


def _factors(config: "PipelineConfig", voxel_size: Sequence[int]) -> list[tuple[int, ...]]:
    cfg = config.stages.downsample
    try:
        return downsample_worker.pyramid_factors(voxel_size, cfg.levels, cfg.factor)
    except ValueError as error:
        raise ConfigError(f"config error: stages.downsample: {error}") from None


def check_downsample_config(config: "PipelineConfig", voxel_size: Sequence[int], total_roi: Roi) -> None:
    """Refuse, before any work, factors that do not fit and datasets the run will not have.

    A block must be a whole number of coarsest-level voxels, so that no
    window straddles a block face; along an axis with a single block there is
    no face, and any shape is fine.
    """
    cfg = config.stages.downsample
    if cfg is None:
        return
    factors = _factors(config, voxel_size)
    total = downsample_worker.cumulative_factors(factors)[-1]
    block_voxels = [b // v for b, v in zip(config.block_shape, voxel_size)]
    grid = BlockGrid(total_roi, config.block_shape)
    if any(n > 1 and b % f for b, f, n in zip(block_voxels, total, grid.grid_shape)):
        step = [f * v for f, v in zip(total, voxel_size)]
        raise ConfigError(
            f"config error: stages.downsample: block_shape {list(config.block_shape)} nm is not a multiple of the "
            f"coarsest level's voxel size {step} nm (total factor {list(total)}); use fewer levels or another block shape"
        )
    predict = config.stages.predict
    has = {
        "raw": bool(config.input.raw),
        "ground_truth": bool(config.input.ground_truth),
        "affinities": bool(config.input.affinities)
        or (predict is not None and "affinities" in predict.outputs)
        or config.stages.embeddings_to_affinities is not None,
        # the stage runs after relabel, so these exist whenever it runs
        "fragments": True,
        "segmentation": True,
    }
    missing = [name for name in cfg.datasets or () if not has[name]]
    if missing:
        raise ConfigError(
            f"config error: stages.downsample.datasets: {missing} not in this run "
            f"(it has {[name for name, present in has.items() if present]})"
        )


def ome_multiscales(
    name: str,
    axis_names: Sequence[str],
    channels: int,
    voxel_size: Sequence[int],
    offset: Sequence[int],
    factors: Sequence[Sequence[int]],
    method: str,
) -> dict:
    """The ``ome`` attribute of a pyramid group (OME-Zarr 0.5).

    Examples
    --------
    >>> ome = ome_multiscales("fragments", "zyx", 0, (20, 10, 10), (0, 0, 0), [(1, 2, 2)], "mode")
    >>> [d["coordinateTransformations"][1]["translation"] for d in ome["multiscales"][0]["datasets"]]
    [[10.0, 5.0, 5.0], [10.0, 10.0, 10.0]]
    >>> "image-label" in ome
    True
    """
    axes = [{"name": n, "type": "channel"} for n in axis_names[:channels]]
    axes += [{"name": n, "type": "space", "unit": "nanometer"} for n in axis_names[channels:]]
    datasets = []
    for level, total in enumerate(downsample_worker.cumulative_factors(list(factors))):
        scale = [1.0] * channels + [float(v * f) for v, f in zip(voxel_size, total)]
        # centre of the level's first voxel (see the module docstring)
        translation = [0.0] * channels + [o + v * f / 2 for o, v, f in zip(offset, voxel_size, total)]
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    multiscale = {
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": method,
        "metadata": {"method": f"workers.downsample.downsample_{method}", "factors": [list(f) for f in factors]},
    }
    ome: dict = {"version": OME_VERSION, "multiscales": [multiscale]}
    if method == "mode":
        ome["image-label"] = {}
    return ome


def level_layout(source_layout: dict, block_voxels: Sequence[int], total: Sequence[int]) -> dict:
    """Chunks, shards and codec of a pyramid level, from the layout of its source output.

    A level keeps its source's codec. It is sharded like its source when the
    source is sharded, every shard extent divides by the level's total factor
    ``F_k`` and the level's block (``block / F_k``) is a whole number of the
    scaled shards ``shard / F_k``: then each block still writes whole objects
    of every level, and a level covers the same world region per object as
    level 0. Otherwise the level is stored in plain chunks of one level block
    each (one object per block and level).

    Parameters
    ----------
    source_layout : dict
        Keyword arguments of :func:`~blockseg.volume.create_volume` for the
        source, as :func:`blockseg.layout.output_layout` gives them.
    block_voxels : sequence of int
        The run's block shape in level-0 voxels.
    total : sequence of int
        The level's total factor ``F_k`` relative to level 0.

    Examples
    --------
    >>> source = {"chunk_shape": (8, 64, 64), "shard_shape": (16, 128, 128), "codec": "zstd", "level": None}
    >>> level_layout(source, (16, 128, 128), (1, 2, 2))
    {'chunk_shape': (8, 64, 64), 'shard_shape': (16, 64, 64), 'codec': 'zstd', 'level': None}
    >>> level_layout(source, (16, 128, 128), (32, 2, 2))["shard_shape"] is None  # 16 z voxels do not divide by 32
    True
    """
    level_block = tuple(max(1, b // f) for b, f in zip(block_voxels, total))
    codec = {"codec": source_layout.get("codec", "blosc-zstd"), "level": source_layout.get("level")}
    shard = source_layout.get("shard_shape")
    if shard is not None and all(s % f == 0 for s, f in zip(shard, total)):
        level_shard = tuple(s // f for s, f in zip(shard, total))
        if all(b % s == 0 for b, s in zip(level_block, level_shard)):
            # the source's inner chunk where it still fits, else the largest one that divides the shard
            chunk = tuple(
                largest_divisor_at_most(s, c) for s, c in zip(level_shard, source_layout["chunk_shape"])
            )
            return {"chunk_shape": chunk, "shard_shape": level_shard, **codec}
    return {"chunk_shape": level_block, "shard_shape": None, **codec}


def _source_layout(run: "Run", source: PyramidSource) -> dict:
    """The storage layout the config gives the source (``storage.outputs.<name>`` or ``default``).

    Inputs (raw, ground truth, input affinities) are no outputs of the run;
    their pyramids follow ``storage.outputs.<raw|ground_truth|affinities>``,
    else ``default``, so one config entry sets the codec either way.
    """
    return output_layout(run.config, source.name.split("/")[0], run.block_voxels)


def create_pyramids(run: "Run", token: str) -> None:
    """Create every level array and the groups' OME metadata, under ``token``.

    Everything goes through the storage layer at the run's ``volumes_url``
    (a local folder or ``s3://``, opened with the registered storage
    options), so the pyramids live beside the run's other volumes.
    """
    factors = level_factors(run)
    totals = downsample_worker.cumulative_factors(factors)
    offset = run.total_roi.offset
    level0_shape = tuple(s // v for s, v in zip(run.total_roi.shape, run.voxel_size))
    for source in pyramid_sources(run):
        volume = open_volume(source.source_url)
        channels = volume.channel_shape
        names = volume.axis_names
        source_layout = _source_layout(run, source)
        container, group_path = split_array_url(source.group_url)
        try:
            store = storage.zarr_store(container)
            group = zarr.open_group(store, mode="a")
            for part in group_path.split("/"):
                group = group.require_group(part)
            for level, total in enumerate(totals):
                level_voxel_size = [v * f for v, f in zip(run.voxel_size, total)]
                shape = downsample_worker.downsampled_shape(level0_shape, total)
                layout = level_layout(source_layout, run.block_voxels, total)
                shards = layout["shard_shape"]
                zarr.create_array(
                    store,
                    name=f"{group_path}/s{level}",
                    shape=tuple(channels) + shape,
                    chunks=tuple(channels) + tuple(layout["chunk_shape"]),
                    shards=None if shards is None else tuple(channels) + tuple(shards),
                    dtype=volume.dtype,
                    fill_value=0,
                    compressors=make_compressors(layout["codec"], volume.dtype, layout["level"]),
                    attributes={
                        "voxel_size": level_voxel_size,
                        "offset": list(offset),
                        "axis_names": list(names),
                        "units": ["nm"] * len(level_voxel_size),
                        TOKEN_ATTR: token,
                    },
                    dimension_names=list(names),
                    overwrite=True,
                )
            ome = ome_multiscales(source.name, names, len(channels), run.voxel_size, offset, factors, source.method)
            group.attrs.update({"ome": ome, TOKEN_ATTR: token})
        except VolumeError:
            raise
        except Exception as error:
            if storage.is_remote(container):
                # one line naming the URL, as for the other outputs (never a botocore traceback)
                raise VolumeError(storage.explain(source.group_url, error)) from None
            raise


def _open_level(url: str) -> zarr.Array:
    """A level array for writing, opened as zarr v3 directly.

    ``create_pyramids`` made it, so its format is known: naming it spares
    the probes for zarr v2 metadata that a format-guessing open makes, several
    requests per level and block on an object store.
    """
    container, path = split_array_url(url)
    try:
        return zarr.open_array(storage.zarr_store(container), path=path, mode="r+", zarr_format=3)
    except Exception as error:
        if storage.is_remote(container):
            raise VolumeError(storage.explain(url, error)) from None
        raise


def downsample_block(
    block: Block,
    sources: Sequence[tuple[str, Sequence[str], str]],
    total_offset: Sequence[int],
    voxel_size: Sequence[int],
    factors: Sequence[Sequence[int]],
) -> BlockOutput:
    """Write the block's part of every level of every pyramid.

    ``sources`` holds ``(level-0 url, [level urls], method)`` triples.
    """
    totals = downsample_worker.cumulative_factors(factors)
    start = [(o - t) // v for o, t, v in zip(block.write_roi.offset, total_offset, voxel_size)]
    voxels = 0
    for source_url, level_urls, method in sources:
        data = open_volume(source_url).read(block.write_roi)
        levels = downsample_worker.pyramid(data, factors, method)
        for level, url, total in zip(levels, level_urls, totals):
            array = _open_level(url)
            spatial = level.shape[level.ndim - len(total) :]
            # exact: a block starts at a multiple of every level's total factor
            first = [s // f for s, f in zip(start, total)]
            channels = (slice(None),) * (level.ndim - len(total))
            array[channels + tuple(slice(b, b + n) for b, n in zip(first, spatial))] = level
        voxels += int(math.prod(data.shape))
    return BlockOutput(stats={"voxels": voxels})
