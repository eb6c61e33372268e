"""Fragment methods against plain whole-volume waterz, on real data, isotropic and serial-section.

For each data set it runs the whole pipeline (fragments, agglomerate,
segments, relabel, evaluate) blockwise on 2 workers with the shipped
defaults (``default``: no fragments key set, so the data chooses, see
blockseg/data_defaults.py), once more as one block, and with each named
``stages.fragments.method``. Beside them, what a user would run instead:
plain waterz on the whole volume at once, on its own fragments (``waterz``)
and on blockseg's default fragments (``waterz on ours``: do the fragments
respect the affinity edges?), with the same scoring (``hist_quant_75``)
and VOI, best over thresholds 0.05..0.95.

Data sets:

- ``gala``: gala's FIB-SEM volume (50 x 100 x 200 at 10 nm), its real pixel
  classifier's boundary map as ``input.boundaries``, blocks 25 x 50 x 50.
- ``flyem``: FlyEM medulla 250^3 at 10 nm, affinities from the labels
  (2-voxel membrane band, noise 0.1, blur 1 voxel), blocks 64 x 128 x 128.
- ``demo``: the synthetic demo volume 64 x 192 x 192 at 20 x 10 x 10 nm,
  blocks 32 x 64 x 64.
- ``aniso``: serial-section EM made from FlyEM's labels: voxel size
  40 x 8 x 8 nm, affinity = label equality with the -z/-y/-x neighbour,
  noise 0.15, then a blur of 0.2 voxel across sections and 0.8 in them
  (sharp: the low affinities sit on one edge of the grid); blocks
  64 x 128 x 128.
- ``isbi``: ISBI 2012's 30 serial sections at 50 x 4 x 4 nm, per-section
  instances (connected components of the non-membrane pixels, membrane not
  scored), affinities from them as for ``aniso``; blocks 15 x 256 x 256.

Prints one table; ``--json PATH`` writes the figures as one flat object
(``<data>_<column>_voi_sum``, ``<data>_<column>_seconds`` with columns
``default``, ``one_block``, each method, each ``--scorings`` entry, ``waterz``,
``waterz_on_ours``).

Usage::

    python benchmarks/fragments.py                       # all data sets, every method (about 15 minutes)
    python benchmarks/fragments.py --quick               # gala, demo and aniso, default only
    python benchmarks/fragments.py --data aniso --methods affinity_watershed boundary_watershed
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ("affinity_watershed", "boundary_watershed", "distance_watershed", "mutex_watershed")
DATA_SETS = ("gala", "flyem", "demo", "aniso", "isbi")
def _volumes(name: str, quick: bool) -> tuple[dict[str, np.ndarray], tuple[int, ...], tuple[int, ...]]:
    """The arrays of a data set (``affinities`` or ``boundaries``, ``labels``), its voxel size and block shape (voxels)."""
    from blockseg.synthetic import affinities_from_labels, per_section_instances, serial_section_affinities

    if name == "gala":
        data = np.load(SHARED_DATA / "gala_fibsem_train.npz")
        arrays = {"boundaries": data["boundary"].astype(np.float32), "labels": data["labels"].astype(np.uint64)}
        return arrays, (10, 10, 10), (25, 50, 50)
    if name == "flyem":
        labels = np.load(SHARED_DATA / "flyem_medulla_250.npz")["labels"].astype(np.uint64)
        affinities = affinities_from_labels(labels, noise=0.1, seed=0, membrane_width=2)
        return {"affinities": affinities, "labels": labels}, (10, 10, 10), (64, 128, 128)
    if name == "aniso":
        labels = np.load(SHARED_DATA / "flyem_medulla_250.npz")["labels"].astype(np.uint64)
        return {"affinities": serial_section_affinities(labels), "labels": labels}, (40, 8, 8), (64, 128, 128)
    if name == "isbi":
        labels = per_section_instances(np.load(SHARED_DATA / "isbi2012_train.npz")["membrane"])
        return {"affinities": serial_section_affinities(labels), "labels": labels}, (50, 4, 4), (15, 256, 256)
    from blockseg.demo import DEMO_VOXEL_SIZE
    from blockseg.synthetic import make_demo_volume

    shape = (32, 128, 128) if quick else (64, 192, 192)
    volumes = make_demo_volume(shape=shape, voxel_size=DEMO_VOXEL_SIZE, seed=0, noise=0.1)
    arrays = {"affinities": volumes["affinities"], "labels": volumes["labels"].astype(np.uint64)}
    return arrays, tuple(DEMO_VOXEL_SIZE), (32, 64, 64)


def _write(arrays: dict[str, np.ndarray], voxel_size, folder: Path) -> dict[str, str]:
    """The arrays as zarr under ``folder``; the config's input section."""
    from blockseg.geometry import Roi
    from blockseg.volume import create_volume

    labels = arrays["labels"]
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(labels.shape, voxel_size)))
    chunk = tuple(min(64, s) for s in labels.shape)
    section = {}
    for key, array in arrays.items():
        channels = array.shape[:-3]
        dtype = np.uint64 if key == "labels" else np.float32
        create_volume(f"{folder}/inputs.zarr/{key}", roi, voxel_size, dtype, chunk, channels).write(roi, array.astype(dtype))
        section["ground_truth" if key == "labels" else key] = f"{folder}/inputs.zarr/{key}"
    return section


def _run(client, folder: Path, inputs: dict, voxel_size, block_voxels, method: str | None, scoring: str | None = None):
    """Best scores, seconds, and the run (for its fragments' URL) of one pipeline run."""
    from blockseg.config import load_config
    from blockseg.pipeline import open_run, run_pipeline

    folder.mkdir(parents=True)
    fragments = {"method": method} if method else {}
    config = {
        "input": inputs,
        "output": "out",
        "block_shape": [b * v for b, v in zip(block_voxels, voxel_size)],
        "stages": {"fragments": fragments, "relabel": {"thresholds": [0.5]}, **({"agglomerate": {"scoring": scoring}} if scoring else {})},
        "scheduler": {"progress": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = open_run(load_config(path))
    start = time.perf_counter()
    run_pipeline(run, client)
    seconds = time.perf_counter() - start
    run.store.close()
    return run.scores["best"], seconds, run


def _row(figures: dict, name: str, column: str, shown: str, blocks: str, best: dict, seconds: float) -> None:
    print(
        f"{name:6s} {shown:26s} {blocks:>11s} {best['voi_sum']:8.3f} {best['voi_split']:7.3f} "
        f"{best['voi_merge']:7.3f} {best['threshold']:5.2f} {seconds:8.1f}",
        flush=True,
    )
    figures[f"{name}_{column}_voi_sum"] = round(best["voi_sum"], 4)
    figures[f"{name}_{column}_seconds"] = round(seconds, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="gala, a small demo and aniso; the default only")
    parser.add_argument("--data", nargs="+", choices=DATA_SETS, help="data sets (default: all)")
    parser.add_argument("--methods", nargs="*", choices=METHODS, help="methods besides the default (default: all)")
    parser.add_argument("--no-waterz", action="store_true", help="leave out the plain waterz columns")
    parser.add_argument("--scorings", nargs="*", default=[],
                        help="agglomerate scorings to run with the default fragments besides hist_quant_75 (e.g. mean)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    names = args.data or (["gala", "demo", "aniso"] if args.quick else list(DATA_SETS))
    methods = args.methods if args.methods is not None else ([] if args.quick else list(METHODS))
    if any(n != "demo" for n in names) and not SHARED_DATA.is_dir():
        parser.error(f"real data missing: {SHARED_DATA} (see ../shared/data/README.md)")

    from distributed import Client, LocalCluster

    from blockseg.data_defaults import fragments_defaults
    from blockseg.volume import open_volume
    from workers.baselines import whole_volume_waterz
    from workers.fragments import affinities_from_boundaries

    figures: dict[str, float] = {}
    print(f"{'data':6s} {'fragments':26s} {'blocks':>11s} {'voi_sum':>8s} {'split':>7s} {'merge':>7s} {'thr':>5s} {'seconds':>8s}")
    with tempfile.TemporaryDirectory(prefix="blockseg-fragments-") as tmp, LocalCluster(
        n_workers=args.workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster, Client(cluster) as client:
        for name in names:
            folder = Path(tmp) / name
            arrays, voxel_size, block = _volumes(name, args.quick)
            inputs = _write(arrays, voxel_size, folder)
            blocks = "x".join(str(b) for b in block)
            kind = "affinities" if "affinities" in arrays else "boundaries"
            chosen = fragments_defaults(kind, voxel_size)["method"]
            best, seconds, run = _run(client, folder / "default", inputs, voxel_size, block, None)
            _row(figures, name, "default", f"default ({chosen})", blocks, best, seconds)
            ours = open_volume(run.fragments_url)
            whole_shape = arrays["labels"].shape
            best, seconds, _ = _run(client, folder / "one_block", inputs, voxel_size, whole_shape, None)
            _row(figures, name, "one_block", "default as one block", "x".join(map(str, whole_shape)), best, seconds)
            for method in methods:
                best, seconds, _ = _run(client, folder / method, inputs, voxel_size, block, method)
                _row(figures, name, method, method, blocks, best, seconds)
            for scoring in args.scorings:
                best, seconds, _ = _run(client, folder / scoring, inputs, voxel_size, block, None, scoring)
                _row(figures, name, scoring, f"default, {scoring}", blocks, best, seconds)
            if args.no_waterz:
                continue
            affinities = arrays.get("affinities")
            if affinities is None:
                affinities = affinities_from_boundaries(arrays["boundaries"])
            start = time.perf_counter()
            best = whole_volume_waterz(affinities, arrays["labels"])
            _row(figures, name, "waterz", "plain waterz, own fragments", "whole", best, time.perf_counter() - start)
            start = time.perf_counter()
            best = whole_volume_waterz(affinities, arrays["labels"], fragments=ours.read(ours.roi))
            _row(figures, name, "waterz_on_ours", "plain waterz, our fragments", "whole", best, time.perf_counter() - start)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
