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
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from blockseg.errors import ConfigError
# the stage models (blockseg/stage_config.py) are part of the config: importable from here too
from blockseg.stage_config import (
    CHANNEL_SETS, SCORINGS_HELP, AgglomerateConfig, ChannelInstancesConfig, ChannelsConfig, DownsampleConfig,
    EmbeddingsToAffinitiesConfig, EvaluateConfig, FragmentsConfig, LsdsConfig, MwsConfig, PcaPreviewConfig,
    PredictConfig, RelabelConfig, SegmentsConfig, StagesConfig, WeightsConfig, _positive, _Strict,
)

__all__ = [
    "CHANNEL_SETS", "SCORINGS_HELP", "AgglomerateConfig", "ChannelInstancesConfig", "ChannelsConfig", "ClusterConfig",
    "ConfigError", "DownsampleConfig", "EmbeddingsToAffinitiesConfig", "EvaluateConfig", "FragmentsConfig",
    "LsdsConfig", "MwsConfig", "PcaPreviewConfig", "PipelineConfig", "PredictConfig", "RelabelConfig",
    "SegmentsConfig", "StagesConfig", "WeightsConfig", "load_config", "parse_config",
]


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
        from blockseg.graph import StoreError, absolute_url

        try:
            # absolute from here on, so workers and later runs agree on the place;
            # a PostgreSQL store keeps its LUTs beside the output
            return absolute_url(self.graph, self.base_dir, luts=self.output_dir / "luts")
        except StoreError as error:
            raise ConfigError(f"config error: graph: {error}") from None

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
