"""The pipeline YAML as typed models, validated before any work starts.

Every problem becomes a :class:`ConfigError` whose message is one line naming
the key and what was expected, e.g.::

    config error: stages.fragments.min_seed_distanse: unknown key (allowed: boundary_threshold, ...)

Paths in a config are taken relative to the folder of the config file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from blockseg.errors import ConfigError
from workers.channels import CHANNEL_SETS as WORKER_CHANNEL_SETS

__all__ = ["ConfigError", "PipelineConfig", "load_config", "parse_config"]


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


class InputConfig(_Strict):
    """The datasets a run reads, as ``container.zarr/dataset``."""

    raw: Optional[str] = Field(None, description="raw EM (z, y, x) for the predict stage")
    affinities: Optional[str] = Field(None, description="affinities (c, z, y, x), float in [0, 1] or uint8 x 255")
    boundaries: Optional[str] = Field(
        None, description="boundary probability map (z, y, x), float in [0, 1] or uint8 x 255, high on membranes"
    )
    mask: Optional[str] = Field(
        None, description="tissue mask (z, y, x), nonzero inside; voxel size a whole multiple of the input's"
    )
    ground_truth: Optional[str] = Field(None, description="instance labels: for evaluation and training targets")
    embeddings: Optional[str] = Field(None, description="pixel embeddings (e, z, y, x), float")
    channels: Optional[str] = Field(None, description="BiaPy channels (c, z, y, x), float in [0, 1]")

    @model_validator(mode="after")
    def _something(self) -> "InputConfig":
        if not any((self.affinities, self.boundaries, self.ground_truth, self.raw, self.embeddings, self.channels)):
            raise ValueError(
                "give input.raw (to predict), input.affinities, input.boundaries, input.embeddings or input.channels "
                "(to segment) or input.ground_truth (for targets)"
            )
        if self.affinities and self.boundaries:
            raise ValueError(
                "input.affinities and input.boundaries: give one of them; the affinities a step needs are "
                "derived from the boundaries"
            )
        return self


class FragmentsConfig(_Strict):
    """Fragments: a seeded watershed of the boundary map or of the distance to it, or mutex watershed."""

    method: Literal["boundary_watershed", "distance_watershed", "mutex_watershed"] = Field(
        "boundary_watershed", description="how fragments are made (see the README's Fragments section)"
    )
    context: Optional[list[int]] = Field(
        None, description="nm read beyond each block; default depends on the method (see the README)"
    )
    boundary_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="distance_watershed: mean affinity at or below which a voxel is boundary"
    )
    min_seed_distance: float = Field(100.0, gt=0, description="nm between seeds (both watersheds)")
    smooth_sigma: float = Field(5.0, ge=0, description="boundary_watershed: Gaussian sigma (nm) applied to the map first")
    mws_bias: float = Field(-0.7, description="mutex_watershed: added to the affinities; negative values repel")
    mws_min_size: int = Field(10, ge=1, description="mutex_watershed: smaller pieces (voxels) are flooded from neighbours")
    fragments_in_xy: bool = Field(False, description="one watershed per z section (for anisotropic data)")
    min_mean_affinity: Optional[float] = Field(None, ge=0.0, le=1.0, description="drop fragments whose mean affinity is below")
    epsilon_agglomerate: float = Field(0.0, ge=0.0, description="merge fragments whose score is below this in the block")
    ids_per_block: Optional[int] = Field(None, gt=0, description="id space of a block; default: voxels of a block")
    chunk_shape: Optional[list[int]] = Field(None, description="chunk shape (voxels) of the fragments; default: the block")

    _ctx = field_validator("context")(lambda v: _non_negative(v, "context"))
    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))


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
        if value.startswith("hist_quant_") and value[len("hist_quant_") :].isdigit():
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


class LocalClusterConfig(_Strict):
    workers: Optional[int] = Field(None, gt=0, description="worker processes; default: one per core")
    threads_per_worker: int = Field(1, gt=0)
    processes: bool = True
    memory_limit: str = "auto"
    dashboard: bool = True


class AdaptiveConfig(_Strict):
    minimum: int = Field(0, ge=0, description="fewest worker jobs")
    maximum: int = Field(10, gt=0, description="most worker jobs")

    @model_validator(mode="after")
    def _ordered(self) -> "AdaptiveConfig":
        if self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is larger than maximum {self.maximum}")
        return self


_WALLTIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$|^\d+$|^\d+:\d{2}$")


class SlurmConfig(_Strict):
    """Workers as SLURM jobs, through dask-jobqueue's SLURMCluster."""

    queue: Optional[str] = Field(None, description="partition (sbatch -p)")
    account: Optional[str] = None
    cores: int = Field(1, gt=0, description="cores per job")
    processes: int = Field(1, gt=0, description="worker processes per job (cores are shared among them)")
    memory: str = Field("4GiB", description="memory per job, e.g. 16GiB")
    walltime: str = Field("01:00:00", description="job time limit: MM, MM:SS, HH:MM:SS or D-HH:MM:SS")
    jobs: Optional[int] = Field(2, ge=0, description="worker jobs to start (ignored with adaptive)")
    adaptive: Optional[AdaptiveConfig] = None
    job_extra_directives: list[str] = Field(default_factory=list, description="extra #SBATCH lines")
    job_script_prologue: list[str] = Field(default_factory=list, description="environment set-up lines")
    python: Optional[str] = Field(None, description="python on the nodes; default: this one")
    interface: Optional[str] = Field(None, description="network interface of workers, e.g. ib0; lo on one node")
    scheduler_host: str = Field("127.0.0.1", description="where the dask scheduler binds")
    resources: dict[str, float] = Field(default_factory=dict, description="worker resources, e.g. {GPU: 1}")
    local_directory: Optional[str] = None
    log_directory: Optional[str] = None

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML reads an unquoted 1:00:00 as the number 3600 (base 60)
            hours, rest = divmod(value, 3600)
            value = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
        if not isinstance(value, str) or not _WALLTIME.match(value):
            raise ValueError(f"walltime {value!r} is not MM, MM:SS, HH:MM:SS or D-HH:MM:SS")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        from dask.utils import parse_bytes

        try:
            parse_bytes(value)
        except ValueError:
            raise ValueError(f"memory {value!r} is not a size such as 4GiB or 16GB") from None
        return value


class ClusterConfig(_Strict):
    """Where blocks run: a local cluster (default), a running scheduler, or SLURM."""

    kind: Optional[Literal["local", "address", "slurm"]] = Field(
        None, description="default: address if one is given, else local"
    )
    local: LocalClusterConfig = Field(default_factory=LocalClusterConfig)
    address: Optional[str] = Field(None, description="tcp://host:port of a running dask scheduler")
    slurm: Optional[SlurmConfig] = None

    @model_validator(mode="after")
    def _kind(self) -> "ClusterConfig":
        if self.kind is None:
            self.kind = "address" if self.address else "local"
        if self.kind == "address" and not self.address:
            raise ValueError("kind address needs cluster.address (tcp://host:port)")
        if self.kind == "slurm" and self.slurm is None:
            self.slurm = SlurmConfig()
        return self


class SchedulerConfig(_Strict):
    retries: int = Field(2, ge=0, description="extra attempts for a failing block")
    block_timeout: Optional[float] = Field(None, gt=0, description="seconds before a running block counts as hung")
    window_per_thread: int = Field(8, gt=0, description="blocks in flight per worker thread")
    progress: bool = True
    check_inputs: bool = Field(True, description="scan inputs for NaN / out-of-range values before the run")


class OutputStorageConfig(_Strict):
    """How one output dataset is laid out: shards, inner chunks and codec."""

    sharded: bool = Field(True, description="one object per shard (default: the block) holding its inner chunks")
    shard_shape: Optional[list[int]] = Field(None, description="voxels (z, y, x); default: the block shape")
    chunk_shape: Optional[list[int]] = Field(
        None, description="inner chunk voxels; default: the stage's chunk_shape, else up to 64 per axis"
    )
    codec: Literal["blosc-zstd", "blosc-lz4", "zstd", "none"] = "blosc-zstd"
    level: Optional[int] = Field(None, ge=0, le=22, description="compression level; default: the codec's")

    _shard = field_validator("shard_shape")(lambda v: _positive(v, "shard_shape"))
    _chunk = field_validator("chunk_shape")(lambda v: _positive(v, "chunk_shape"))


class StorageConfig(_Strict):
    """Where output volumes go and how they are stored."""

    volumes: Optional[str] = Field(
        None, description="container for output volumes: a path, file:// or s3://bucket/path.zarr; default <output>/volumes.zarr"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec storage_options for s3:// URLs (endpoint_url, profile, config_kwargs); no credentials",
    )
    outputs: dict[str, OutputStorageConfig] = Field(
        default_factory=dict, description="layout per output (fragments, segmentation, affinities, ...) or 'default'"
    )

    @field_validator("options")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        from blockseg.storage import find_secrets

        secrets = find_secrets(value)
        if secrets:
            raise ValueError(
                f"{', '.join(secrets)}: credentials are not accepted in a config (they would reach logs); "
                f"set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment or name a profile"
            )
        return value

    @field_validator("volumes")
    @classmethod
    def _zarr_container(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.rstrip("/").endswith(".zarr"):
            raise ValueError(f"volumes {value!r} must name a zarr container ending in .zarr")
        return value


class RoiConfig(_Strict):
    offset: list[int]
    shape: list[int]


class PipelineConfig(_Strict):
    """A whole pipeline run."""

    input: InputConfig
    output: str = Field(description="folder for volumes.zarr, the graph, LUTs, scores and logs")
    graph: Optional[str] = Field(None, description="graph store URL; default sqlite:///<output>/graph.db")
    block_shape: list[int] = Field(description="write block shape in nm (z, y, x)")
    roi: Optional[RoiConfig] = Field(None, description="part of the input to process, in nm; default: all")
    stages: StagesConfig = Field(default_factory=StagesConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    base_dir: Path = Field(default=Path("."), exclude=True, description="set by load_config")
    # users' tasks (stages with a task: key), by stage name in YAML order: set by parse_config
    _user_tasks: dict = PrivateAttr(default_factory=dict)

    _block = field_validator("block_shape")(lambda v: _positive(v, "block_shape"))

    @field_validator("output")
    @classmethod
    def _local_output(cls, value: str) -> str:
        if "://" in value and not value.startswith("file://"):
            raise ValueError(
                f"{value!r}: the output folder holds the graph store, lookup tables and logs and must be local; "
                f"put the volumes on object storage with storage.volumes"
            )
        return value.removeprefix("file://")

    @model_validator(mode="after")
    def _one_instance_source(self) -> "PipelineConfig":
        # the segments, relabel and evaluate stages read one set of fragments
        if self.stages.mws is not None and self.stages.channel_instances is not None:
            raise ValueError("stages.mws and stages.channel_instances: give one of them per run, not both")
        return self

    @model_validator(mode="after")
    def _relabel_subset(self) -> "PipelineConfig":
        chosen = self.stages.relabel.thresholds
        if chosen is not None:
            missing = [t for t in chosen if float(t) not in self.stages.segments.thresholds]
            if missing:
                raise ValueError(
                    f"stages.relabel.thresholds {missing} are not among stages.segments.thresholds "
                    f"{self.stages.segments.thresholds}"
                )
        return self

    @property
    def user_tasks(self) -> dict:
        """The users' tasks of ``stages:`` (:mod:`blockseg.user_tasks`), by stage name."""
        return self._user_tasks

    # -- resolved paths ------------------------------------------------------
    def resolve(self, path: str) -> str:
        """A path from the config, taken relative to the config's folder (URLs stay as they are)."""
        if "://" in path:
            return path
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else (self.base_dir / p))

    @property
    def output_dir(self) -> Path:
        return Path(self.resolve(self.output))

    @property
    def volumes_url(self) -> str:
        """The zarr container of the output volumes (local path or URL)."""
        if self.storage.volumes:
            return self.resolve(self.storage.volumes)
        return str(self.output_dir / "volumes.zarr")

    @property
    def graph_url(self) -> str:
        if not self.graph:
            return f"sqlite:///{self.output_dir / 'graph.db'}"
        from blockseg.graph import StoreError, store_path

        try:
            scheme, path = store_path(self.graph, self.base_dir)
        except StoreError as error:
            raise ConfigError(f"config error: graph: {error}") from None
        # absolute from here on, so workers and later runs agree on the place
        return f"{scheme}:///{path}" if scheme == "sqlite" else f"file://{path}"

    @property
    def relabel_thresholds(self) -> list[float]:
        chosen = self.stages.relabel.thresholds
        return sorted(set(chosen)) if chosen is not None else list(self.stages.segments.thresholds)


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _format_error(error: dict[str, Any], model: type[BaseModel]) -> str:
    loc = _location(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, error["loc"][:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{loc}: unknown key{hint}"
    if kind == "missing":
        return f"{loc}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    if kind not in ("value_error",) and not isinstance(got, (dict, list)) and got is not None:
        return f"{loc}: {message}, got {got!r}"
    return f"{loc}: {message}"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        current = next(
            (a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)),
            annotation,
        )
    return [name for name in getattr(current, "model_fields", {}) if name != "base_dir"]


def parse_config(data: Any, base_dir: Path | str = ".") -> PipelineConfig:
    """Validate a mapping (as read from YAML) into a :class:`PipelineConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"config error: expected a mapping at the top level, got {type(data).__name__}")
    if "base_dir" in data:
        raise ConfigError("config error: base_dir: unknown key")
    from blockseg.user_tasks import split_user_stages, task_from_config

    built_in = frozenset(StagesConfig.model_fields)
    stages, user = split_user_stages(data.get("stages"), built_in)
    if user:
        data = {**data, "stages": stages}
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as error:
        lines = [_format_error(e, PipelineConfig) for e in error.errors()]
        raise ConfigError("config error: " + "; ".join(lines)) from None
    config.base_dir = Path(base_dir).resolve()
    config._user_tasks = {name: task_from_config(name, entry, built_in) for name, entry in user.items()}
    return config


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config error: {path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    return parse_config(data, path.parent)
