"""Edges per second written through a stage on a local cluster, per graph store.

A stage of ``--edges / 10,000`` blocks runs on ``--workers`` workers; each
block makes 2,000 nodes and 10,000 edges (the same synthetic blocks as
benchmarks/graph_store.py). With SQLite the workers send the rows back and the
driver commits them; with the file and PostgreSQL stores each worker commits
its own blocks. The time is the whole stage, from the first submission to the
last done mark, so it includes making the blocks (printed separately, per
block). Printed, and with ``--json PATH`` written as one flat object:
``<store>_write_edges_per_s``, ``make_block_seconds``.

Usage::

    python benchmarks/worker_writes.py                  # SQLite and files, 2,000,000 edges
    python benchmarks/worker_writes.py --quick          # 500,000 edges
    PGPASSWORD=... python benchmarks/worker_writes.py --postgres postgresql://me@127.0.0.1:5432/bench

The PostgreSQL database must be empty (``createdb bench``); it is left
holding the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from graph_store import EDGES_PER_BLOCK, make_block  # noqa: E402

NODES_PER_BLOCK = 2000


def block_rows(block):
    """A block's synthetic nodes and edges, as a stage's block function returns them."""
    from blockseg.graph.base import BlockOutput

    nodes, edges = make_block(block.block_id, NODES_PER_BLOCK, 1 << 20, 0)
    return BlockOutput(nodes=nodes, edges=edges)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="500,000 edges")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--postgres", help="an empty PostgreSQL database's URL (credentials from PGPASSWORD or ~/.pgpass)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from blockseg.blocks import BlockGrid
    from blockseg.cluster import open_client
    from blockseg.config import ClusterConfig
    from blockseg.geometry import Roi
    from blockseg.graph import open_store
    from blockseg.scheduler import run_stage

    edges = 500_000 if args.quick else args.edges
    blocks = max(1, edges // EDGES_PER_BLOCK)
    grid = BlockGrid(Roi((0, 0, 0), (10, 10, 10 * blocks)), block_shape=(10, 10, 10), context=(0, 0, 0))
    folder = Path(tempfile.mkdtemp(prefix="worker-writes-"))
    urls = {"sqlite": f"sqlite:///{folder / 'graph.db'}", "files": f"file://{folder / 'graph'}"}
    if args.postgres:
        urls["postgres"] = args.postgres + ("&" if "?" in args.postgres else "?") + f"luts={folder / 'luts'}"
    figures: dict[str, float] = {}
    start = time.perf_counter()
    for block_id in range(5):
        block_rows(grid.block(block_id))
    figures["make_block_seconds"] = round((time.perf_counter() - start) / 5, 4)
    with open_client(ClusterConfig(local={"workers": args.workers, "dashboard": False}), quiet=True) as client:
        warm = BlockGrid(Roi((0, 0, 0), (10, 10, 10 * args.workers)), (10, 10, 10), (0, 0, 0))
        run_stage(client, "warm", warm, block_rows, open_store(f"file://{folder / 'warm'}"), progress=False)
        for name, url in urls.items():
            store = open_store(url)
            start = time.perf_counter()
            run_stage(client, "agglomerate", grid, block_rows, store, progress=False)
            seconds = time.perf_counter() - start
            written = sum(len(chunk) for chunk in store.iter_edges())
            store.close()
            figures[f"{name}_write_edges_per_s"] = round(written / seconds)
            who = "driver" if name == "sqlite" else "workers"
            print(f"{name:9s} {written:,} edges in {seconds:.1f} s: {written / seconds:,.0f} edges/s "
                  f"(committed by the {who})", flush=True)
    print(f"making one block: {figures['make_block_seconds']:.3f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
