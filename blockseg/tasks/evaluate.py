"""evaluate: contingency tables of the fragments against the ground truth per block, summed on the cluster; VOI and Rand per threshold in scores.json."""

from __future__ import annotations

import functools
import json

from blockseg.blocks import Block
from blockseg.evaluate_reduce import reduce_scores
from blockseg.graph.base import BlockOutput
from blockseg.run_state import Run
from blockseg.stage_errors import naming
from blockseg.task import Stage, no_context, no_outputs, pack_arrays
from blockseg.volume import open_volume
from workers import evaluate as evaluate_worker


def contingency_block(block: Block, labels_url: str, ground_truth_url: str) -> BlockOutput:
    """Contingency counts of (labels, ground truth) in the block's write ROI."""
    labels = open_volume(labels_url).read(block.write_roi)
    truth = open_volume(ground_truth_url).read(block.write_roi)
    table = evaluate_worker.contingency_table(labels, truth)
    return BlockOutput(result=pack_arrays(*table), stats={"voxels": int(labels.size)})


def _evaluate_finish(run: Run) -> None:
    # the tables are summed and relabelled on the cluster; the driver gets the scores only
    thresholds = run.config.stages.segments.thresholds
    all_scores = reduce_scores(
        run.client, run.store.url, "evaluate", run.grid().num_blocks, [run.store.lut_path(t) for t in thresholds]
    )
    scores = {"fragments": all_scores[0]}
    per_threshold = {repr(float(t)): s for t, s in zip(thresholds, all_scores[1:])}
    best = min(per_threshold, key=lambda t: per_threshold[t]["voi_sum"])
    scores["thresholds"] = per_threshold
    scores["best"] = {"threshold": float(best), **per_threshold[best]}
    path = run.output_dir / "scores.json"
    with naming(path):  # a full disk fails the write, which names no file
        path.write_text(json.dumps(scores, indent=2))
    run.scores = scores


STAGE = Stage(
    "evaluate",
    needs=("fragments", "segments"),
    enabled=lambda run: (
        run.segmenting and run.ground_truth is not None and run.config.stages.evaluate.enabled
    ),
    params=lambda run: {},
    outputs=no_outputs,
    context=no_context,
    block_function=lambda run: functools.partial(
        contingency_block,
        labels_url=run.fragments_url,
        ground_truth_url=run.ground_truth.url,
    ),
    finish=_evaluate_finish,
)
