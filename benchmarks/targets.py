"""Throughput of local shape descriptors (workers.lsds) against lsd-lite.

Times ``workers.lsds.local_shape_descriptors`` and lsd-lite's ``get_lsds``
(the oracle) on the same labels, single-threaded (BLAS and OpenMP pinned to
one thread), and prints Mvoxel/s for each and the speedup. The oracle loops
over labels with full-volume filters, so on large volumes it is timed on a
leading crop (``--oracle-shape``, default at most 64 x 128 x 128) and the
speedup compares both on that same crop; the output says so.

Labels: the FlyEM medulla ground truth (``../shared/data/flyem_medulla_250.npz``,
10 nm isotropic) when present, else synthetic Voronoi cells with one-voxel
background boundaries (``--labels voronoi``).

With ``--json PATH`` the figures are written as one flat JSON object:
``lsd_mvox_per_s`` (ours on the whole volume), ``oracle_mvox_per_s`` (on its
crop), ``lsd_speedup`` (oracle time / our time on that crop), plus
``lsd_seconds``, ``oracle_seconds``, ``voxels``, ``oracle_voxels`` and
``max_abs_diff_offset_size`` (ours vs the oracle on the crop, offset and
size channels).

Usage::

    python benchmarks/targets.py                      # 64 x 128 x 128, sigma 80 nm
    python benchmarks/targets.py --quick              # 32 x 128 x 128, about 15 s
    python benchmarks/targets.py --shape 250 250 250  # ours on all of it, oracle on a crop
    python benchmarks/targets.py --labels voronoi --downsample 2 --json figures.json
"""

from __future__ import annotations

import os

# Single-threaded figures: pin the thread pools before numpy loads them.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from workers.lsds import local_shape_descriptors  # noqa: E402

FLYEM = REPOSITORY.parent / "shared" / "data" / "flyem_medulla_250.npz"
ORACLE_SHAPE = (64, 128, 128)


def flyem_labels(shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The leading ``shape`` crop of the FlyEM ground truth and its voxel size."""
    data = np.load(FLYEM)
    labels = data["labels"]
    if any(s > t for s, t in zip(shape, labels.shape)):
        raise SystemExit(f"--shape {shape} is larger than the FlyEM labels {labels.shape}")
    crop = np.ascontiguousarray(labels[tuple(slice(0, s) for s in shape)])
    return crop, tuple(int(v) for v in data["voxel_size"])


def voronoi_labels(shape: tuple[int, ...], cell_voxels: int = 20**3, seed: int = 0) -> np.ndarray:
    """Voronoi cells of about ``cell_voxels`` voxels, background on their boundaries."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    cells = max(2, int(np.prod(shape)) // cell_voxels)
    seeds = rng.random((cells, len(shape))) * shape
    grid = np.indices(shape).reshape(len(shape), -1).T
    labels = (cKDTree(seeds).query(grid)[1] + 1).reshape(shape).astype(np.uint32)
    # one-voxel boundaries, as ground truth with membranes has
    boundary = np.zeros(shape, bool)
    for axis in range(len(shape)):
        step = np.diff(labels, axis=axis) != 0
        boundary[tuple(slice(1, None) if a == axis else slice(None) for a in range(len(shape)))] |= step
    labels[boundary] = 0
    return labels


def best_time(function, repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small volume (32 x 128 x 128), about 15 s")
    parser.add_argument("--labels", choices=("flyem", "voronoi"), help="default: flyem when its file exists")
    parser.add_argument("--shape", type=int, nargs="+", help="volume shape in voxels (default 64 128 128)")
    parser.add_argument("--oracle-shape", type=int, nargs="+", help="crop the oracle is timed on")
    parser.add_argument("--sigma", type=float, default=80.0, help="Gaussian sigma in nm (default 80)")
    parser.add_argument("--voxel-size", type=int, nargs="+", help="nm per axis for voronoi (default 10 each)")
    parser.add_argument("--downsample", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="our runs; the best counts (the oracle runs once)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()

    shape = tuple(args.shape or ((32, 128, 128) if args.quick else (64, 128, 128)))
    kind = args.labels or ("flyem" if FLYEM.exists() else "voronoi")
    if kind == "flyem":
        if not FLYEM.exists():
            raise SystemExit(f"FlyEM labels not found at {FLYEM}; use --labels voronoi")
        labels, voxel_size = flyem_labels(shape)
    else:
        if args.labels is None:
            print(f"FlyEM labels not found at {FLYEM}: using synthetic Voronoi labels")
        labels = voronoi_labels(shape)
        voxel_size = tuple(args.voxel_size or (10,) * len(shape))
    oracle_shape = tuple(args.oracle_shape or tuple(min(s, o) for s, o in zip(shape, ORACLE_SHAPE[-len(shape):])))
    oracle_labels = np.ascontiguousarray(labels[tuple(slice(0, s) for s in oracle_shape)])
    params = dict(sigma=args.sigma, voxel_size=voxel_size, downsample=args.downsample)

    try:
        from lsd_lite import get_lsds
    except ImportError:
        raise SystemExit("lsd-lite is not installed: pip install lsd-lite (or the [test] extra)") from None

    print(
        f"{kind} labels {shape} ({len(np.unique(labels)) - 1} objects) at {voxel_size} nm, "
        f"sigma {args.sigma:g} nm, downsample {args.downsample}, single-threaded"
    )
    local_shape_descriptors(labels[tuple(slice(0, 8) for _ in shape)], **params)  # warm up BLAS

    ours_seconds = best_time(lambda: local_shape_descriptors(labels, **params), args.repeats)
    ours_rate = labels.size / ours_seconds / 1e6
    print(f"blockseg lsds   {ours_seconds:8.2f} s  {ours_rate:8.3f} Mvoxel/s  on {shape}")

    same = oracle_shape == shape
    if not same:
        print(f"oracle too slow for {shape}: timing it on the leading crop {oracle_shape}")
    ours_on_crop = ours_seconds if same else best_time(
        lambda: local_shape_descriptors(oracle_labels, **params), args.repeats
    )
    start = time.perf_counter()
    expected = get_lsds(oracle_labels, args.sigma, voxel_size=voxel_size, downsample=args.downsample)
    oracle_seconds = time.perf_counter() - start
    oracle_rate = oracle_labels.size / oracle_seconds / 1e6
    if not same:
        crop_rate = oracle_labels.size / ours_on_crop / 1e6
        print(f"blockseg lsds   {ours_on_crop:8.2f} s  {crop_rate:8.3f} Mvoxel/s  on {oracle_shape}")
    print(f"lsd-lite oracle {oracle_seconds:8.2f} s  {oracle_rate:8.3f} Mvoxel/s  on {oracle_shape}")
    speedup = oracle_seconds / ours_on_crop
    print(f"speedup {speedup:.1f}x (same labels {oracle_shape})")

    ours = local_shape_descriptors(oracle_labels, **params)
    offset_size = list(range(labels.ndim)) + [ours.shape[0] - 1]
    diff = np.abs(ours - expected)
    diff_offset_size = float(diff[offset_size].max())
    differing = int((diff[offset_size] > 1e-5).any(axis=0).sum())
    print(
        f"max |ours - oracle|: offset and size {diff_offset_size:.1e} ({differing} voxels > 1e-5), "
        f"all channels {diff.max():.1e} (variance and pearson: the oracle's float32 rounding)"
    )
    if args.downsample > 1:
        print(
            "  with downsampling, voxels of objects absent from the coarse grid near them get offset 0.5 here "
            "and a position-dependent offset in lsd-lite (see workers/lsds.py)"
        )

    if args.json:
        figures = {
            "lsd_mvox_per_s": ours_rate,
            "oracle_mvox_per_s": oracle_rate,
            "lsd_speedup": speedup,
            "lsd_seconds": ours_seconds,
            "oracle_seconds": oracle_seconds,
            "voxels": int(labels.size),
            "oracle_voxels": int(oracle_labels.size),
            "max_abs_diff_offset_size": diff_offset_size,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
