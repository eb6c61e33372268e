"""Per-stage throughput and peak memory of the whole pipeline on a synthetic volume.

Prints, for each stage, its wall time and Mvoxel/s per worker, and the peak
resident memory of the driver and of the busiest worker. With ``--json PATH``
the same figures are written as one flat JSON object
(``<stage>_seconds``, ``<stage>_mvox_per_s_per_worker``, ``driver_peak_mib``,
``worker_peak_mib``). ``segments`` runs on the driver alone: its figure is
per driver.

Then the fragments stage runs again alone, with the default method and with
each ``--versus`` method, alternating (``--rounds``), on the same cluster and
input: ``fragments_<method>_seconds`` and
``fragments_<method>_mvox_per_s_per_worker``, the best of the rounds.

Usage::

    python benchmarks/pipeline.py                # 128 x 256 x 256, blocks 64 x 128 x 128
    python benchmarks/pipeline.py --quick        # 64 x 128 x 128, blocks 32 x 64 x 64
    python benchmarks/pipeline.py --workers 2 --json figures.json
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import yaml

STAGES = ("fragments", "agglomerate", "segments", "relabel", "evaluate")


def _peak_mib() -> float:
    """This process's peak resident memory.

    VmHWM, not ru_maxrss: a worker process starts with its parent's
    ru_maxrss on Linux, which would count the driver's memory twice.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fragments_side_by_side(client, config_path: Path, run, versus: list[str], rounds: int) -> dict[str, float]:
    """The fragments stage alone with the run's own method and each of ``versus``, alternating; best seconds of each."""
    from blockseg.config import load_config
    from blockseg.pipeline import open_run, run_pipeline

    methods = [run.config.stages.fragments.method] + [m for m in versus if m != run.config.stages.fragments.method]
    if len(methods) < 2:
        return {}
    data = yaml.safe_load(config_path.read_text())
    best: dict[str, float] = {}
    for round_ in range(rounds):
        for method in methods:
            data["output"] = f"side_by_side/{method}_{round_}"
            data["stages"]["fragments"] = {"method": method}
            path = config_path.with_name(f"side_{method}_{round_}.yaml")
            path.write_text(yaml.safe_dump(data))
            other = open_run(load_config(path))
            seconds = run_pipeline(other, client, stages=["fragments"])["fragments"].seconds
            other.store.close()
            best[method] = min(best.get(method, seconds), seconds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small volume that runs in about a minute")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, help="volume shape in voxels (z y x)")
    parser.add_argument("--block", type=int, nargs=3, help="block shape in voxels (z y x)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--versus", nargs="*", default=["boundary_watershed"],
                        help="fragments methods whose stage runs again beside the default's (default: boundary_watershed)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the side-by-side fragments runs")
    args = parser.parse_args()

    from blockseg.cluster import open_client
    from blockseg.config import load_config
    from blockseg.demo import DEMO_VOXEL_SIZE, write_demo_inputs
    from blockseg.pipeline import open_run, run_pipeline

    shape = tuple(args.shape or ((64, 128, 128) if args.quick else (128, 256, 256)))
    block = tuple(args.block or ((32, 64, 64) if args.quick else (64, 128, 128)))
    voxel_size = DEMO_VOXEL_SIZE
    voxels = 1
    for s in shape:
        voxels *= s

    with tempfile.TemporaryDirectory(prefix="blockseg-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        write_demo_inputs(folder, shape=shape, seed=0)
        print(f"synthetic input {shape} at {voxel_size} nm written in {time.perf_counter() - start:.1f} s")
        config_path = folder / "bench.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "input": {"affinities": "input.zarr/affinities", "ground_truth": "input.zarr/labels"},
                    "output": "output",
                    "block_shape": [b * v for b, v in zip(block, voxel_size)],
                    "stages": {"relabel": {"thresholds": [0.3, 0.5]}},
                    "scheduler": {"progress": False},
                    # blockseg's own local cluster, as `blockseg run` starts it
                    "cluster": {"local": {"workers": args.workers, "threads_per_worker": 1}},
                }
            )
        )
        config = load_config(config_path)
        with open_client(config.cluster, quiet=True) as client:
            run = open_run(config)
            reports = run_pipeline(run, client)
            run.store.close()
            worker_peaks = client.run(_peak_mib)
            side_by_side = _fragments_side_by_side(client, config_path, run, args.versus, args.rounds)

    figures: dict[str, float] = {}
    print(f"\nvolume {shape} = {voxels / 1e6:.1f} Mvoxel, blocks {block}, {args.workers} worker(s)")
    print(f"{'stage':<12} {'seconds':>9} {'Mvox/s/worker':>14}")
    for name in STAGES:
        report = reports[name]
        # relabel writes one volume per relabel threshold: count each
        work = voxels * (len(config.relabel_thresholds) if name == "relabel" else 1)
        per = 1 if name == "segments" else args.workers
        rate = work / max(report.seconds, 1e-9) / per / 1e6
        figures[f"{name}_seconds"] = round(report.seconds, 3)
        figures[f"{name}_mvox_per_s_per_worker"] = round(rate, 3)
        print(f"{name:<12} {report.seconds:9.2f} {rate:14.2f}")
    if side_by_side:
        print(f"\nfragments stage side by side, same cluster and input, best of {args.rounds} alternating round(s):")
        default_method = run.config.stages.fragments.method
        for method, seconds in side_by_side.items():
            rate = voxels / seconds / args.workers / 1e6
            ratio = seconds / side_by_side[default_method]
            shown = f"{method} (default)" if method == default_method else method
            print(f"  {shown:<32} {seconds:7.2f} s {rate:7.2f} Mvox/s/worker  {ratio:5.2f}x the default's time")
            figures[f"fragments_{method}_seconds"] = round(seconds, 3)
            figures[f"fragments_{method}_mvox_per_s_per_worker"] = round(rate, 3)
    figures["driver_peak_mib"] = round(_peak_mib(), 1)
    figures["worker_peak_mib"] = round(max(worker_peaks.values()), 1)
    figures["best_voi_sum"] = round(run.scores["best"]["voi_sum"], 4)
    print(f"driver peak {figures['driver_peak_mib']:.0f} MiB, worker peak {figures['worker_peak_mib']:.0f} MiB")
    print(f"best VOI sum {figures['best_voi_sum']} at threshold {run.scores['best']['threshold']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
