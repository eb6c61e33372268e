"""Write and bulk-read a large RAG with each graph store backend; time the LUTs.

For each backend (``sqlite``, ``files``) the script commits ``--edges`` edges
and ``--edges / 5`` nodes in blocks of 10,000 edges, then reads every edge
back as numpy arrays in a fresh process (so its peak memory is the read's
alone), and finally times the connected-component LUTs of 8 thresholds over
all edges. Printed, and with ``--json PATH`` written as one flat object:

``<backend>_write_edges_per_s``, ``<backend>_read_seconds``,
``<backend>_read_peak_mib`` (peak resident memory of the reading process
beyond what it held before reading, minus the arrays read),
``<backend>_read_arrays_mib``, ``segments_seconds``.

Usage::

    python benchmarks/graph_store.py            # 10M edges, 2M nodes
    python benchmarks/graph_store.py --quick    # 1M edges, 200k nodes
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EDGES_PER_BLOCK = 10_000
THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_block(block_id: int, nodes_per_block: int, ids_per_block: int, seed: int):
    """A block's nodes and the edges it owns (u is one of its nodes, v here or in the next block)."""
    from blockseg.graph.base import Edges, Nodes

    rng = np.random.default_rng(seed + block_id)
    base = block_id * ids_per_block
    ids = np.arange(base + 1, base + nodes_per_block + 1, dtype=np.uint64)
    centers = rng.uniform(0, 1000, size=(nodes_per_block, 3)) + block_id * 1000.0
    sizes = rng.integers(1, 5000, size=nodes_per_block)
    u = rng.integers(0, nodes_per_block, size=EDGES_PER_BLOCK * 2)
    v = rng.integers(0, 2 * nodes_per_block, size=EDGES_PER_BLOCK * 2)
    u_ids = ids[u]
    # the first half of v are this block's nodes, the second half the next block's
    local = np.where(v < nodes_per_block, v, v - nodes_per_block + ids_per_block)
    v_ids = np.uint64(base + 1) + local.astype(np.uint64)
    keep = u_ids < v_ids
    pairs = np.unique(np.stack([u_ids[keep], v_ids[keep]], axis=1), axis=0)[:EDGES_PER_BLOCK]
    scores = rng.random(len(pairs), dtype=np.float32)
    return Nodes(ids, centers, sizes), Edges(pairs[:, 0].copy(), pairs[:, 1].copy(), scores)


def write_store(url: str, blocks: int, nodes_per_block: int, seed: int) -> tuple[float, int]:
    from blockseg.graph import open_store
    from blockseg.graph.base import BlockOutput

    ids_per_block = 10 * nodes_per_block
    store = open_store(url)
    generated = [make_block(b, nodes_per_block, ids_per_block, seed) for b in range(min(blocks, 8))]
    written = 0
    start = time.perf_counter()
    for block_id in range(blocks):
        nodes, edges = generated[block_id % len(generated)]
        # shift a prepared block instead of drawing a new one: the clock
        # should time the store, not the random number generator
        shift = np.uint64((block_id - block_id % len(generated)) * ids_per_block)
        nodes = type(nodes)(nodes.ids + shift, nodes.centers, nodes.sizes)
        edges = type(edges)(edges.u + shift, edges.v + shift, edges.scores)
        if block_id == blocks - 1:
            # the last block has no next block to reach into
            inside = edges.v < np.uint64((block_id + 1) * ids_per_block)
            edges = type(edges)(edges.u[inside], edges.v[inside], edges.scores[inside])
        store.commit_block("fragments", block_id, BlockOutput(nodes=nodes))
        store.commit_block("agglomerate", block_id, BlockOutput(edges=edges))
        written += len(edges)
    seconds = time.perf_counter() - start
    store.close()
    return seconds, written


def read_in_child(url: str) -> dict:
    """Read every edge in a fresh process; return its timing and memory."""
    code = (
        "import json, resource, time, numpy as np\n"
        "from blockseg.graph import open_store\n"
        "from blockseg.graph.base import concatenate_edges\n"
        "rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        f"store = open_store({url!r})\n"
        "before = rss()\n"
        "start = time.perf_counter()\n"
        "edges = concatenate_edges(list(store.iter_edges()))\n"
        "seconds = time.perf_counter() - start\n"
        "arrays = (edges.u.nbytes + edges.v.nbytes + edges.scores.nbytes) / 2**20\n"
        "print(json.dumps({'seconds': seconds, 'edges': len(edges), 'arrays_mib': arrays,\n"
        "                  'peak_mib': max(0.0, rss() - before - arrays)}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def time_segments(url: str) -> tuple[float, int]:
    from blockseg.graph import open_store
    from blockseg.graph.base import concatenate_edges
    from blockseg.segments import connected_component_luts

    store = open_store(url)
    nodes = store.read_nodes()
    edges = concatenate_edges(list(store.iter_edges()))
    start = time.perf_counter()
    count = 0
    for threshold, ids, segments in connected_component_luts(nodes.ids, edges.u, edges.v, edges.scores, THRESHOLDS):
        store.write_lut(threshold, ids, segments)
        count += 1
    seconds = time.perf_counter() - start
    store.close()
    return seconds, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M edges instead of 10M")
    parser.add_argument("--edges", type=int, help="total edges (default 10,000,000; --quick 1,000,000)")
    parser.add_argument("--backends", default="sqlite,files")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    total = args.edges or (1_000_000 if args.quick else 10_000_000)
    blocks = max(1, total // EDGES_PER_BLOCK)
    nodes_per_block = EDGES_PER_BLOCK // 5
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="blockseg-graph-bench-") as tmp:
        folder = Path(tmp)
        for backend in args.backends.split(","):
            url = f"sqlite:///{folder / 'graph.db'}" if backend == "sqlite" else f"file://{folder / 'graph'}"
            seconds, written = write_store(url, blocks, nodes_per_block, seed=0)
            rate = written / seconds
            read = read_in_child(url)
            assert read["edges"] == written, (read["edges"], written)
            figures[f"{backend}_write_edges_per_s"] = round(rate)
            figures[f"{backend}_read_seconds"] = round(read["seconds"], 3)
            figures[f"{backend}_read_peak_mib"] = round(read["peak_mib"], 1)
            figures[f"{backend}_read_arrays_mib"] = round(read["arrays_mib"], 1)
            print(
                f"{backend:>7}: wrote {written:,} edges and {blocks * nodes_per_block:,} nodes in {seconds:.1f} s "
                f"({rate:,.0f} edges/s); read them back in {read['seconds']:.2f} s, "
                f"{read['peak_mib']:.0f} MiB beyond the {read['arrays_mib']:.0f} MiB of arrays"
            )
            if backend == args.backends.split(",")[0]:
                seg_seconds, count = time_segments(url)
                figures["segments_seconds"] = round(seg_seconds, 3)
                print(f"segments: {count} LUTs over {written:,} edges in {seg_seconds:.2f} s")
    print(f"driver peak {_rss_mib():.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
