"""Fragment methods compared on the real data: best VOI sum and seconds per method and data set.

Runs the whole pipeline (fragments, agglomerate, segments, relabel, evaluate)
blockwise on 2 workers for each ``stages.fragments.method``, and once more as
one block for the default method, on:

- ``gala``: gala's FIB-SEM volume (50 x 100 x 200 at 10 nm) given as
  ``input.boundaries`` (a real pixel classifier's boundary map), blocks
  25 x 50 x 50. Plain whole-volume waterz scores 0.273 on the watershed
  shipped with the data (../shared/data/README.md).
- ``flyem``: FlyEM medulla 250^3 at 10 nm, affinities made from the labels
  with noise (as tests/test_real_data.py), blocks 64 x 128 x 128.
- ``demo``: the synthetic demo volume 64 x 192 x 192, blocks 32 x 64 x 64.

Prints one row per (data set, method) with the best VOI sum, its split and
merge, the threshold and the pipeline's seconds. With ``--json PATH`` the
figures are one flat object: ``<data>_<method>_voi_sum`` and
``<data>_<method>_seconds`` (and ``<data>_one_block_voi_sum``).

Usage::

    python benchmarks/fragments.py              # all three data sets (a few minutes)
    python benchmarks/fragments.py --quick      # gala and a small demo volume
    python benchmarks/fragments.py --methods boundary_watershed --data gala
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ("boundary_watershed", "distance_watershed", "mutex_watershed")


def _write_inputs(name: str, folder: Path, quick: bool) -> tuple[dict, tuple[int, ...], tuple[int, ...]]:
    """The input section, voxel size and block shape (voxels) of a data set, written under ``folder``."""
    from blockseg.geometry import Roi
    from blockseg.volume import create_volume

    inputs = folder / "inputs.zarr"
    if name == "gala":
        data = np.load(SHARED_DATA / "gala_fibsem_train.npz")
        voxel_size = (10, 10, 10)
        roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(data["boundary"].shape, voxel_size)))
        create_volume(f"{inputs}/boundary", roi, voxel_size, np.float32, (25, 50, 50)).write(
            roi, data["boundary"].astype(np.float32)
        )
        create_volume(f"{inputs}/labels", roi, voxel_size, np.uint64, (25, 50, 50)).write(
            roi, data["labels"].astype(np.uint64)
        )
        return {"boundaries": f"{inputs}/boundary", "ground_truth": f"{inputs}/labels"}, voxel_size, (25, 50, 50)
    if name == "flyem":
        from blockseg.synthetic import affinities_from_labels

        data = np.load(SHARED_DATA / "flyem_medulla_250.npz")
        voxel_size = tuple(int(v) for v in data["voxel_size"])
        labels = data["labels"].astype(np.uint64)
        roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(labels.shape, voxel_size)))
        affinities = affinities_from_labels(labels, noise=0.1, seed=0, membrane_width=2)
        create_volume(f"{inputs}/affinities", roi, voxel_size, np.float32, (64, 64, 64), (3,)).write(roi, affinities)
        create_volume(f"{inputs}/labels", roi, voxel_size, np.uint64, (64, 64, 64)).write(roi, labels)
        return {"affinities": f"{inputs}/affinities", "ground_truth": f"{inputs}/labels"}, voxel_size, (64, 128, 128)
    from blockseg.demo import DEMO_VOXEL_SIZE, write_demo_inputs

    write_demo_inputs(folder, shape=(32, 128, 128) if quick else (64, 192, 192), seed=0)
    section = {"affinities": f"{folder}/input.zarr/affinities", "ground_truth": f"{folder}/input.zarr/labels"}
    return section, tuple(DEMO_VOXEL_SIZE), (32, 64, 64)


def _run(client, folder: Path, inputs: dict, voxel_size, block_voxels, method: str) -> tuple[dict, float]:
    from blockseg.config import load_config
    from blockseg.pipeline import open_run, run_pipeline

    folder.mkdir(parents=True)
    config = {
        "input": inputs,
        "output": "out",
        "block_shape": [b * v for b, v in zip(block_voxels, voxel_size)],
        "stages": {"fragments": {"method": method}, "relabel": {"thresholds": [0.5]}},
        "scheduler": {"progress": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = open_run(load_config(path))
    start = time.perf_counter()
    run_pipeline(run, client)
    seconds = time.perf_counter() - start
    run.store.close()
    return run.scores["best"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="gala and a small demo volume only")
    parser.add_argument("--data", nargs="+", choices=("gala", "flyem", "demo"), help="data sets (default: all)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    names = args.data or (["gala", "demo"] if args.quick else ["gala", "flyem", "demo"])
    missing = [n for n in names if n != "demo" and not SHARED_DATA.is_dir()]
    if missing:
        parser.error(f"real data missing: {SHARED_DATA} (see ../shared/data/README.md)")

    from distributed import Client, LocalCluster

    figures: dict[str, float] = {}
    print(f"{'data':6s} {'method':20s} {'blocks':>10s} {'voi_sum':>8s} {'split':>7s} {'merge':>7s} {'thr':>5s} {'seconds':>8s}")
    with tempfile.TemporaryDirectory(prefix="blockseg-fragments-") as tmp, LocalCluster(
        n_workers=args.workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster, Client(cluster) as client:
        for name in names:
            folder = Path(tmp) / name
            folder.mkdir()
            inputs, voxel_size, block = _write_inputs(name, folder, args.quick)
            whole = None
            for method in args.methods:
                best, seconds = _run(client, folder / method, inputs, voxel_size, block, method)
                shape = "x".join(str(b) for b in block)
                print(
                    f"{name:6s} {method:20s} {shape:>10s} {best['voi_sum']:8.3f} {best['voi_split']:7.3f} "
                    f"{best['voi_merge']:7.3f} {best['threshold']:5.2f} {seconds:8.1f}",
                    flush=True,
                )
                figures[f"{name}_{method}_voi_sum"] = round(best["voi_sum"], 4)
                figures[f"{name}_{method}_seconds"] = round(seconds, 2)
            if "boundary_watershed" in args.methods:
                from blockseg.volume import open_volume

                reference = open_volume(next(v for k, v in inputs.items() if k != "ground_truth"))
                whole_block = reference.spatial_shape
                whole, seconds = _run(client, folder / "one_block", inputs, voxel_size, whole_block, "boundary_watershed")
                shape = "x".join(str(b) for b in whole_block)
                print(f"{name:6s} {'boundary (one block)':20s} {shape:>10s} {whole['voi_sum']:8.3f} {whole['voi_split']:7.3f} "
                      f"{whole['voi_merge']:7.3f} {whole['threshold']:5.2f} {seconds:8.1f}", flush=True)
                figures[f"{name}_one_block_voi_sum"] = round(whole["voi_sum"], 4)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
