"""How big can it go: a synthetic RAG of real statistics written, segmented and relabelled at scale.

A grid of blocks (``--block-voxels`` each) is given fragments and edges with
the statistics measured on the FlyEM medulla run (fragments per voxel, edges
per fragment, the share of edges that cross a block face, the merge-score
distribution; see ``MEASURED``). Each block is generated *on a worker* and
committed to the graph store by that worker (the file store, or PostgreSQL),
never through the driver. Then, as the pipeline does:

1. segments: the LUTs of 8 thresholds, computed on the cluster
   (:func:`blockseg.distributed_segments.distributed_luts`), written as
   pieces by home block;
2. relabel: every block reads its own rows of each LUT (memory-mapped piece)
   and relabels its fragments (the LUT side of relabel; the voxel side is
   measured on one block in-process, see ``relabel_mvoxel_per_s``).

Printed, and with ``--json PATH`` written as one flat object: ``edges``,
``nodes``, ``blocks``, ``write_seconds``, ``write_edges_per_s``,
``segments_seconds``, ``relabel_seconds``, ``driver_peak_mib`` (RSS
high-water of this process, which also runs the dask scheduler),
``worker_peak_mib`` (the largest worker's RSS high-water),
``segments_pieces``, ``segments_reach`` (in block ids) and
``segments_scratch_bytes`` (the segments stage's intermediate tables on
disk, beside the LUTs, removed when the stage ends), and the
projection for 10^12 voxels (``projected_*``, among them
``projected_core_hours_per_tb``): core hours per stage from the measured
rates, objects and bytes on storage, driver memory.

Usage::

    python benchmarks/scale.py --quick                      # 10^6 edges
    python benchmarks/scale.py --edges 10000000 --json s7.json
    python benchmarks/scale.py --edges 100000000 --json s8.json
    python benchmarks/scale.py --edges 10000000 --store postgresql://user@host:5432/db
    python benchmarks/scale.py --edges 10000000 --store postgres   # a temporary local server (tests/postgres_server.py)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
IDS_PER_BLOCK = 1 << 24
TB_VOXELS = 10**12

# Measured on the FlyEM medulla run (250^3 at 10 nm, affinities from labels +
# noise 0.1, boundary watershed + waterz hist_quant_75, blocks 64 x 128 x 128,
# as tests/test_real_data.py runs it): 14336 fragments, 62993 edges
# (4.03 per 1,000 voxels), 12 % of the edges
# between two blocks.
MEASURED = {
    "fragments_per_mvoxel": 917.5,
    "edges_per_fragment": 4.394,
    "cross_block_fraction": 0.120,
    # merge-score quantiles at 0, 5, ..., 100 % (bimodal: half the contacts lie inside an object)
    "score_quantiles": [0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.0059, 0.0098, 0.0137, 0.0293, 0.1855, 0.5254, 0.5332, 0.541, 0.5488, 0.5527, 0.5566, 0.5605, 0.5645, 0.5762, 0.8652],
}
# Per worker (one core), from README "Fragments" (python benchmarks/pipeline.py): Mvoxel/s.
PIPELINE_RATES = {"fragments": 3.5, "agglomerate": 4.3}


def _block_nodes(block_id: int, mean: float, seed: int) -> int:
    return max(1, int(np.random.default_rng((seed, block_id, 0)).poisson(mean)))


def generate_block(store_url: str, block_id: int, grid: tuple[int, int, int], nodes_mean: float, seed: int) -> tuple:
    """Make one block's nodes and owned edges (``u`` homed here) and commit them from this worker."""
    from blockseg.graph import BlockOutput, Edges, Nodes, open_store

    start = time.perf_counter()
    rng = np.random.default_rng((seed, block_id, 1))
    n = _block_nodes(block_id, nodes_mean, seed)
    base = np.uint64(block_id * IDS_PER_BLOCK)
    ids = base + np.arange(1, n + 1, dtype=np.uint64)
    gz, gy, gx = grid
    z, rest = divmod(block_id, gy * gx)
    y, x = divmod(rest, gx)
    # each edge is written by the home block of its smaller id, so a block writes
    # edges_per_fragment per fragment, some of them to a fragment of the next block along an axis
    wanted = int(rng.poisson(n * MEASURED["edges_per_fragment"]))
    u = rng.integers(0, n, wanted)
    v = rng.integers(0, n, wanted)
    u_ids, v_ids = ids[u], ids[v]
    forward = [b for b, inside in ((block_id + 1, x + 1 < gx), (block_id + gx, y + 1 < gy),
                                   (block_id + gx * gy, z + 1 < gz)) if inside]
    cross = rng.random(wanted) < (MEASURED["cross_block_fraction"] if forward else 0.0)
    if cross.any():
        other = np.array(forward)[rng.integers(0, len(forward), int(cross.sum()))]
        sizes = np.array([_block_nodes(int(b), nodes_mean, seed) for b in forward])
        local = rng.integers(0, sizes[np.searchsorted(forward, other)]) + 1
        v_ids[cross] = other.astype(np.uint64) * np.uint64(IDS_PER_BLOCK) + local.astype(np.uint64)
    low, high = np.minimum(u_ids, v_ids), np.maximum(u_ids, v_ids)
    keep = low != high
    pairs = np.unique(np.stack([low[keep], high[keep]], axis=1), axis=0)
    pairs = pairs[pairs[:, 0] // np.uint64(IDS_PER_BLOCK) == np.uint64(block_id)]
    quantiles = np.asarray(MEASURED["score_quantiles"])
    scores = np.interp(rng.random(len(pairs)), np.linspace(0, 1, len(quantiles)), quantiles).astype(np.float32)
    centers = np.column_stack([rng.uniform(0, 1, n) + c for c in (z, y, x)]) * 1000.0
    made = time.perf_counter()
    store = open_store(store_url)
    try:
        store.commit_block("fragments", block_id, BlockOutput(nodes=Nodes(ids, centers, rng.integers(1, 5000, n))))
        store.commit_block("agglomerate", block_id, BlockOutput(
            edges=Edges(pairs[:, 0].copy(), pairs[:, 1].copy(), scores)))
    finally:
        store.close()
    return n, len(pairs), made - start, time.perf_counter() - made


def count_block(store_url: str, block_id: int) -> tuple:
    """Nodes and edges of a block an earlier run wrote."""
    from blockseg.graph import open_store

    store = open_store(store_url)
    try:
        edges = store.read_block_edges("agglomerate", [block_id])
        nodes = store.read_block_node_ids("fragments", [block_id])
    finally:
        store.close()
    return len(nodes), len(edges), 0.0, 0.0


def relabel_blocks(lut_paths: list[str], block_ids: list[int], nodes_mean: float, seed: int) -> int:
    """Each block's LUT rows of every threshold (its piece, memory-mapped), applied to its fragments."""
    from blockseg.lut_pieces import read_range
    from workers.relabel import relabel

    rows = 0
    for block_id in block_ids:
        n = _block_nodes(block_id, nodes_mean, seed)
        low = block_id * IDS_PER_BLOCK
        fragments = np.uint64(low) + np.arange(1, n + 1, dtype=np.uint64)
        for path in lut_paths:
            lut_ids, lut_segments = read_range(Path(path), low, low + IDS_PER_BLOCK)
            relabel(fragments, lut_ids, lut_segments)
            rows += len(lut_ids)
    return rows


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def relabel_voxel_rate(block_voxels: tuple[int, int, int], fragments: int) -> float:
    """Mvoxel/s of the relabel kernel on one block of ``fragments`` fragments (one core)."""
    from workers.relabel import relabel

    rng = np.random.default_rng(0)
    ids = np.uint64(5 * IDS_PER_BLOCK) + np.arange(1, fragments + 1, dtype=np.uint64)
    volume = ids[rng.integers(0, fragments, block_voxels)]
    segments = ids[np.minimum.accumulate(rng.integers(0, fragments, fragments)[::-1])[::-1]]
    relabel(volume, ids, segments)
    start = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        relabel(volume, ids, segments)
    return repeats * volume.size / (time.perf_counter() - start) / 1e6


def grid_for(blocks: int) -> tuple[int, int, int]:
    side = max(1, round(blocks ** (1 / 3)))
    gy = gx = side
    gz = max(1, math.ceil(blocks / (gy * gx)))
    return gz, gy, gx


def open_benchmark_store(spec: str, folder: Path):
    """``file`` (a folder under ``folder``), ``postgres`` (a temporary local server) or a store URL."""
    from blockseg.graph import open_store

    if spec == "file":
        return open_store(f"file://{folder / 'graph'}"), None
    if spec == "postgres":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import os

        import postgres_server

        server = postgres_server.start()
        if isinstance(server, str):
            raise SystemExit(f"no PostgreSQL server: {server}")
        os.environ["PGPASSFILE"] = str(server.pgpass)
        name = server.create_database("scale")
        return open_store(server.url(name, luts=str(folder / "luts"))), server
    return open_store(spec), None


def run(args) -> dict:
    from distributed import Client, LocalCluster, as_completed

    from blockseg.distributed_segments import distributed_luts

    block_voxels = tuple(args.block_voxels)
    voxels_per_block = int(np.prod(block_voxels))
    nodes_mean = MEASURED["fragments_per_mvoxel"] * voxels_per_block / 1e6
    edges_per_block = nodes_mean * MEASURED["edges_per_fragment"]
    blocks = max(1, math.ceil(args.edges / edges_per_block))
    grid = grid_for(blocks)
    blocks = int(np.prod(grid))
    if args.folder:  # a folder of an earlier run: the blocks it wrote are not written again
        folder = Path(args.folder)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="blockseg-scale-", dir=args.tmp))
    store, server = open_benchmark_store(args.store, folder)
    figures: dict = {"store": args.store.split("://")[0], "workers": args.workers, "blocks": blocks,
                     "grid_blocks": list(grid), "block_voxels": list(block_voxels)}
    print(f"{blocks} blocks ({' x '.join(map(str, grid))}) of {' x '.join(map(str, block_voxels))} voxels, "
          f"about {edges_per_block:.0f} edges each, store {store.url.split('://')[0]}, {args.workers} workers")
    try:
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=":0", memory_limit=args.worker_memory) as cluster, Client(cluster) as client:
            # 1. write: each worker makes and commits its blocks; the driver keeps a window of futures
            start = time.perf_counter()
            nodes, edges, commit_seconds = 0, 0, 0.0
            window = 4 * args.workers
            done = as_completed()
            written = store.done_blocks("agglomerate")
            for block_id in written:  # counted, not made again (same seed, same blocks)
                done.add(client.submit(count_block, store.url, block_id, pure=False))
            for block_id in (b for b in range(blocks) if b not in written):
                done.add(client.submit(generate_block, store.url, block_id, grid, nodes_mean, args.seed, pure=False))
                if done.count() >= window:
                    n, e, _, c = next(done).result()
                    nodes, edges, commit_seconds = nodes + n, edges + e, commit_seconds + c
            for future in done:
                n, e, _, c = future.result()
                nodes, edges, commit_seconds = nodes + n, edges + e, commit_seconds + c
            write_seconds = time.perf_counter() - start
            if written:
                print(f"{len(written)} blocks were written by an earlier run: the write figures are not this run's")
            print(f"write: {edges:,} edges, {nodes:,} nodes in {write_seconds:.1f} s "
                  f"({edges / write_seconds:,.0f} edges/s; commits alone {commit_seconds:.1f} worker-s)")

            # 2. segments
            start = time.perf_counter()
            segments_stats: dict = {}
            counts = distributed_luts(client, store, ["fragments", "agglomerate"], THRESHOLDS, blocks, IDS_PER_BLOCK,
                                      stats=segments_stats)
            segments_seconds = time.perf_counter() - start
            print(f"segments: {len(THRESHOLDS)} LUTs in {segments_seconds:.1f} s; segments per threshold: "
                  + ", ".join(f"{t}: {c[1]:,}" for t, c in counts.items()))
            print(f"  {segments_stats['pieces']} pieces of {segments_stats['blocks_per_piece']} blocks, reach "
                  f"{segments_stats['reach']} blocks, scratch {segments_stats['scratch_bytes'] / 2**20:,.0f} MiB")

            # 3. relabel: every block reads its rows of each LUT
            start = time.perf_counter()
            paths = [str(store.lut_path(t)) for t in THRESHOLDS]
            per_task = max(1, blocks // (8 * args.workers))
            futures = [client.submit(relabel_blocks, paths, list(range(b, min(b + per_task, blocks))), nodes_mean,
                                     args.seed, pure=False) for b in range(0, blocks, per_task)]
            rows = sum(client.gather(futures))
            del futures
            relabel_seconds = time.perf_counter() - start
            print(f"relabel: {rows:,} LUT rows read by {blocks} blocks in {relabel_seconds:.1f} s")
            worker_peak = max(client.run(peak_rss_mib).values())
    finally:
        store.close()
        if server is not None:
            server.stop()
    driver_peak = peak_rss_mib()
    lut_bytes = sum(p.stat().st_size for p in Path(store.lut_dir).rglob("*") if p.is_file())
    figures.update(
        edges=edges, nodes=nodes, write_seconds=round(write_seconds, 2),
        write_edges_per_s=round(edges / write_seconds), segments_seconds=round(segments_seconds, 2),
        relabel_seconds=round(relabel_seconds, 2), driver_peak_mib=round(driver_peak, 1),
        worker_peak_mib=round(worker_peak, 1), lut_bytes=lut_bytes, segments_pieces=segments_stats["pieces"],
        segments_reach=segments_stats["reach"], segments_scratch_bytes=segments_stats["scratch_bytes"],
    )
    if args.store == "file" and not args.keep and not args.folder:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return figures


def projection(f: dict, block_voxels: tuple[int, int, int], nodes_mean: float, args) -> dict:
    """10^12 voxels from the measured rates: core hours per stage, storage, driver memory."""
    voxels_per_block = int(np.prod(block_voxels))
    blocks = math.ceil(TB_VOXELS / voxels_per_block)
    fragments = MEASURED["fragments_per_mvoxel"] * TB_VOXELS / 1e6
    edges = fragments * MEASURED["edges_per_fragment"]
    cores = args.workers
    hours = {
        "fragments": TB_VOXELS / (PIPELINE_RATES["fragments"] * 1e6) / 3600,
        "agglomerate": TB_VOXELS / (PIPELINE_RATES["agglomerate"] * 1e6) / 3600,
        "graph_write": edges / (f["write_edges_per_s"] / cores) / 3600,
        "segments": edges / (f["edges"] / f["segments_seconds"] / cores) / 3600,
        # voxels through the kernel, plus each block's LUT reads as measured
        "relabel": TB_VOXELS / f["relabel_mvoxel_per_s"] / 1e6 / 3600
        + blocks * (f["relabel_seconds"] * cores / f["blocks"]) / 3600,
    }
    return {
        "projected_voxels": TB_VOXELS,
        "projected_blocks": blocks,
        "projected_fragments": round(fragments),
        "projected_edges": round(edges),
        **{f"projected_core_hours_{k}": round(v, 1) for k, v in hours.items()},
        "projected_core_hours_per_tb": round(sum(hours.values()), 1),
        # file store: an .npz per block for nodes and for edges; LUTs: a piece per threshold per piece of blocks
        "projected_graph_objects": 2 * blocks,
        "projected_graph_bytes": round(fragments * 40 + edges * 20),
        "projected_lut_bytes": round(fragments * 16 * len(THRESHOLDS)),
        "projected_lut_objects": len(THRESHOLDS) * math.ceil(blocks / max(1, int(2_000_000 // max(nodes_mean * MEASURED["edges_per_fragment"], 1)))),
        "projected_volume_objects_per_dataset": blocks,
        "projected_fragments_volume_bytes_uncompressed": 8 * TB_VOXELS,
        "projected_driver_peak_mib": f["driver_peak_mib"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="10^6 edges")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-memory", default="10GiB")
    parser.add_argument("--store", default="file", help="file | postgres (a temporary local server) | a store URL")
    parser.add_argument("--block-voxels", type=int, nargs=3, default=[128, 256, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="where the store goes (default: the system's temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the file store")
    parser.add_argument("--folder", help="the benchmark's folder (kept); blocks written there before are reused")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.edges = 1_000_000
    fragments_per_block = MEASURED["fragments_per_mvoxel"] * int(np.prod(args.block_voxels)) / 1e6
    rate = relabel_voxel_rate((32, 128, 128), max(1, int(fragments_per_block)))
    figures = run(args)
    figures["relabel_mvoxel_per_s"] = round(rate, 1)
    figures.update(projection(figures, tuple(args.block_voxels), fragments_per_block, args))
    print(f"driver peak {figures['driver_peak_mib']:.0f} MiB, worker peak {figures['worker_peak_mib']:.0f} MiB")
    print("projection for 10^12 voxels (core hours): " + ", ".join(
        f"{k[len('projected_core_hours_'):]} {v}" for k, v in figures.items() if k.startswith("projected_core_hours_")))
    print(f"  {figures['projected_edges']:.3g} edges, graph {figures['projected_graph_bytes'] / 1e9:.0f} GB in "
          f"{figures['projected_graph_objects']:,} objects, LUTs {figures['projected_lut_bytes'] / 1e9:.0f} GB, "
          f"driver {figures['projected_driver_peak_mib']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
