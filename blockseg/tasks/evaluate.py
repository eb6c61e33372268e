"""evaluate: contingency tables of the fragments against the ground truth per block, VOI and Rand per threshold in scores.json."""

from __future__ import annotations

import functools
import json

from blockseg.blocks import Block
from blockseg.graph.base import BlockOutput
from blockseg.run_state import Run
from blockseg.task import Stage, no_context, no_outputs, pack_arrays, unpack_arrays
from blockseg.volume import open_volume
from workers import evaluate as evaluate_worker


def contingency_block(block: Block, labels_url: str, ground_truth_url: str) -> BlockOutput:
    """Contingency counts of (labels, ground truth) in the block's write ROI."""
    labels = open_volume(labels_url).read(block.write_roi)
    truth = open_volume(ground_truth_url).read(block.write_roi)
    table = evaluate_worker.contingency_table(labels, truth)
    return BlockOutput(result=pack_arrays(*table), stats={"voxels": int(labels.size)})


def _evaluate_finish(run: Run) -> None:
    tables = [unpack_arrays(data) for data in run.store.block_results("evaluate").values()]
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
