"""Scores of a run reduced on the cluster: the driver never holds a contingency table.

The evaluate stage stores one fragments x ground-truth contingency table per
block. A task per group of blocks reads its blocks' tables from the store,
sums them, and relabels the sum through each threshold's LUT (reading only
the LUT pieces of the fragments it has). Groups are summed in a tree, a few
at a time, and the task at the root computes the scores; the driver gets the
scores, a few numbers per threshold. Summing is exact (integer counts) and the
tables are sorted, so the scores equal those of one table summed in one
process.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from blockseg import lut_pieces
from blockseg.task import unpack_arrays
from workers import evaluate as evaluate_worker

BLOCKS_PER_TASK = 64
FAN_IN = 8


def group_tables(store_url: str, stage: str, block_ids: Sequence[int], lut_paths: Sequence[str]) -> list:
    """The summed table of some blocks, then the same relabelled through each LUT."""
    from blockseg.graph import open_store

    store = open_store(store_url)
    try:
        results = store.read_block_results(stage, block_ids).values()
    finally:
        store.close()
    table = evaluate_worker.merge_contingency(tuple(unpack_arrays(data)) for data in results)
    tables = [table]
    fragments = np.unique(table[0])
    for path in lut_paths:
        segments = lut_pieces.map_ids(path, fragments)
        tables.append(evaluate_worker.relabel_contingency(table, fragments, segments))
    return tables


def sum_tables(groups: list) -> list:
    """Sum the tables of several groups, entry by entry."""
    return [evaluate_worker.merge_contingency(tables) for tables in zip(*groups)]


def scores_of(tables: list) -> list[dict]:
    return [evaluate_worker.scores_from_contingency(table) for table in tables]


def reduce_scores(client, store_url: str, stage: str, num_blocks: int, lut_paths: Sequence[str]) -> list[dict]:
    """Scores of the fragments and of each LUT, from the stored per-block tables, reduced on the cluster."""
    level = [
        client.submit(group_tables, store_url, stage, list(range(first, min(first + BLOCKS_PER_TASK, num_blocks))),
                      [str(p) for p in lut_paths], pure=False)
        for first in range(0, max(num_blocks, 1), BLOCKS_PER_TASK)
    ]
    while len(level) > 1:
        level = [client.submit(sum_tables, level[i : i + FAN_IN], pure=False) for i in range(0, len(level), FAN_IN)]
    return client.submit(scores_of, level[0], pure=False).result()
