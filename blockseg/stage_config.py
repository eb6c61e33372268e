"""The ``stages:`` section of a pipeline YAML: one pydantic model per built-in stage.

:mod:`blockseg.config` validates the whole YAML with them (and re-exports
them); ``blockseg tasks`` lists their parameters and defaults.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.channels import CHANNEL_SETS as WORKER_CHANNEL_SETS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _positive(values: Optional[list[int]], name: str) -> Optional[list[int]]:
    if values is not None and any(v <= 0 for v in values):
        raise ValueError(f"{name} must be positive, got {values}")
    return values


def _non_negative(values: Optional[list[int]], name: str) -> Optional[list[int]]:
    if values is not None and any(v < 0 for v in values):
        raise ValueError(f"{name} must not be negative, got {values}")
    return values



# what a data-dependent default says of itself (blockseg/data_defaults.py has the rules)
FROM_THE_DATA = "unset: from the input and voxel size"


class FragmentsConfig(_Strict):
    """Fragments: a seeded watershed over the affinity edges, of the boundary map or of the distance to it, or mutex watershed."""

    method: Optional[Literal["affinity_watershed", "boundary_watershed", "distance_watershed", "mutex_watershed"]] = Field(
        None,
        description=f"how fragments are made; {FROM_THE_DATA}: affinity_watershed for input.affinities, "
        "boundary_watershed for input.boundaries",
    )
    context: Optional[list[int]] = Field(
        None, description="nm read beyond each block; default depends on the method (see the README)"
    )
    boundary_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="distance_watershed: mean affinity at or below which a voxel is boundary"
    )
    min_seed_distance: Optional[Union[float, list[float]]] = Field(
        None,
        description="nm between seeds (the watersheds), one number or one per axis (z, y, x; 0: seeds per "
        f"section); {FROM_THE_DATA}: 10 of the smallest voxels (z: 0 for affinity_watershed on serial sections)",
    )
    smooth_sigma: Optional[float] = Field(
        None, ge=0,
        description=f"Gaussian sigma (nm) of the map the watersheds seed from (and boundary_watershed floods); "
        f"{FROM_THE_DATA}: half the smallest voxel",
    )
    mws_bias: float = Field(-0.7, description="mutex_watershed: added to the affinities; negative values repel")
    mws_min_size: int = Field(10, ge=1, description="mutex_watershed: smaller pieces (voxels) are flooded from neighbours")
    fragments_in_xy: Optional[bool] = Field(
        None, description=f"one watershed per z section; {FROM_THE_DATA}: only for a voxel-map watershed on serial sections"
    )
    min_mean_affinity: Optional[float] = Field(None, ge=0.0, le=1.0, description="drop fragments whose mean affinity is below")
    epsilon_agglomerate: float = Field(0.0, ge=0.0, description="merge fragments whose score is below this in the block")
    ids_per_block: Optional[int] = Field(None, gt=0, description="id space of a block; default: voxels of a block")
    chunk_shape: Optional[list[int]] = Field(None, description="chunk shape (voxels) of the fragments; default: the block")

    _ctx = field_validator("context")(lambda v: _non_negative(v, "context"))
    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))

    @field_validator("min_seed_distance")
    @classmethod
    def _seed_distance(cls, value: Optional[Union[float, list[float]]]) -> Optional[Union[float, list[float]]]:
        if value is None:
            return value
        if isinstance(value, list):
            if len(value) != 3 or any(d < 0 for d in value) or not any(d > 0 for d in value):
                raise ValueError(f"one number, or 3 (z, y, x) of at least 0 and not all 0, expected; got {value}")
            return [float(d) for d in value]
        if value <= 0:
            raise ValueError(f"must be greater than 0, got {value}")
        return float(value)


SCORINGS_HELP = "mean, hist_quant_N (N in 10..95 by 5), max, min"


class AgglomerateConfig(_Strict):
    """RAG edges and the score at which they merge."""

    context: Optional[list[int]] = Field(None, description="nm read beyond each block; default: 8 voxels")
    scoring: str = Field("hist_quant_75", description=SCORINGS_HELP)
    discretize_queue: int = Field(256, ge=0, le=65536)

    _ctx = field_validator("context")(lambda v: _non_negative(v, "context"))

    @field_validator("scoring")
    @classmethod
    def _known_scoring(cls, value: str) -> str:
        if value in ("mean", "max", "min"):
            return value
        quantile = value[len("hist_quant_") :] if value.startswith("hist_quant_") else ""
        # waterz compiles these quantiles only; any other fails every block at run time
        if quantile.isdigit() and 10 <= int(quantile) <= 95 and int(quantile) % 5 == 0:
            return value
        raise ValueError(f"unknown scoring {value!r}, expected one of: {SCORINGS_HELP}")


class SegmentsConfig(_Strict):
    """Global connected components of the edges below each threshold."""

    thresholds: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])

    @field_validator("thresholds")
    @classmethod
    def _sorted_unique(cls, values: list[float]) -> list[float]:
        if not values:
            raise ValueError("give at least one threshold")
        return sorted(set(float(v) for v in values))


class RelabelConfig(_Strict):
    """Which thresholds get a segmentation volume."""

    thresholds: Optional[list[float]] = Field(None, description="subset of the segments thresholds; default: all")
    chunk_shape: Optional[list[int]] = None

    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))


class EvaluateConfig(_Strict):
    """Scores against input.ground_truth (runs only when it is given)."""

    enabled: bool = True


class LsdsConfig(_Strict):
    """Local shape descriptors of the ground truth (training targets)."""

    sigma: float | list[float] = Field(description="Gaussian sigma in nm (one value or per axis)")
    downsample: int = Field(1, ge=1, description="compute on a grid this many times coarser, as the reference does")
    components: Optional[str] = Field(None, description="channels to keep, e.g. '0129'; default: all 10")
    chunk_shape: Optional[list[int]] = None

    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))


class ChannelsConfig(_Strict):
    """BiaPy channels of the ground truth (training targets)."""

    channel_set: str = Field("BC", description="BC, BP, BCM, BCD, BCDv2, Dv2 or BDv2")
    contour_thickness: int = Field(1, ge=1)
    distance_clip: Optional[float] = Field(None, gt=0, description="nm where D / Dv2 saturate (needed for them)")
    max_object_extent: Optional[float] = Field(None, gt=0, description="nm, needed for P: its context")
    chunk_shape: Optional[list[int]] = None

    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))


class WeightsConfig(_Strict):
    """deepflash2 U-Net weight maps of the ground truth (training targets)."""

    bws: float = Field(10.0, gt=0, description="border weight sigma, nm")
    fds: float = Field(10.0, gt=0, description="foreground distance sigma, nm")
    bwf: float = Field(10.0, ge=0, description="border weight factor")
    fbr: float = Field(0.1, ge=0, le=1, description="foreground / background ratio")
    chunk_shape: Optional[list[int]] = None

    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))


class PredictConfig(_Strict):
    """A trained network run blockwise: raw -> affinities (+ more outputs)."""

    model: str = Field(description="torchscript:PATH, onnx:PATH or python:module:function")
    input_shape: list[int] = Field(description="network input window, voxels (z, y, x)")
    output_shape: list[int] = Field(description="valid output window, voxels (z, y, x)")
    outputs: dict[str, int] = Field(
        default_factory=lambda: {"affinities": 3},
        description="datasets to write, in the model's channel order, with their channel counts",
    )
    normalize: Literal["scale01", "scale11", "meanstd"] = "scale01"
    mean: Optional[float] = None
    std: Optional[float] = Field(None, gt=0)
    output_dtype: Literal["float32", "uint8"] = "uint8"
    device: str = Field("cpu", description="cpu, cuda or cuda:N (cuda workers need the GPU resource)")
    batch_size: int = Field(1, gt=0)
    chunk_shape: Optional[list[int]] = None

    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))

    @model_validator(mode="after")
    def _shapes(self) -> "PredictConfig":
        if len(self.input_shape) != 3 or len(self.output_shape) != 3:
            raise ValueError("input_shape and output_shape need 3 values (z, y, x)")
        if any(o <= 0 or i < o or (i - o) % 2 for i, o in zip(self.input_shape, self.output_shape)):
            raise ValueError(
                f"output_shape {self.output_shape} must be positive and fit centred in input_shape "
                f"{self.input_shape} (an even difference per axis)"
            )
        if self.normalize == "meanstd" and (self.mean is None or self.std is None):
            raise ValueError("normalize: meanstd needs mean and std")
        if not self.outputs or any(c <= 0 for c in self.outputs.values()):
            raise ValueError(f"outputs must name datasets with positive channel counts, got {self.outputs}")
        return self


def _check_offsets(offsets: Optional[list[list[int]]]) -> Optional[list[list[int]]]:
    if offsets is None:
        return None
    if not offsets:
        raise ValueError("give at least one offset")
    for offset in offsets:
        if len(offset) != 3:
            raise ValueError(f"offset {offset} has {len(offset)} value(s); offsets are voxels (z, y, x), 3 values each")
        if not any(offset):
            raise ValueError(f"offset {offset} is zero; an affinity links a voxel to another one")
    return offsets


class EmbeddingsToAffinitiesConfig(_Strict):
    """Affinities from pixel embeddings for a list of offsets (push-force margin ``delta``)."""

    offsets: list[list[int]] = Field(description="voxel offsets (z, y, x); nearest neighbours first for fragments")
    delta: float = Field(gt=0, description="push-force margin of the embedding loss")
    invert: bool = Field(False, description="write 1 - affinity")
    chunk_shape: Optional[list[int]] = None

    _offsets = field_validator("offsets")(lambda v: _check_offsets(v))
    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))


class MwsConfig(_Strict):
    """Mutex watershed per block on affinities with long-range offsets, stitched through the RAG."""

    offsets: Optional[list[list[int]]] = Field(
        None, description="offset of each affinity channel; default: stages.embeddings_to_affinities.offsets"
    )
    bias: float | list[float] = Field(
        -0.5, description="added to each channel's affinities (signed) or priorities (classic); one value or one per offset"
    )
    attractive: Optional[int] = Field(
        None, gt=0, description="classic mode: this many leading channels attract, the rest repel; "
        "default: signed mode (affinity + bias > 0 attracts, < 0 repels), as volara uses it"
    )
    distance: Optional[Literal["l2", "cosine", "l1"]] = Field(
        None, description="segment input.embeddings directly on this embedding distance instead of affinities"
    )
    delta: Optional[float] = Field(
        None, gt=0, description="with distance: weigh distances as 1 - push affinity with this push-force margin"
    )
    strides: Optional[list[int]] = Field(None, description="keep every n-th repulsive edge per axis (z, y, x)")
    randomize_strides: bool = Field(False, description="keep repulsive edges at random with probability 1/prod(strides)")
    seed: int = Field(0, description="seed of the random strides")
    context: Optional[list[int]] = Field(None, description="nm read beyond each block; default: from the offsets")
    stitch_band: Optional[list[int]] = Field(
        None, description="nm on each side of a block face compared when stitching; default: half the context"
    )
    chunk_shape: Optional[list[int]] = None

    _offsets = field_validator("offsets")(lambda v: _check_offsets(v))
    _ctx = field_validator("context")(lambda v: _non_negative(v, "context"))
    _band = field_validator("stitch_band")(lambda v: _positive(v, "stitch_band"))
    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))

    @field_validator("strides")
    @classmethod
    def _strides(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        if value is not None and (len(value) != 3 or any(s <= 0 for s in value)):
            raise ValueError(f"strides must be 3 positive values (z, y, x), got {value}")
        return value


CHANNEL_SETS = tuple(WORKER_CHANNEL_SETS)  # one list: the sets workers/channels.py can make


class ChannelInstancesConfig(_Strict):
    """Instances from BiaPy channels (marker-controlled watershed) per block, stitched through the RAG."""

    channel_set: str = Field(description=", ".join(CHANNEL_SETS))
    parameters: dict[str, bool | int | float] = Field(
        default_factory=dict,
        description="keyword parameters of workers.channel_instances.segment_channels: thresholds "
        "(data_mw_th_binary_mask, data_mw_th_contour, ..., th_points), data_remove_small_obj, ...",
    )
    max_object_extent: Optional[float] = Field(None, gt=0, description="nm; the context is half of it")
    context: Optional[list[int]] = Field(None, description="nm read beyond each block; default: from max_object_extent")
    stitch_band: Optional[list[int]] = Field(
        None, description="nm on each side of a block face compared when stitching; default: half the context"
    )
    chunk_shape: Optional[list[int]] = None

    _ctx = field_validator("context")(lambda v: _non_negative(v, "context"))
    _band = field_validator("stitch_band")(lambda v: _positive(v, "stitch_band"))
    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))

    @field_validator("channel_set")
    @classmethod
    def _known_set(cls, value: str) -> str:
        if value not in CHANNEL_SETS:
            raise ValueError(f"unknown channel set {value!r}, expected one of: {', '.join(CHANNEL_SETS)}")
        return value


class PcaPreviewConfig(_Strict):
    """An RGB view of the embeddings: one PCA fitted on a sample of the whole volume."""

    samples: int = Field(20000, gt=1, description="voxels drawn at random to fit the PCA")
    sample_chunks: int = Field(32, gt=0, description="chunks of the embeddings the voxels are drawn from (at random)")
    seed: int = Field(0, description="seed of the sample")
    chunk_shape: Optional[list[int]] = None

    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))


class DownsampleConfig(_Strict):
    """OME-Zarr pyramids of the inputs and outputs (see blockseg/pyramid.py)."""

    levels: int = Field(3, ge=1, le=16, description="levels below full resolution (s1 .. s<levels>)")
    factor: Optional[list[int]] = Field(
        None, description="per-level factor (z, y, x), e.g. [1, 2, 2]; default: halve the finer axes of each level"
    )
    datasets: Optional[list[Literal["raw", "affinities", "fragments", "segmentation", "ground_truth"]]] = Field(
        None, description="what gets a pyramid; default: raw, affinities, fragments, segmentation (those the run has)"
    )

    _factor = field_validator("factor")(lambda v: _positive(v, "factor"))


class StagesConfig(_Strict):
    predict: Optional[PredictConfig] = None
    embeddings_to_affinities: Optional[EmbeddingsToAffinitiesConfig] = None
    pca_preview: Optional[PcaPreviewConfig] = None
    mws: Optional[MwsConfig] = None
    channel_instances: Optional[ChannelInstancesConfig] = None
    lsds: Optional[LsdsConfig] = None
    channels: Optional[ChannelsConfig] = None
    weights: Optional[WeightsConfig] = None
    fragments: FragmentsConfig = Field(default_factory=FragmentsConfig)
    agglomerate: AgglomerateConfig = Field(default_factory=AgglomerateConfig)
    segments: SegmentsConfig = Field(default_factory=SegmentsConfig)
    relabel: RelabelConfig = Field(default_factory=RelabelConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    downsample: Optional[DownsampleConfig] = None
