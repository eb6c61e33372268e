"""Throughput of the mws and channel_instances stages, and of the oracle mutex watershed.

A synthetic volume of touching cells is turned into affinities with long-range
offsets (from embeddings: a random vector per cell plus noise) and into BiaPy
BC channels. The script runs, on a local dask cluster:

- the ``mws`` stage (mutex watershed per block with context) and its
  ``stitch`` stage on the affinities,
- the ``channel_instances`` stage (and ``stitch``) on the channels,

and, in this process, ``mwatershed`` on the whole volume at once (the oracle,
one core). Throughput is Mvoxel/s per core, counted two ways:

- wall clock: volume voxels / stage seconds / workers (one thread each)
  (``mws_mvox_per_s``, ...). On a machine that other work shares, the workers
  may get less than a core each while the oracle, alone in this process,
  gets one, so this side of the comparison moves with the machine's load;
- CPU time: volume voxels / CPU seconds the stage cost, summed over the
  worker processes (``mws_mvox_per_cpu_s``), against the oracle's CPU seconds
  (``oracle_mws_mvox_per_cpu_s``). This is the fair per-core comparison;
  ``mws_vs_oracle_per_core`` is its ratio (above 1: the stage does more
  per core than the oracle), ``mws_vs_oracle_wall_per_core`` the wall-clock one.

The 1-minute load average before and after is recorded (``load_before``,
``load_after``). With ``--json PATH`` the figures are written as one flat JSON
object (``mws_mvox_per_s``, ``stitch_mvox_per_s``,
``channel_instances_mvox_per_s``, ``oracle_mws_mvox_per_s``, ``mws_voi_sum``,
``oracle_voi_sum``, ``mws_vs_oracle_per_core``, ...).

The quick run's blocks span the volume's 64 z sections: mwatershed's cost per
voxel grows with the problem (on these affinities one CPU core solves about
0.5 Mvoxel/s at 0.1 Mvoxel, 0.29 at 0.7, 0.16 at 4.2), so blocks win over one
whole-volume solve as long as the context they read on top stays small, and a
block that reaches the volume's faces in z reads no context there (measured:
0.19 Mvoxel per CPU second with 64 x 128 x 128 blocks, 0.155 with 32 x 128 x 128).

Usage::

    python benchmarks/embeddings.py              # 128 x 256 x 256, blocks 64 x 128 x 128
    python benchmarks/embeddings.py --quick      # 64 x 256 x 256, blocks 64 x 128 x 128
    python benchmarks/embeddings.py --workers 2 --json figures.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

VOXEL_SIZE = (20, 10, 10)
OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-2, 0, 0], [0, -4, 0], [0, 0, -4], [0, -4, -4], [0, 4, -4]]
BIAS = -0.5
INPUT_CHUNKS = (32, 64, 64)


def _cells(shape: tuple[int, ...], spacing: int, seed: int) -> np.ndarray:
    """Touching Voronoi cells of random seeds, about ``spacing`` voxels apart (no background)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    count = max(1, int(np.prod(shape) / spacing**3))
    markers = np.zeros(shape, np.int64)
    markers[tuple(rng.integers(0, n, count) for n in shape)] = np.arange(1, count + 1)
    _, nearest = ndi.distance_transform_edt(markers == 0, return_indices=True)
    return markers[tuple(nearest)]


def _inputs(folder: Path, shape: tuple[int, ...], seed: int) -> np.ndarray:
    from blockseg.geometry import Roi
    from blockseg.volume import create_volume
    from workers import channels as channels_worker
    from workers import embeddings as embeddings_worker

    labels = _cells(shape, 24, seed)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(labels.max()) + 1, 8)).astype(np.float32) * 2
    embeddings = centres[labels].transpose(3, 0, 1, 2)
    embeddings += rng.normal(scale=0.05, size=embeddings.shape).astype(np.float32)
    affinities = embeddings_worker.embeddings_to_affinities(embeddings, OFFSETS, 1.0)
    channels = channels_worker.instance_channels(labels, "BC", voxel_size=VOXEL_SIZE).astype(np.float32)
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(shape, VOXEL_SIZE)))
    url = folder / "input.zarr"
    # chunked as stored EM data is: one chunk of the whole volume would make
    # every block decompress all of it (0.4 s of a 6 s mws block)
    chunks = tuple(min(c, s) for c, s in zip(INPUT_CHUNKS, shape))
    create_volume(f"{url}/labels", roi, VOXEL_SIZE, "uint64", chunks).write(roi, labels.astype(np.uint64))
    create_volume(f"{url}/affinities", roi, VOXEL_SIZE, "float32", chunks, (len(OFFSETS),)).write(roi, affinities)
    create_volume(f"{url}/channels", roi, VOXEL_SIZE, "float32", chunks, (2,)).write(roi, channels)
    return labels, affinities


def _config(folder: Path, name: str, block: tuple[int, ...], inputs: dict, stages: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "input": {**inputs, "ground_truth": "input.zarr/labels"},
        "output": name,
        "block_shape": [b * v for b, v in zip(block, VOXEL_SIZE)],
        "stages": {"segments": {"thresholds": [0.5]}, **stages},
        "scheduler": {"progress": False},
    }))
    return path


def _worker_cpu_seconds(client) -> float:
    """CPU seconds used so far by all worker processes together (every thread of each)."""
    return float(sum(client.run(time.process_time).values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 x 256 x 256, about a minute")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, help="volume shape in voxels (z y x)")
    parser.add_argument("--block", type=int, nargs=3, help="block shape in voxels (z y x)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()

    import mwatershed
    from distributed import Client, LocalCluster

    from blockseg.config import load_config
    from blockseg.pipeline import open_run, run_pipeline
    from workers import evaluate as evaluate_worker

    shape = tuple(args.shape or ((64, 256, 256) if args.quick else (128, 256, 256)))
    block = tuple(args.block or (64, 128, 128))
    voxels = int(np.prod(shape))
    figures: dict[str, float] = {"load_before": round(os.getloadavg()[0], 2)}

    def voi(segmentation: np.ndarray, truth: np.ndarray) -> float:
        table = evaluate_worker.contingency_table(segmentation, truth)
        return round(evaluate_worker.scores_from_contingency(table)["voi_sum"], 4)

    with tempfile.TemporaryDirectory(prefix="blockseg-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        labels, affinities = _inputs(folder, shape, seed=0)
        print(f"synthetic input {shape} at {VOXEL_SIZE} nm written in {time.perf_counter() - start:.1f} s")

        # the oracle: mwatershed on the whole volume, signed weights (affinity + bias), one core
        start, cpu = time.perf_counter(), time.process_time()
        oracle = mwatershed.agglom((affinities.astype(np.float64) + BIAS), OFFSETS)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        figures["oracle_mws_seconds"] = round(seconds, 3)
        figures["oracle_mws_mvox_per_s"] = round(voxels / seconds / 1e6, 4)
        figures["oracle_mws_cpu_seconds"] = round(cpu, 3)
        figures["oracle_mws_mvox_per_cpu_s"] = round(voxels / cpu / 1e6, 4)
        figures["oracle_voi_sum"] = voi(oracle, labels)

        runs = {
            "mws": ({"affinities": "input.zarr/affinities"}, {"mws": {"offsets": OFFSETS, "bias": BIAS}}),
            "channel_instances": (
                {"channels": "input.zarr/channels"},
                {"channel_instances": {"channel_set": "BC", "max_object_extent": 480, "parameters": {"voronoi_on_mask": True}}},
            ),
        }
        with LocalCluster(
            n_workers=args.workers, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster, Client(cluster) as client:
            for name, (inputs, stages) in runs.items():
                config = load_config(_config(folder, name, block, inputs, stages))
                run = open_run(config)
                cpu = {}
                try:
                    # one stage at a time, so each one's CPU seconds can be told apart
                    for stage in (name, "stitch", "segments", "relabel"):
                        before = _worker_cpu_seconds(client)
                        reports = run_pipeline(run, client, stages=[stage])
                        cpu[stage] = _worker_cpu_seconds(client) - before
                finally:
                    run.store.close()
                from blockseg.volume import open_volume

                result = open_volume(run.segmentation_url(0.5))
                figures[f"{name}_seconds"] = round(reports[name].seconds, 3)
                figures[f"{name}_mvox_per_s"] = round(voxels / reports[name].seconds / args.workers / 1e6, 4)
                figures[f"{name}_stitch_mvox_per_s"] = round(voxels / reports["stitch"].seconds / args.workers / 1e6, 4)
                figures[f"{name}_cpu_seconds"] = round(cpu[name], 3)
                figures[f"{name}_mvox_per_cpu_s"] = round(voxels / cpu[name] / 1e6, 4)
                figures[f"{name}_stitch_mvox_per_cpu_s"] = round(voxels / cpu["stitch"] / 1e6, 4)
                figures[f"{name}_voi_sum"] = voi(result.read(result.roi), labels)
    figures["stitch_mvox_per_s"] = figures["mws_stitch_mvox_per_s"]
    figures["mws_vs_oracle_per_core"] = round(figures["mws_mvox_per_cpu_s"] / figures["oracle_mws_mvox_per_cpu_s"], 3)
    figures["mws_vs_oracle_wall_per_core"] = round(figures["mws_mvox_per_s"] / figures["oracle_mws_mvox_per_s"], 3)
    figures["load_after"] = round(os.getloadavg()[0], 2)

    print(f"\nvolume {shape} = {voxels / 1e6:.1f} Mvoxel, blocks {block}, {args.workers} worker(s) of one thread")
    print(f"{'what':<28} {'seconds':>9} {'Mvox/s/core':>12} {'CPU s':>8} {'Mvox/CPU s':>11} {'VOI sum':>8}")
    for name, key in (("mws stage", "mws"), ("channel_instances stage", "channel_instances"), ("oracle mwatershed (whole)", "oracle_mws")):
        score = figures.get(f"{key}_voi_sum", figures.get("oracle_voi_sum"))
        print(
            f"{name:<28} {figures[f'{key}_seconds']:9.2f} {figures[f'{key}_mvox_per_s']:12.3f} "
            f"{figures[f'{key}_cpu_seconds']:8.2f} {figures[f'{key}_mvox_per_cpu_s']:11.3f} {score:8.4f}"
        )
    print(f"stitch after mws: {figures['mws_stitch_mvox_per_s']:.3f} Mvox/s/core, {figures['mws_stitch_mvox_per_cpu_s']:.3f} Mvox/CPU s")
    print(
        f"mws stage / oracle per core: {figures['mws_vs_oracle_per_core']:.2f} (CPU time), "
        f"{figures['mws_vs_oracle_wall_per_core']:.2f} (wall clock); "
        f"load average {figures['load_before']} before, {figures['load_after']} after"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
