"""Your own blockwise task on blockseg's engine: a 3D Gaussian smoothing of the raw, then a foreground mask.

Run it on the demo volume (written first, into OUT/input.zarr)::

    python examples/custom_task.py /tmp/custom-task
    python examples/custom_task.py /tmp/custom-task --shape 16 64 64 --workers 2   # a quick one

It defines two tasks here, runs them as stages of a pipeline from Python
(``blockseg.run``; the same stages in a YAML file run with ``blockseg run``),
runs the smoothing once more as a one-off function (``blockseg.blockwise``),
and compares both with the same function applied to the whole volume.
Run it again: every block is already done, nothing is recomputed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

import blockseg

# the tasks are found as python:custom_task:Smooth, by the driver and by the
# workers it starts, so this folder goes on the import path first
sys.path.insert(0, str(Path(__file__).resolve().parent))


def gaussian(raw: np.ndarray, sigma_voxels) -> np.ndarray:
    """numpy in, numpy out: what each block runs (and what we run on the whole volume to compare)."""
    return ndimage.gaussian_filter(raw.astype(np.float32), sigma_voxels, truncate=3.0)


class Smooth(blockseg.Task):
    """3D Gaussian smoothing; sigma in nm."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        sigma: float = Field(20.0, gt=0, description="nm")
        source: str = Field("raw", description="an input or another stage's output")

    def reads(self, params):
        # the kernel reaches 3 sigma (truncate=3) and one voxel more for rounding
        return {"raw": blockseg.Read(params.source, context=3 * params.sigma + 20)}

    def writes(self, params):
        return {"smoothed": blockseg.Write("float32")}

    def process(self, params, raw, voxel_size):
        # raw covers the write ROI plus the context (clipped to the data); blockseg crops the result
        return gaussian(raw, [params.sigma / v for v in voxel_size])


class Foreground(blockseg.Task):
    """Voxels of the smoothed raw above a threshold (reads what Smooth writes: tasks chain by name)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        threshold: float = 100.0

    def reads(self, params):
        return {"smoothed": blockseg.Read("smoothed")}

    def writes(self, params):
        return {"foreground": blockseg.Write("uint8")}

    def process(self, params, smoothed):
        return (smoothed > params.threshold).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="custom-task-out")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 192, 192], metavar=("Z", "Y", "X"))
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    from blockseg.demo import DEMO_VOXEL_SIZE, write_demo_inputs
    from blockseg.volume import open_volume

    folder = Path(args.out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    inputs = write_demo_inputs(folder, shape=args.shape, seed=0)
    sigma = 20.0
    config = {
        "input": {"raw": f"{inputs}/raw"},
        "output": str(folder / "output"),
        "block_shape": [320, 320, 320],
        "stages": {
            "smooth": {"task": "python:custom_task:Smooth", "sigma": sigma},
            "foreground": {"task": "python:custom_task:Foreground", "threshold": 100.0},
        },
        "cluster": {"local": {"workers": args.workers}},
        "scheduler": {"progress": False},
    }
    report = blockseg.run(config, stages=["smooth", "foreground"])
    print(report)
    if not report.ok:
        for failure in report.failures:
            print(failure.describe())
        return 1

    raw = open_volume(f"{inputs}/raw")
    whole = gaussian(raw.read(raw.roi), [sigma / v for v in DEMO_VOXEL_SIZE])
    smoothed = open_volume(folder / "output" / "volumes.zarr" / "smoothed")
    difference = float(np.abs(smoothed.read(smoothed.roi) - whole).max())
    print(f"smooth (python:custom_task:Smooth): max difference to the whole volume: {difference:g}")

    # the same as a one-off: a plain function over blocks with 60 nm of context, like dask's map_overlap
    one_off = blockseg.blockwise(
        gaussian, {"raw": f"{inputs}/raw"}, {"smoothed": str(folder / "one_off.zarr" / "smoothed")},
        context=3 * sigma + 20, block_shape=[320, 320, 320], workers=args.workers,
        kwargs={"sigma_voxels": [sigma / v for v in DEMO_VOXEL_SIZE]},
    )
    print(one_off)
    again = open_volume(folder / "one_off.zarr" / "smoothed")
    difference = max(difference, float(np.abs(again.read(again.roi) - whole).max()))
    print(f"blockwise(gaussian): max difference to the whole volume: {difference:g}")
    return 0 if one_off.ok and difference <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
