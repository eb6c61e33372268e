"""Training targets from instance labels, in one place.

The three families live in their own modules because each is a sizeable
algorithm; this module is the entry point a training loader imports:

- local shape descriptors (:mod:`workers.lsds`),
- BiaPy instance channels B, C, D, M, P, Dv2 and their sets
  (:mod:`workers.channels`),
- deepflash2 ridges, U-Net weight maps, sampling PDFs and the LogConv
  distance transform (:mod:`workers.weights`).

Examples
--------
>>> import numpy as np
>>> from workers.targets import local_shape_descriptors, instance_channels
>>> labels = np.zeros((16, 16), dtype=np.uint32)
>>> labels[4:12, 4:12] = 1
>>> local_shape_descriptors(labels, sigma=3.0).shape
(6, 16, 16)
>>> instance_channels(labels, "BC").shape
(2, 16, 16)
"""

from __future__ import annotations

from workers.channels import (
    central_points,
    channel_names,
    contour_distance,
    contour_distance_v2,
    contour_mask,
    foreground_mask,
    inside_mask,
    instance_channels,
)
from workers.lsds import local_shape_descriptors, lsd_context, num_channels
from workers.weights import (
    class_labels_with_ridges,
    lambda_kernel,
    logconv_distance,
    logconv_instance_distances,
    logconv_weights,
    random_center,
    ridge_mask,
    sampling_pdf,
    unet_weights,
)

__all__ = [
    "central_points",
    "channel_names",
    "class_labels_with_ridges",
    "contour_distance",
    "contour_distance_v2",
    "contour_mask",
    "foreground_mask",
    "inside_mask",
    "instance_channels",
    "lambda_kernel",
    "local_shape_descriptors",
    "logconv_distance",
    "logconv_instance_distances",
    "logconv_weights",
    "lsd_context",
    "num_channels",
    "random_center",
    "ridge_mask",
    "sampling_pdf",
    "unet_weights",
]


def __getattr__(name: str):
    # The torch LogConv module stays lazy here too, so importing the
    # targets never imports torch.
    if name == "LogConv":
        from workers import weights

        return weights.LogConv
    raise AttributeError(f"module 'workers.targets' has no attribute {name!r}")
