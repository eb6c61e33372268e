"""The state one run's stages share: the config, the graph store, the opened inputs, the ROI.

:func:`blockseg.inputs.open_run` makes a :class:`Run` after checking the
config against its inputs; every task reads what it needs from it (the
voxel size, dataset URLs, which stage makes the fragments, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from distributed import Client

from blockseg import sources
from blockseg.blocks import BlockGrid
from blockseg.config import PipelineConfig
from blockseg.geometry import Roi
from blockseg.graph import GraphStore
from blockseg.scheduler import StageReport
from blockseg.volume import Volume, VolumeError, open_volume

TARGET_STAGES = ("lsds", "channels", "weights")
# stages that make fragments for segments / relabel / evaluate, and their datasets
FRAGMENT_STAGES = {"fragments": "fragments", "mws": "mws", "channel_instances": "instances"}
# the stages that read the affinities (or boundaries) of the run
AFFINITY_READERS = ("check", "fragments", "agglomerate", "mws")
EMBEDDING_READERS = ("embeddings_to_affinities", "pca_preview")


class InputError(ValueError):
    """An input cannot be used; the message is one line."""


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
    # the users' tasks of the config, resolved against this run and in the order they run
    user_tasks: list = field(default_factory=list)
    # the stages.fragments keys the config left out, as blockseg/data_defaults.py filled them
    data_defaults: dict = field(default_factory=dict)

    @property
    def source(self) -> tuple[Volume, str]:
        """What the fragments and agglomerate stages segment: (volume, "affinities" or "boundaries")."""
        if self.input_boundaries is not None:
            return self.input_boundaries, sources.BOUNDARIES
        return self.affinities, sources.AFFINITIES

    def source_arguments(self) -> dict:
        """What the fragments and agglomerate block functions are bound with to read their input."""
        volume, kind = self.source
        return {
            "source_url": volume.url,
            "source_kind": kind,
            "mask_url": self.mask.url if self.mask is not None else None,
            "fragments_url": self.fragments_url,
            "ids_per_block": self.ids_per_block,
        }

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


def input_identity(volume: Volume | None) -> dict | None:
    """What identifies an input in a fingerprint: URL, shape, dtype, geometry and token."""
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


def chunk_shape(run: Run, configured: list[int] | None) -> tuple[int, ...]:
    """An output's chunks in voxels: the configured ones, else one chunk per block."""
    return tuple(configured) if configured else run.block_voxels
