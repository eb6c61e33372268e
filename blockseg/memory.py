"""Pre-flight memory check: refuse blocks that cannot fit a worker before any block runs.

A block that needs more memory than its worker has does not fail quickly:
the worker is killed, restarted and killed again on every retry. Before any
block runs, :func:`check_block_memory` estimates what one block of each
stage must hold at once (the arrays it reads with their context, in the
dtype the workers compute in, and the arrays it writes) and compares it with
what a worker has for one block (its memory limit up to the fraction at
which its nanny stops it, less what the idle worker already uses, shared by
its threads).

The estimate is a lower bound: the algorithms add working memory on top (on
the demo volume the fragments stage peaks at 2-4 times the estimate), so a
config it refuses can never run, and one it lets through may still fail
(then the run reports "worker died: memory limit ... exceeded").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIB = 2**20

#: Stages whose blocks read the affinities (or boundaries), as float32.
AFFINITY_READERS = ("check", "fragments", "agglomerate", "mws")
#: Stages whose blocks read the fragments (uint64) of their read ROI.
FRAGMENT_READERS = ("agglomerate", "stitch", "relabel", "evaluate")
#: Stages whose blocks read the ground truth.
LABEL_READERS = ("lsds", "channels", "weights", "evaluate")
#: Stages whose blocks read the embeddings, as float32.
EMBEDDING_READERS = ("embeddings_to_affinities", "pca_preview", "mws")


@dataclass
class BlockMemory:
    """What one block of a stage holds at once, at least."""

    stage: str
    read_voxels: tuple[int, ...]
    write_voxels: tuple[int, ...]
    nbytes: int

    def describe(self) -> str:
        read = " x ".join(map(str, self.read_voxels))
        return f"stage {self.stage} needs at least {self.nbytes / MIB:.0f} MiB per block (reads {read} voxels)"


def _voxels(shape_nm: Sequence[int], voxel_size: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(1, math.ceil(s / v)) for s, v in zip(shape_nm, voxel_size))


def _channels(volume) -> int:
    return int(np.prod(volume.channel_shape)) if volume is not None else 0


def block_memory(run, stage) -> BlockMemory | None:
    """A lower bound of one block's memory in ``stage`` of ``run``; None for stages without blocks."""
    if stage.block_function is None or stage.global_step is not None:
        return None
    voxel_size = tuple(run.voxel_size)
    block = [min(b, s) for b, s in zip(run.block_shape, run.total_roi.shape)]
    try:
        context = stage.context(run) or (0,) * len(block)
    except Exception:  # noqa: BLE001 - a stage whose context needs its inputs: count the block alone
        context = (0,) * len(block)
    write = _voxels(block, voxel_size)
    read = _voxels([b + 2 * c for b, c in zip(block, context)], voxel_size)
    n_read, n_write = int(np.prod(read)), int(np.prod(write))
    per_read_voxel = 0  # bytes per voxel of the read ROI
    if stage.name in AFFINITY_READERS:
        try:
            source = run.source[0]
        except Exception:  # noqa: BLE001 - affinities a stage of this run makes: assume three channels
            source = None
        per_read_voxel += 4 * (_channels(source) or 3)
    if stage.name in FRAGMENT_READERS:
        per_read_voxel += 8
    if stage.name in LABEL_READERS and run.ground_truth is not None:
        per_read_voxel += run.ground_truth.dtype.itemsize
    if stage.name in EMBEDDING_READERS:
        embeddings = getattr(run, "input_embeddings", None)
        per_read_voxel += 4 * (_channels(embeddings) or 1)
    if stage.name == "predict" and run.raw is not None:
        per_read_voxel += 4 * max(1, _channels(run.raw))
    written = 0
    try:
        outputs = stage.outputs(run)
    except Exception:  # noqa: BLE001 - outputs that depend on a later state: count none
        outputs = []
    for spec in outputs:
        itemsize = np.dtype(spec.dtype).itemsize
        channels = int(np.prod(spec.channels)) if spec.channels else 1
        # halo outputs keep the block's whole read ROI; the others its write ROI
        written += itemsize * channels * (n_write if spec.aligned else n_read)
    return BlockMemory(stage.name, read, write, per_read_voxel * n_read + written)


def worker_budget(client) -> tuple[int, str] | None:
    """Bytes a worker has for one block and how that number came about; None without a memory limit."""
    import dask

    from blockseg import chunk_cache
    from blockseg.scheduler import workers_info

    workers = list(workers_info(client).values())
    limited = [w for w in workers if w.get("memory_limit")]
    if not limited:
        return None
    terminate = dask.config.get("distributed.worker.memory.terminate", 0.95) or 1.0
    budgets = []
    for worker in limited:
        limit = int(worker["memory_limit"])
        used = int(worker.get("metrics", {}).get("memory", 0) or 0)
        threads = max(1, int(worker.get("nthreads", 1)))
        # the decoded chunks a worker keeps between blocks (blockseg.chunk_cache)
        cache = chunk_cache.limit_for(limit)
        budgets.append(((limit * terminate - used - cache) / threads, limit, used, threads, cache))
    budget, limit, used, threads, cache = min(budgets)
    how = (
        f"memory limit {limit / MIB:.0f} MiB, stopped at {terminate:.0%} of it, "
        f"{used / MIB:.0f} MiB in use before any block, up to {cache / MIB:.0f} MiB of cached input chunks"
    )
    if threads > 1:
        how += f", shared by {threads} threads"
    return int(budget), how


def check_block_memory(run, stages, client) -> list[BlockMemory]:
    """Raise ``ConfigError`` (one line, both numbers) if a stage's blocks cannot fit a worker.

    Returns the estimates of the stages that have blocks.
    """
    from blockseg.config import ConfigError

    estimates = [e for e in (block_memory(run, stage) for stage in stages) if e is not None]
    budget = worker_budget(client)
    if budget is None or not estimates:
        return estimates
    available, how = budget
    worst = max(estimates, key=lambda e: e.nbytes)
    if worst.nbytes > available:
        raise ConfigError(
            f"config error: block_shape: {worst.describe()}, but a worker has "
            f"{max(0, available) / MIB:.0f} MiB for a block ({how}): use smaller blocks or give the workers more memory"
        )
    return estimates
