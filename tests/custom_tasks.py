"""Users' tasks for tests/test_tasks.py: defined here, outside the package, as a lab would."""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage

import blockseg


def smooth(raw: np.ndarray, sigma_voxels=(1.0, 2.0, 2.0)) -> np.ndarray:
    """The function both ways run: a 3D Gaussian (reflecting at the data's faces)."""
    return ndimage.gaussian_filter(raw.astype(np.float32), sigma_voxels, truncate=3.0)


class Smooth(blockseg.Task):
    """Gaussian smoothing of a volume; sigma in nm."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        source: str = "raw"
        sigma: float = 20.0
        output: str = "smoothed"
        pause: float = 0.0  # seconds per block: lets a test kill the driver mid-run

    def reads(self, params):
        # 3 sigma (the kernel's reach, truncate=3) plus a voxel
        return {"raw": blockseg.Read(params.source, context=3 * params.sigma + 20)}

    def writes(self, params):
        return {params.output: blockseg.Write("float32")}

    def process(self, params, raw, voxel_size):
        time.sleep(params.pause)
        return {params.output: smooth(raw, [params.sigma / v for v in voxel_size])}


class Threshold(blockseg.Task):
    """A mask of the voxels above a value of what another task wrote (tasks chain by name)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        source: str = "smoothed"
        value: float = 0.5

    def reads(self, params):
        return {"data": blockseg.Read(params.source)}

    def writes(self, params):
        return {"foreground": blockseg.Write("uint8")}

    def process(self, params, data):
        return (data > params.value).astype(np.uint8)


class NoBlockFunction(blockseg.Task):
    """Forgot process()."""

    def writes(self, params):
        return {"nothing": blockseg.Write()}
