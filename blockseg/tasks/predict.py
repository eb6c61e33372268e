"""predict: a model (python callable, TorchScript, ONNX) over raw + context; each output cropped to the write ROI."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np
from distributed import Client

from blockseg.blocks import Block
from blockseg.graph.base import BlockOutput
from blockseg.run_state import InputError, Run, chunk_shape
from blockseg.scheduler import workers_info
from blockseg.task import OutputSpec, Stage
from blockseg.volume import open_volume


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


def _predict_outputs(run: Run) -> list[OutputSpec]:
    cfg = run.config.stages.predict
    chunk = chunk_shape(run, cfg.chunk_shape)
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
    outcomes = run.client.run(
        probe_model, spec, cfg.device, cfg.input_shape, cfg.output_shape,
        sum(cfg.outputs.values()), workers=workers, on_error="return",
    )
    for outcome in outcomes.values():
        if isinstance(outcome, ModelError):
            raise InputError(f"stages.predict: {outcome}") from None
        # a worker that died while loading (its memory limit, a lost node) is
        # not the model's fault: the stage's blocks meet it again, and the
        # scheduler retries them and reports what killed the worker
        if isinstance(outcome, BaseException) and not _lost_worker(outcome):
            raise outcome


def _lost_worker(error: BaseException) -> bool:
    """Whether ``error`` is the scheduler failing to reach a worker, not the probe failing on it."""
    from distributed.comm.core import CommClosedError

    # connecting to a dead worker fails with a bare OSError; a missing model
    # file raised on the worker is an OSError subclass and must be reported
    return isinstance(error, CommClosedError) or type(error) is OSError


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
            predict_block,
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


STAGE = _predict_stage()
