"""Tasks: what the engine runs, the built-in stages and yours alike.

A task says what it reads (volumes by name or URL, with the context it needs
in nm), what it writes (name, dtype, channels), its parameters (a pydantic
model, so YAML and Python validate alike), an optional per-worker ``setup``
and its block function::

    class Smooth(Task):
        class Params(BaseModel):
            sigma: float = 20.0  # nm

        def reads(self, params):
            return {"raw": Read("raw", context=3 * params.sigma)}

        def writes(self, params):
            return {"smoothed": Write("float32")}

        def process(self, params, raw, voxel_size):
            return gaussian_filter(raw.astype(np.float32), [params.sigma / v for v in voxel_size])

``process`` gets numpy arrays over the block's read ROI (the write ROI grown
by the largest context, clipped to the data) and returns one array per
output over that ROI or over the write ROI (the engine crops). A task that
needs more defines ``process_block(self, params, block, volumes, outputs,
state)`` instead and reads and writes the volumes itself.

The engine (:mod:`blockseg.engine`) asks a task, given the :class:`Run`:
whether it is enabled, the parameters its results depend on (hashed into the
ledger's fingerprint), the datasets it writes (:class:`OutputSpec`), the
context its blocks read (nm), and the function that processes one block.
Optional hooks: ``prepare`` (once per run, before the outputs are made),
``global_step`` (a stage of one step instead of blocks), ``finish`` (after
the blocks), ``resources`` (dask worker resources) and ``create_outputs``
(outputs not at the run's voxel size).
"""

from __future__ import annotations

import functools
import inspect
import io
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from blockseg.geometry import Roi

# a blockseg.run_state.Run; not imported, since the run state imports the config, which loads users' tasks
Run = Any


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


def no_outputs(run: Run) -> list[OutputSpec]:
    """For the stages that write only graph rows or nothing."""
    return []


def no_context(run: Run) -> None:
    return None


@dataclass(frozen=True)
class Read:
    """A volume a task reads.

    ``source`` is an input of the config (``raw``, ``affinities``,
    ``boundaries``, ``mask``, ``ground_truth``, ``embeddings``,
    ``channels``), a dataset another stage writes (``fragments``,
    ``segmentation/threshold_0.4``, or a task's output name), or a path / URL
    of a zarr array. ``context`` is how far beyond the write ROI the block
    reads, nm (one value or one per axis).
    """

    source: str
    context: float | Sequence[float] = 0


@dataclass(frozen=True)
class Write:
    """A dataset a task writes: ``volumes.zarr/<name>`` unless ``url`` says where."""

    dtype: str = "float32"
    channels: tuple[int, ...] = ()
    chunk_shape: tuple[int, ...] | None = None  # voxels; default: one chunk per block (or storage.outputs)
    url: str | None = None


class NoParams(BaseModel):
    """A task without parameters."""

    model_config = ConfigDict(extra="forbid")


class Task:
    """Base class of every stage: subclass it for your own blockwise task.

    Define ``Params`` (a pydantic model; YAML keys of the stage and keyword
    arguments validate against it), ``reads``, ``writes``, optionally
    ``setup`` (once per worker process, e.g. load a model; its result is the
    ``state`` argument of ``process``) and ``process`` (or
    ``process_block``). The engine gives the task the block grid, ledger,
    retries, progress, failure report, storage and cluster of every stage.
    """

    Params: type[BaseModel] = NoParams
    name: str = ""
    needs: tuple[str, ...] = ()
    # optional engine hooks (see the module docstring); None: not used
    prepare: Callable | None = None
    finish: Callable | None = None
    global_step: Callable | None = None
    resources: Callable | None = None
    create_outputs: Callable | None = None

    def __init__(self, params: BaseModel | dict | None = None, *, name: str | None = None, **kwargs: Any) -> None:
        if isinstance(params, BaseModel):
            self.parameters = params
        else:
            self.parameters = self.Params.model_validate({**(params or {}), **kwargs})
        self.name = name or self.name or type(self).__name__.lower()
        # set when a run resolves what the task reads: {name: (url, context in nm)} and {name: url}
        self.resolved_reads: dict[str, tuple[str, tuple[float, ...]]] = {}
        self.resolved_writes: dict[str, str] = {}

    # -- what a task defines ---------------------------------------------------
    def reads(self, params: BaseModel) -> dict[str, Read]:
        """The volumes each block reads, by the name ``process`` gets them under."""
        return {}

    def writes(self, params: BaseModel) -> dict[str, Write]:
        """The datasets each block writes, by output name."""
        return {}

    def setup(self, params: BaseModel) -> Any:
        """Runs once per worker process before its first block; the result is ``state``."""
        return None

    process: Callable | None = None
    process_block: Callable | None = None

    @classmethod
    def has_block_function(cls) -> bool:
        return callable(getattr(cls, "process", None)) or callable(getattr(cls, "process_block", None))

    @classmethod
    def path(cls) -> str:
        return f"{cls.__module__}:{cls.__qualname__}"

    # -- what the engine asks ---------------------------------------------------
    def enabled(self, run: Run) -> bool:
        return True

    def params(self, run: Run) -> dict:
        """What the results depend on, for the ledger's fingerprint."""
        from blockseg.volume import VolumeError, open_volume

        inputs = {}
        for name, (url, context) in self.resolved_reads.items():
            try:
                token = open_volume(url).token
            except VolumeError:
                token = None
            inputs[name] = {"url": url, "context": list(context), "token": token}
        return {
            "task": self.path(),
            "params": self.parameters.model_dump(mode="json"),
            "reads": inputs,
            "writes": dict(self.resolved_writes),
        }

    def outputs(self, run: Run) -> list[OutputSpec]:
        writes = self.writes(self.parameters)
        return [
            OutputSpec(self.resolved_writes.get(name) or run.dataset_url(name), spec.dtype,
                       tuple(spec.chunk_shape) if spec.chunk_shape else run.block_voxels, tuple(spec.channels))
            for name, spec in writes.items()
        ]

    def context(self, run: Run) -> tuple[int, ...]:
        """The largest context of the reads, nm, rounded up to whole voxels."""
        voxel_size = run.voxel_size
        reach = [0.0] * len(voxel_size)
        for _, context in self.resolved_reads.values():
            reach = [max(r, c) for r, c in zip(reach, context)]
        return tuple(int(-(-r // v) * v) for r, v in zip(reach, voxel_size))

    def block_function(self, run: Run) -> Callable:
        return functools.partial(
            task_block, task=self, reads={n: u for n, (u, _) in self.resolved_reads.items()},
            writes=dict(self.resolved_writes),
        )


def context_per_axis(context: float | Sequence[float], dims: int = 3) -> tuple[float, ...]:
    if isinstance(context, (int, float)):
        return (float(context),) * dims
    values = tuple(float(c) for c in context)
    if len(values) != dims:
        raise ValueError(f"context {list(values)}: expected one value or {dims}")
    return values


_STATES: dict[str, Any] = {}


def _state_of(task: Task) -> Any:
    """``task.setup`` once per worker process and parameters."""
    key = json.dumps([task.path(), task.parameters.model_dump(mode="json")], sort_keys=True, default=str)
    if key not in _STATES:
        _STATES[key] = task.setup(task.parameters)
    return _STATES[key]


def _accepted(function: Callable, available: dict) -> dict:
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return available
    return {k: v for k, v in available.items() if k in parameters}


def task_block(block, task: Task, reads: dict[str, str], writes: dict[str, str]):
    """One block of a :class:`Task`: read, ``process``, crop to the write ROI, write (runs on a worker)."""
    from blockseg.graph.base import BlockOutput
    from blockseg.volume import open_volume

    volumes = {name: open_volume(url) for name, url in reads.items()}
    outputs = {name: open_volume(url, mode="r+") for name, url in writes.items()}
    state = _state_of(task)
    if callable(task.process_block):
        stats = task.process_block(task.parameters, block, volumes, outputs, **_accepted(task.process_block, {"state": state}))
        return BlockOutput(stats=dict(stats or {}))
    reference = next(iter(volumes.values()), None) or next(iter(outputs.values()))
    voxel_size = reference.voxel_size
    read_roi = block.read_roi
    for volume in volumes.values():
        read_roi = read_roi.intersect(volume.roi)
    arrays = {name: volume.read(read_roi) for name, volume in volumes.items()}
    extra = {"voxel_size": tuple(voxel_size), "block": block, "read_roi": read_roi, "state": state}
    result = task.process(task.parameters, **arrays, **_accepted(task.process, extra))
    if not isinstance(result, dict):
        if len(writes) != 1:
            raise ValueError(f"{task.path()}.process returned one array for {len(writes)} outputs; return a dict by name")
        result = {next(iter(writes)): result}
    missing = set(writes) - set(result)
    if missing:
        raise ValueError(f"{task.path()}.process did not return {sorted(missing)}")
    _, write_shape = block.write_roi.to_voxels(voxel_size)
    _, read_shape = read_roi.to_voxels(voxel_size)
    crop = block.write_roi.slices(voxel_size, read_roi.offset)
    for name, output in outputs.items():
        data = np.asarray(result[name])
        spatial = data.shape[data.ndim - len(voxel_size):]
        if tuple(spatial) == tuple(read_shape) and tuple(read_shape) != tuple(write_shape):
            data = data[(slice(None),) * (data.ndim - len(crop)) + crop]
        elif tuple(spatial) != tuple(write_shape):
            raise ValueError(
                f"{task.path()}.process returned {name} of shape {data.shape}; expected the read ROI {read_shape} "
                f"or the write ROI {write_shape} (after any channel axes)"
            )
        output.write(block.write_roi, data.astype(output.dtype, copy=False))
    return BlockOutput(stats={"voxels": int(np.prod(write_shape))})


@dataclass
class Stage(Task):
    """A task given as functions of the run (how the built-in stages are written)."""

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


def pack_arrays(*arrays: np.ndarray) -> bytes:
    """Arrays as ``.npz`` bytes (no pickling) for the store's result column."""
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def unpack_arrays(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]
