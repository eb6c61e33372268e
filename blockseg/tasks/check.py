"""check: scan the affinities (or boundaries) for NaN/inf and values outside [0, 1] before anything is written."""

from __future__ import annotations

import functools
import json

import numpy as np

from blockseg.blocks import Block
from blockseg.graph.base import BlockOutput
from blockseg.run_state import InputError, Run
from blockseg.scheduler import run_stage
from blockseg.task import Stage, no_context, no_outputs
from blockseg.volume import open_volume


def check_affinities_block(block: Block, affinities_url: str) -> BlockOutput:
    """Look for NaN/inf and values outside [0, 1] in the block's affinities."""
    affs = open_volume(affinities_url).read(block.write_roi)
    summary = {"nan": 0, "min": 0.0, "max": 0.0}
    if np.issubdtype(affs.dtype, np.floating):
        finite = np.isfinite(affs)
        summary["nan"] = int(affs.size - np.count_nonzero(finite))
        values = affs[finite]
        if values.size:
            summary["min"], summary["max"] = float(values.min()), float(values.max())
    elif affs.size:
        summary["min"], summary["max"] = float(affs.min()) / 255, float(affs.max()) / 255
    return BlockOutput(result=json.dumps(summary).encode())


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
            functools.partial(check_affinities_block, affinities_url=run.source[0].url),
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


STAGE = Stage(
    "check",
    needs=(),
    enabled=lambda run: (
        (run.input_affinities is not None or run.input_boundaries is not None) and run.config.scheduler.check_inputs
    ),
    params=lambda run: {},
    outputs=no_outputs,
    context=no_context,
    block_function=None,
    global_step=_check_step,
)
