"""The stage registry, the order stages run in, and the run's ledger.

Each stage's results carry a *token*: a fresh id written into its output
datasets (or kept in the store for graph-only stages) whenever the stage is
reset, together with a *fingerprint* of what the results were computed from
(the stage's parameters, the identity of its inputs and the tokens of the
stages it reads). At the start of a stage the ledger is trusted only if the
fingerprint still matches and every output still carries the token; otherwise
(an output deleted, a parameter changed, an upstream stage recomputed, or
``--restart``) the stage's rows, done marks and outputs are dropped and it runs
from scratch. That is how a rerun never trusts stale done marks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from distributed import Client

from blockseg import embedding_stages, sources
from blockseg import stages as block_functions
from blockseg.blocks import AlignmentError, BlockGrid
from blockseg.config import ConfigError, PipelineConfig
from blockseg.geometry import Roi
from blockseg.graph import GraphStore, StoreError, open_store
from blockseg.graph.base import BlockOutput, StageState
from blockseg.layout import check_layouts, output_layout, prepare_storage
from blockseg.scheduler import StageFailed, StageReport, run_stage, workers_info
from blockseg.segments import connected_component_luts
from blockseg.storage import install_on_workers
from blockseg.volume import TOKEN_ATTR, Volume, VolumeError, create_volume, open_volume
from workers import evaluate as evaluate_worker

log = logging.getLogger("blockseg")

STAGE_ORDER = (
    "predict", "lsds", "channels", "weights", "embeddings_to_affinities", "pca_preview", "check",
    "fragments", "agglomerate", "mws", "channel_instances", "stitch", "segments", "relabel", "evaluate",
    "downsample",
)
TARGET_STAGES = ("lsds", "channels", "weights")
# stages that make fragments for segments / relabel / evaluate, and their datasets
FRAGMENT_STAGES = {"fragments": "fragments", "mws": "mws", "channel_instances": "instances"}


class InputError(ValueError):
    """An input cannot be used; the message is one line."""


@dataclass
class OutputSpec:
    """A dataset a stage creates when it is reset."""

    url: str
    dtype: str
    chunk_shape: tuple[int, ...]
    channels: tuple[int, ...] = ()
    roi: Roi | None = None  # default: the run's total ROI
    aligned: bool = True  # whether blocks write whole chunks of it (the halo slots are laid out otherwise)
    axis_names: tuple[str, ...] | None = None
    attrs: dict = field(default_factory=dict)


@dataclass
class Run:
    """Everything the stages of one run share, validated before any work."""

    config: PipelineConfig
    store: GraphStore
    input_affinities: Volume | None
    ground_truth: Volume | None
    total_roi: Roi
    raw: Volume | None = None
    reports: dict[str, StageReport] = field(default_factory=dict)
    scores: dict | None = None
    client: Client | None = None
    input_embeddings: Volume | None = None
    input_channels: Volume | None = None
    pca_model: object | None = None  # fitted by pca_preview's prepare step, bound into its blocks
    input_boundaries: Volume | None = None
    mask: Volume | None = None

    @property
    def source(self) -> tuple[Volume, str]:
        """What the fragments and agglomerate stages segment: (volume, "affinities" or "boundaries")."""
        if self.input_boundaries is not None:
            return self.input_boundaries, sources.BOUNDARIES
        return self.affinities, sources.AFFINITIES

    @property
    def fragment_stage(self) -> str:
        """The stage whose pieces the segments, relabel and evaluate stages read."""
        stages = self.config.stages
        if stages.mws is not None:
            return "mws"
        if stages.channel_instances is not None:
            return "channel_instances"
        return "fragments"

    @property
    def embeddings_predicted(self) -> bool:
        predict = self.config.stages.predict
        return self.input_embeddings is None and predict is not None and "embeddings" in predict.outputs

    @property
    def embeddings(self) -> Volume | None:
        """The input embeddings, or the predicted ones once the predict stage made them."""
        if self.input_embeddings is not None or not self.embeddings_predicted:
            return self.input_embeddings
        try:
            return open_volume(self.dataset_url("embeddings"))
        except VolumeError:
            return None

    @property
    def affinity_stage(self) -> str | None:
        """The stage that writes the affinities, or None when they are an input (or absent)."""
        if self.input_affinities is not None:
            return None
        if self.config.stages.embeddings_to_affinities is not None:
            return "embeddings_to_affinities"
        return "predict" if self.predicted else None

    @property
    def channels_source(self) -> Volume | None:
        """What channel_instances reads: input.channels, else the channels stage's output."""
        if self.input_channels is not None:
            return self.input_channels
        try:
            return open_volume(self.dataset_url("channels"))
        except VolumeError:
            return None

    @property
    def halos_url(self) -> str:
        """Each block's segmentation of its read ROI, for the stitch stage."""
        return self.dataset_url(f"{FRAGMENT_STAGES[self.fragment_stage]}_halos")

    @property
    def predicted(self) -> bool:
        """Whether the affinities come from the predict stage."""
        predict = self.config.stages.predict
        return self.input_affinities is None and predict is not None and "affinities" in predict.outputs

    @property
    def affinities(self) -> Volume | None:
        """The input affinities, or the ones the predict / embeddings_to_affinities stage made."""
        if self.affinity_stage is None:
            return self.input_affinities
        try:
            return open_volume(self.dataset_url("affinities"))
        except VolumeError:
            return None

    @property
    def mws_on_embeddings(self) -> bool:
        """Whether the mws stage segments the embeddings directly (stages.mws.distance)."""
        return self.config.stages.mws is not None and self.config.stages.mws.distance is not None

    @property
    def has_affinities(self) -> bool:
        """Whether affinities are an input or come from a stage of this run."""
        if self.affinity_stage == "embeddings_to_affinities":
            return self.input_embeddings is not None or self.embeddings_predicted
        return self.input_affinities is not None or self.input_boundaries is not None or self.predicted

    @property
    def segmenting(self) -> bool:
        if self.fragment_stage == "channel_instances":
            return self.input_channels is not None or (
                self.config.stages.channels is not None and self.ground_truth is not None
            )
        if self.mws_on_embeddings:
            return self.input_embeddings is not None or self.embeddings_predicted
        return self.has_affinities

    @property
    def reference(self) -> Volume:
        """The input that fixes the voxel size and the ROI: affinities, embeddings, channels, raw, else ground truth."""
        for volume in (
            self.input_affinities, self.input_boundaries, self.input_embeddings, self.input_channels, self.raw,
            self.ground_truth,
        ):
            if volume is not None:
                return volume
        raise AssertionError("the config requires an input")

    @property
    def voxel_size(self) -> tuple[int, ...]:
        return self.reference.voxel_size

    @property
    def output_dir(self) -> Path:
        return self.config.output_dir

    def dataset_url(self, name: str) -> str:
        return f"{self.config.volumes_url}/{name}"

    @property
    def fragments_url(self) -> str:
        return self.dataset_url(FRAGMENT_STAGES[self.fragment_stage])

    def segmentation_url(self, threshold: float) -> str:
        return self.dataset_url(f"segmentation/threshold_{float(threshold)!r}")

    @property
    def block_shape(self) -> tuple[int, ...]:
        return tuple(self.config.block_shape)

    @property
    def block_voxels(self) -> tuple[int, ...]:
        return tuple(b // v for b, v in zip(self.block_shape, self.voxel_size))

    @property
    def ids_per_block(self) -> int:
        return self.config.stages.fragments.ids_per_block or int(np.prod(self.block_voxels)) + 1

    def grid(self, context_nm: Sequence[int] | None = None) -> BlockGrid:
        return BlockGrid(self.total_roi, self.block_shape, context_nm)


# -- validation --------------------------------------------------------------


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
        embedding_stages.check_channel_input(embeddings, "input.embeddings", affinities if affinities is not None else raw)
    if config.input.channels:
        channels = _open_input(config.resolve(config.input.channels), "input.channels")
        first = next((v for v in (affinities, embeddings, raw) if v is not None), None)
        embedding_stages.check_channel_input(channels, "input.channels", first)
    truth = None
    if config.input.ground_truth:
        truth = _open_input(config.resolve(config.input.ground_truth), "input.ground_truth")
        _check_ground_truth(truth, next((v for v in (affinities, embeddings, channels, raw) if v is not None), None))
    reference = next(v for v in (affinities, embeddings, channels, raw, truth) if v is not None)
    total_roi = _total_roi(config, reference)
    mask = None
    if config.input.mask:
        mask = _open_input(config.resolve(config.input.mask), "input.mask")
        _check_mask(mask, reference, total_roi)
    _check_blocks(config, reference, total_roi)
    check_layouts(config, reference.voxel_size)
    check_targets(config, reference.voxel_size)
    embedding_stages.check_config(config, affinities, embeddings, channels, truth)
    if config.stages.downsample is not None:
        from blockseg.pyramid import check_downsample_config

        check_downsample_config(config, reference.voxel_size, total_roi)
    wanted = [n for n in TARGET_STAGES if getattr(config.stages, n) is not None]
    if wanted and truth is None:
        raise ConfigError(f"config error: stages.{wanted[0]}: needs input.ground_truth")
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
        input_boundaries=boundaries, mask=mask,
    )


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


# -- stages ------------------------------------------------------------------


@dataclass
class Stage:
    """One entry of the registry."""

    name: str
    needs: tuple[str, ...]
    enabled: Callable[[Run], bool]
    params: Callable[[Run], dict]
    outputs: Callable[[Run], list[OutputSpec]]
    context: Callable[[Run], tuple[int, ...] | None]
    block_function: Callable[[Run], Callable] | None
    finish: Callable[[Run], None] | None = None
    global_step: Callable[[Run], None] | None = None
    prepare: Callable[[Run], None] | None = None
    resources: Callable[[Run], dict] | None = None
    # creates the outputs under a token when they are not all at the run's voxel size (pyramid levels)
    create_outputs: Callable[[Run, str], None] | None = None


def _fragments_context(run: Run) -> tuple[int, ...]:
    cfg = run.config.stages.fragments
    if cfg.context is not None:
        return tuple(cfg.context)
    return fragments_context(cfg.method, cfg.min_seed_distance, cfg.smooth_sigma, run.voxel_size)


def fragments_context(
    method: str, min_seed_distance: float, smooth_sigma: float, voxel_size: Sequence[int]
) -> tuple[int, ...]:
    """The default context of the fragments stage, nm (whole voxels).

    distance_watershed: twice the seed distance lets the distance transform
    and the seeds near the block faces see what lies beyond them.
    boundary_watershed: half the seed window plus the smoothing kernel (3
    sigma), so a seed near the face is decided on the same values as in the
    whole volume (a larger context measured no better: gala VOI 0.234 with
    70 nm, 0.232 with 120 nm; the demo 0.172 with both).
    mutex_watershed: 8 voxels, as the agglomerate stage reads.
    """
    if method == "distance_watershed":
        reach = [2 * min_seed_distance] * len(voxel_size)
    elif method == "boundary_watershed":
        reach = [min_seed_distance / 2 + 3 * smooth_sigma] * len(voxel_size)
    else:
        reach = [8 * v for v in voxel_size]
    return tuple(int(np.ceil(r / v)) * v for r, v in zip(reach, voxel_size))


def _agglomerate_context(run: Run) -> tuple[int, ...]:
    cfg = run.config.stages.agglomerate
    if cfg.context is not None:
        return tuple(cfg.context)
    return tuple(8 * v for v in run.voxel_size)


def _input_identity(volume: Volume | None) -> dict | None:
    if volume is None:
        return None
    return {
        "url": volume.url,
        "shape": list(volume.array.shape),
        "dtype": str(volume.dtype),
        "voxel_size": list(volume.voxel_size),
        "offset": list(volume.offset),
        "token": volume.token,
    }


def _chunk_shape(run: Run, configured: list[int] | None) -> tuple[int, ...]:
    return tuple(configured) if configured else run.block_voxels


def _check_step(run: Run) -> None:
    """Scan the affinities on the cluster; record nothing unless they are clean.

    The scan's per-block ledger is kept in memory: a bad input must leave
    every output, the graph store included, exactly as it was.
    """
    from blockseg.graph.sqlite import SqliteGraphStore

    scratch = SqliteGraphStore(":memory:")
    try:
        run_stage(
            run.client,
            "check",
            run.grid(),
            functools.partial(block_functions.check_affinities_block, affinities_url=run.source[0].url),
            scratch,
            retries=run.config.scheduler.retries,
            window_per_thread=run.config.scheduler.window_per_thread,
            progress=run.config.scheduler.progress,
        )
        summaries = [json.loads(data) for data in scratch.block_results("check").values()]
    finally:
        scratch.close()
    volume, kind = run.source
    key = f"input.{kind}: {volume.url}"
    nan_blocks = [s for s in summaries if s["nan"]]
    if nan_blocks:
        count = sum(s["nan"] for s in nan_blocks)
        raise InputError(
            f"{key} contains {count} NaN/inf value(s) in "
            f"{len(nan_blocks)} block(s); fix the prediction or mask it before segmenting"
        )
    low = min((s["min"] for s in summaries), default=0.0)
    high = max((s["max"] for s in summaries), default=0.0)
    if low < -1e-6 or high > 1 + 1e-6:
        raise InputError(
            f"{key} has values in [{low:g}, {high:g}]; expected [0, 1]"
        )


def _segments_step(run: Run) -> None:
    nodes = run.store.read_nodes()
    edges = run.store.read_edges()
    thresholds = run.config.stages.segments.thresholds
    for threshold, fragment_ids, segment_ids in connected_component_luts(
        nodes.ids, edges.u, edges.v, edges.scores, thresholds
    ):
        run.store.write_lut(threshold, fragment_ids, segment_ids)
        log.info("segments: threshold %r: %d fragments -> %d segments", threshold, len(fragment_ids), len(np.unique(segment_ids)))


def _evaluate_finish(run: Run) -> None:
    tables = [block_functions.unpack_arrays(data) for data in run.store.block_results("evaluate").values()]
    table = evaluate_worker.merge_contingency(tuple(t) for t in tables)
    scores = {"fragments": evaluate_worker.scores_from_contingency(table)}
    per_threshold = {}
    for threshold in run.config.stages.segments.thresholds:
        lut_ids, lut_segments = run.store.read_lut(threshold)
        relabelled = evaluate_worker.relabel_contingency(table, lut_ids, lut_segments)
        per_threshold[repr(float(threshold))] = evaluate_worker.scores_from_contingency(relabelled)
    best = min(per_threshold, key=lambda t: per_threshold[t]["voi_sum"])
    scores["thresholds"] = per_threshold
    scores["best"] = {"threshold": float(best), **per_threshold[best]}
    path = run.output_dir / "scores.json"
    path.write_text(json.dumps(scores, indent=2))
    run.scores = scores


def _registry() -> dict[str, Stage]:
    always = lambda run: run.segmenting  # noqa: E731 - the segmentation stages need affinities
    # fragments + agglomerate are one way to pieces and edges; mws / channel_instances + stitch another
    classic = lambda run: run.segmenting and run.fragment_stage == "fragments"  # noqa: E731
    none: Callable[[Run], list[OutputSpec]] = lambda run: []  # noqa: E731
    stages = [
        Stage(
            "check",
            needs=(),
            enabled=lambda run: (
                (run.input_affinities is not None or run.input_boundaries is not None) and run.config.scheduler.check_inputs
            ),
            params=lambda run: {},
            outputs=none,
            context=lambda run: None,
            block_function=None,
            global_step=_check_step,
        ),
        Stage(
            "fragments",
            needs=(),
            enabled=classic,
            params=lambda run: {
                **run.config.stages.fragments.model_dump(),
                "ids_per_block": run.ids_per_block,
                "context": _fragments_context(run),
            },
            outputs=lambda run: [
                OutputSpec(run.fragments_url, "uint64", _chunk_shape(run, run.config.stages.fragments.chunk_shape))
            ],
            context=_fragments_context,
            block_function=lambda run: functools.partial(
                block_functions.fragments_block,
                source_url=run.source[0].url,
                source_kind=run.source[1],
                mask_url=run.mask.url if run.mask is not None else None,
                fragments_url=run.fragments_url,
                ids_per_block=run.ids_per_block,
                **run.config.stages.fragments.model_dump(exclude={"context", "ids_per_block", "chunk_shape"}),
            ),
        ),
        Stage(
            "agglomerate",
            needs=("fragments",),
            enabled=classic,
            params=lambda run: {**run.config.stages.agglomerate.model_dump(), "context": _agglomerate_context(run)},
            outputs=none,
            context=_agglomerate_context,
            block_function=lambda run: functools.partial(
                block_functions.agglomerate_block,
                source_url=run.source[0].url,
                source_kind=run.source[1],
                mask_url=run.mask.url if run.mask is not None else None,
                fragments_url=run.fragments_url,
                ids_per_block=run.ids_per_block,
                scoring=run.config.stages.agglomerate.scoring,
                discretize_queue=run.config.stages.agglomerate.discretize_queue,
            ),
        ),
        Stage(
            "segments",
            needs=("fragments", "agglomerate"),
            enabled=always,
            params=lambda run: run.config.stages.segments.model_dump(),
            outputs=none,
            context=lambda run: None,
            block_function=None,
            global_step=_segments_step,
        ),
        Stage(
            "relabel",
            needs=("fragments", "segments"),
            enabled=always,
            params=lambda run: {**run.config.stages.relabel.model_dump(), "thresholds": run.config.relabel_thresholds},
            outputs=lambda run: [
                OutputSpec(run.segmentation_url(t), "uint64", _chunk_shape(run, run.config.stages.relabel.chunk_shape))
                for t in run.config.relabel_thresholds
            ],
            context=lambda run: None,
            block_function=lambda run: functools.partial(
                block_functions.relabel_block,
                fragments_url=run.fragments_url,
                segmentation_urls=[run.segmentation_url(t) for t in run.config.relabel_thresholds],
                lut_paths=[str(run.store.lut_path(t)) for t in run.config.relabel_thresholds],
                ids_per_block=run.ids_per_block,
            ),
        ),
        Stage(
            "evaluate",
            needs=("fragments", "segments"),
            enabled=lambda run: (
                run.segmenting and run.ground_truth is not None and run.config.stages.evaluate.enabled
            ),
            params=lambda run: {},
            outputs=none,
            context=lambda run: None,
            block_function=lambda run: functools.partial(
                block_functions.contingency_block,
                labels_url=run.fragments_url,
                ground_truth_url=run.ground_truth.url,
            ),
            finish=_evaluate_finish,
        ),
    ]
    stages += [_target_stage(name) for name in TARGET_STAGES]
    stages.append(_predict_stage())
    stages += embedding_stages.registry_entries()
    from blockseg.pyramid import downsample_stage  # here: pyramid.py imports this module's names lazily

    stages.append(downsample_stage())
    return {stage.name: stage for stage in stages}


# -- training targets ----------------------------------------------------------


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
                _chunk_shape(run, getattr(run.config.stages, name).chunk_shape), _target_channels(run, name),
            )
        ],
        context=lambda run: _target_context(run, name),
        block_function=lambda run: functools.partial(
            block_functions.targets_block,
            labels_url=run.ground_truth.url,
            output_url=run.dataset_url(name),
            target=name,
            params=_target_params(run, name),
        ),
    )


def _predict_outputs(run: Run) -> list[OutputSpec]:
    cfg = run.config.stages.predict
    chunk = _chunk_shape(run, cfg.chunk_shape)
    return [OutputSpec(run.dataset_url(name), cfg.output_dtype, chunk, (count,)) for name, count in cfg.outputs.items()]


def _predict_context(run: Run) -> tuple[int, ...]:
    cfg = run.config.stages.predict
    return tuple((i - o) // 2 * v for i, o, v in zip(cfg.input_shape, cfg.output_shape, run.voxel_size))


def _predict_prepare(run: Run) -> None:
    """Load the model where blocks run and try it on one window, before anything is written."""
    from workers.predict import ModelError

    cfg = run.config.stages.predict
    spec = _model_spec(run)
    resources = _predict_resources(run)
    if resources and not _cluster_has(run.client, "GPU"):
        raise InputError(
            f"stages.predict: device {cfg.device} needs a worker with the GPU resource, and no worker has one "
            f"(start GPU workers, e.g. cluster.slurm.resources: {{GPU: 1}})"
        )
    # every worker that will predict loads the model now, in parallel, so a
    # worker that cannot is found before any block, and loading is not timed
    workers = _workers_with(run.client, resources)
    try:
        run.client.run(
            block_functions.probe_model, spec, cfg.device, cfg.input_shape, cfg.output_shape,
            sum(cfg.outputs.values()), workers=workers,
        )
    except ModelError as error:
        raise InputError(f"stages.predict: {error}") from None


def _workers_with(client: Client, resources: dict) -> list[str]:
    workers = workers_info(client)
    return [
        address for address, info in workers.items()
        if all(info.get("resources", {}).get(name, 0) >= amount for name, amount in resources.items())
    ]


def _cluster_has(client: Client, resource: str) -> bool:
    workers = workers_info(client)
    return any(info.get("resources", {}).get(resource, 0) > 0 for info in workers.values())


def _model_spec(run: Run) -> str:
    """The model spec with a file path taken relative to the config's folder."""
    spec = run.config.stages.predict.model
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in ("torchscript", "onnx"):
        return f"{scheme}:{run.config.resolve(rest)}"
    return spec


def _predict_stage() -> Stage:
    def block_function(run: Run):
        cfg = run.config.stages.predict
        return functools.partial(
            block_functions.predict_block,
            raw_url=run.raw.url,
            output_urls=[run.dataset_url(name) for name in cfg.outputs],
            output_channels=list(cfg.outputs.values()),
            spec=_model_spec(run),
            device=cfg.device,
            input_shape=cfg.input_shape,
            output_shape=cfg.output_shape,
            normalize_mode=cfg.normalize,
            mean=cfg.mean,
            std=cfg.std,
            output_dtype=cfg.output_dtype,
            batch_size=cfg.batch_size,
        )

    return Stage(
        "predict",
        needs=(),
        enabled=lambda run: run.config.stages.predict is not None and run.raw is not None,
        params=lambda run: {**run.config.stages.predict.model_dump(), "model": _model_identity(run)},
        outputs=_predict_outputs,
        context=_predict_context,
        block_function=block_function,
        prepare=_predict_prepare,
        resources=_predict_resources,
    )


def _predict_resources(run: Run) -> dict:
    """GPU blocks go to workers that advertise a GPU (cluster.slurm.resources: {GPU: 1})."""
    return {"GPU": 1} if run.config.stages.predict.device.startswith("cuda") else {}


def _model_identity(run: Run) -> dict:
    """The model spec and, for a file, its size and time: a new model reruns the stage."""
    spec = _model_spec(run)
    scheme, _, rest = spec.partition(":")
    identity = {"spec": spec}
    if scheme in ("torchscript", "onnx") and Path(rest).exists():
        stat = Path(rest).stat()
        identity.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return identity


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


STAGES = _registry()


# -- the ledger ----------------------------------------------------------------


AFFINITY_READERS = ("check", "fragments", "agglomerate", "mws")
EMBEDDING_READERS = ("embeddings_to_affinities", "pca_preview")


def stage_needs(run: Run, stage: Stage) -> tuple[str, ...]:
    """The stages whose results ``stage`` reads.

    Besides the fixed ``needs``: the stage that makes the affinities
    (predict, embeddings_to_affinities) for those that read them, predict for
    the readers of predicted embeddings, the channels stage for
    channel_instances without input.channels, and, when mws or
    channel_instances make the pieces, those in place of fragments and the
    stitch stage in place of agglomerate.
    """
    needs = stage.needs
    reads_embeddings = stage.name in EMBEDDING_READERS or (stage.name == "mws" and run.mws_on_embeddings)
    if stage.name in AFFINITY_READERS and run.affinity_stage is not None and not reads_embeddings:
        needs = (run.affinity_stage,) + needs
    if reads_embeddings and run.embeddings_predicted:
        needs = ("predict",) + needs
    if stage.name == "channel_instances" and run.input_channels is None:
        needs = ("channels",) + needs
    if stage.name == "stitch":
        needs = (run.fragment_stage,)
    source = run.fragment_stage
    if source != "fragments" and stage.name in ("segments", "relabel", "evaluate"):
        needs = tuple({"fragments": source, "agglomerate": "stitch"}.get(n, n) for n in needs)
    return needs


def fingerprint(run: Run, stage: Stage) -> str:
    """What a stage's results depend on, hashed."""
    upstream = {}
    for name in stage_needs(run, stage):
        state = run.store.stage_state(name)
        upstream[name] = state.token if state else None
    description = {
        "stage": stage.name,
        "params": stage.params(run),
        # predicted affinities are identified by the predict stage's token instead
        "affinities": _input_identity(run.input_affinities) if stage.name in AFFINITY_READERS else None,
        **(
            {"boundaries": _input_identity(run.input_boundaries), "mask": _input_identity(run.mask)}
            if stage.name in AFFINITY_READERS and (run.input_boundaries is not None or run.mask is not None)
            else {}
        ),
        "raw": _input_identity(run.raw) if stage.name == "predict" else None,
        "ground_truth_input": _input_identity(run.ground_truth) if stage.name in TARGET_STAGES else None,
        "ground_truth": _input_identity(run.ground_truth) if stage.name == "evaluate" else None,
        "roi": [list(run.total_roi.offset), list(run.total_roi.shape)],
        "block_shape": list(run.block_shape),
        "upstream": upstream,
    }
    if stage.name in EMBEDDING_READERS or (stage.name == "mws" and run.mws_on_embeddings):
        description["embeddings"] = _input_identity(run.input_embeddings)
    if stage.name == "channel_instances":
        description["channels_input"] = _input_identity(run.input_channels)
    text = json.dumps(description, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def _outputs_intact(run: Run, stage: Stage, token: str) -> bool:
    for spec in stage.outputs(run):
        try:
            volume = open_volume(spec.url)
        except VolumeError:
            return False
        if volume.token != token:
            return False
    if stage.name == "segments":
        return all(run.store.lut_path(t).exists() for t in run.config.stages.segments.thresholds)
    return True


def is_current(run: Run, stage: Stage) -> bool:
    """Whether the ledger of ``stage`` can be trusted (else it is reset before running)."""
    state = run.store.stage_state(stage.name)
    if state is None or state.fingerprint != fingerprint(run, stage):
        return False
    return _outputs_intact(run, stage, state.token)


def _output_layout(run: Run, spec: OutputSpec) -> dict:
    """Chunks, shards and codec of an output, from ``storage.outputs`` in the config."""
    if not spec.aligned:
        # laid out on its own grid (halo slots): blocks do not write whole block-sized shards of it
        return {"chunk_shape": spec.chunk_shape}
    name = spec.url[len(run.config.volumes_url) + 1 :].split("/")[0]
    # a chunk_shape equal to the block is the stage's default, not a setting
    stage_chunk = spec.chunk_shape if tuple(spec.chunk_shape) != run.block_voxels else None
    return output_layout(run.config, name, run.block_voxels, stage_chunk)


def reset_stage(run: Run, stage: Stage) -> StageState:
    """Drop a stage's results and create its outputs afresh under a new token."""
    run.store.drop_stage(stage.name)
    token = uuid.uuid4().hex
    for spec in stage.outputs(run) if stage.create_outputs is None else ():
        layout = _output_layout(run, spec)
        create_volume(
            spec.url, spec.roi or run.total_roi, run.voxel_size, spec.dtype, layout.pop("chunk_shape"), spec.channels,
            axis_names=spec.axis_names, attrs={**spec.attrs, TOKEN_ATTR: token}, **layout,
        )
    if stage.create_outputs is not None:
        stage.create_outputs(run, token)
    if stage.name == "segments":
        run.store.drop_luts()
    state = StageState(fingerprint(run, stage), token)
    run.store.set_stage_state(stage.name, state)
    return state


def _total(run: Run, stage: Stage) -> int:
    return 1 if stage.global_step else run.grid().num_blocks


def stage_progress(run: Run, stage: Stage) -> tuple[int, int, bool]:
    """``(done, total, current)`` for ``blockseg status``."""
    total = _total(run, stage)
    current = is_current(run, stage)
    done = len(run.store.done_blocks(stage.name)) if current else 0
    return done, total, current


def _check_needs(run: Run, stage: Stage) -> None:
    for name in stage_needs(run, stage):
        need = STAGES[name]
        done, total, current = stage_progress(run, need)
        if not current or done < total:
            raise InputError(f"stage {stage.name} needs stage {name} to finish first ({done}/{total} blocks done)")


# -- running -------------------------------------------------------------------


def run_one_stage(run: Run, stage: Stage, client: Client, restart: bool = False) -> StageReport:
    """Run a stage, resuming from the ledger unless it is stale or ``restart``."""
    _check_needs(run, stage)
    run.client = client
    install_on_workers(client)
    if stage.name == "check":
        return _run_check(run, stage)
    current = is_current(run, stage)
    if stage.prepare is not None and (restart or not current or len(run.store.done_blocks(stage.name)) < _total(run, stage)):
        stage.prepare(run)
    if restart or not current:
        state = reset_stage(run, stage)
        log.info("%s: starting afresh", stage.name)
    else:
        state = run.store.stage_state(stage.name)
        assert state is not None
    scheduler = run.config.scheduler
    if stage.global_step is not None:
        report = StageReport(stage.name, total=1)
        if run.store.done_blocks(stage.name):
            report.skipped = 1
        else:
            import time

            start = time.perf_counter()
            stage.global_step(run)
            run.store.commit_block(stage.name, 0, BlockOutput())
            report.succeeded = 1
            report.seconds = time.perf_counter() - start
        log.info(report.summary())
    else:
        assert stage.block_function is not None
        grid = run.grid(stage.context(run))
        if stage.outputs(run):
            try:
                grid.check_alignment([open_volume(spec.url) for spec in stage.outputs(run) if spec.aligned])
            except AlignmentError as error:
                raise ConfigError(f"config error: {error}") from None
        failures_file = run.output_dir / "logs" / f"failed-{stage.name}.json"
        try:
            report = run_stage(
                client,
                stage.name,
                grid,
                stage.block_function(run),
                run.store,
                retries=scheduler.retries,
                window_per_thread=scheduler.window_per_thread,
                progress=scheduler.progress,
                token=state.token,
                block_timeout=scheduler.block_timeout,
                resources=stage.resources(run) if stage.resources else None,
            )
        except StageFailed as failed:
            # for `blockseg status`, which has no other way to know
            failures_file.parent.mkdir(parents=True, exist_ok=True)
            failures_file.write_text(json.dumps([vars(f) for f in failed.report.failures], indent=2))
            raise
        failures_file.unlink(missing_ok=True)
    if stage.finish is not None:
        stage.finish(run)
    run.reports[stage.name] = report
    return report


def _run_check(run: Run, stage: Stage) -> StageReport:
    """The input check: skipped while the inputs are those it last passed."""
    report = StageReport(stage.name, total=1)
    if is_current(run, stage) and run.store.done_blocks(stage.name):
        report.skipped = 1
    else:
        import time

        start = time.perf_counter()
        _check_step(run)
        # Only a clean scan reaches the store.
        run.store.drop_stage(stage.name)
        run.store.set_stage_state(stage.name, StageState(fingerprint(run, stage), uuid.uuid4().hex))
        run.store.commit_block(stage.name, 0, BlockOutput())
        report.succeeded = 1
        report.seconds = time.perf_counter() - start
    log.info(report.summary())
    run.reports[stage.name] = report
    return report


def select_stages(run: Run, names: Sequence[str] | None) -> list[Stage]:
    """The stages to run, in pipeline order."""
    if names:
        unknown = [n for n in names if n not in STAGES]
        if unknown:
            raise ConfigError(f"--stages: unknown stage(s) {unknown}; expected some of {list(STAGE_ORDER)}")
    chosen = [STAGES[n] for n in STAGE_ORDER if (not names or n in names)]
    return [stage for stage in chosen if stage.enabled(run)]


def run_pipeline(
    run: Run, client: Client, stages: Sequence[str] | None = None, restart: bool = False
) -> dict[str, StageReport]:
    """Run the chosen stages (default: all enabled ones) in order."""
    chosen = select_stages(run, stages)
    if any(stage.name in ("fragments", "agglomerate") for stage in chosen):
        from blockseg.warmup import warm_up_workers

        warm_up_workers(client)
    for stage in chosen:
        run_one_stage(run, stage, client, restart=restart and stage.name != "check")
    return run.reports
