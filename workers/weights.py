"""deepflash2 mask transforms: ridges, U-Net weight maps, sampling, LogConv.

From instance labels (0 is background) this module derives what a U-Net
needs to train on touching objects:

- :func:`class_labels_with_ridges`: foreground/background class labels where
  the voxels at which two instances touch become background "ridges", so the
  network learns to separate them.
- :func:`unet_weights`: the per-voxel loss weight of Ronneberger et al. as
  parameterised by deepflash2 (``bws``, ``fds``, ``bwf``, ``fbr``), from the
  distances ``d1`` and ``d2`` to the nearest and second-nearest instance.
  :func:`weights_context` gives the context a block needs for it.
- :func:`sampling_pdf` and :func:`random_center`: draw training-patch centres
  with foreground ``1 / fbr`` times as likely as background.
- :func:`logconv_distance`, :func:`logconv_instance_distances` and
  :func:`logconv_weights`: the fast convolutional distance transform
  (LogConv, Karam, Sugimoto and Hirakawa, IEEE SPL 26(6), 2019) that
  deepflash2 uses to compute weights on the fly; ``LogConv`` is the same as a
  ``torch.nn.Module`` for GPUs, defined only when first accessed so that
  importing this module never imports torch.

The weight of a voxel is ``1`` on the foreground and, on the background
(ridges included)::

    w = fbr + (1 - fbr) * exp(-d1**2 / (2 fds**2)) + bwf * exp(-(d1 + d2)**2 / (2 bws**2))

Examples
--------
>>> import numpy as np
>>> labels = np.zeros((1, 9), np.uint8)
>>> labels[0, 0], labels[0, 4] = 1, 2
>>> w = unet_weights(labels, bws=2, fds=2, bwf=10, fbr=0.1)
>>> round(float(w[0, 2]), 4)      # d1 = d2 = 2: 0.1 + 0.9 e^-0.5 + 10 e^-2
1.9992
>>> float(w[0, 4])                # foreground
1.0
"""

from __future__ import annotations

from workers.logconv import (  # noqa: F401
    LOGCONV_KERNEL_SIZE,
    LOGCONV_LAMBDA,
    _torch_logconv,
    lambda_kernel,
    logconv_distance,
    logconv_instance_distances,
    logconv_weights,
)
from workers.patch_sampling import (  # noqa: F401
    _cell_starts,
    _grid_shape,
    _sum_over_cells,
    random_center,
    sampling_pdf,
)
from workers.ridges import _check_labels, _remove_ridges, class_labels_with_ridges, ridge_mask  # noqa: F401
from workers.unet_weights import (  # noqa: F401
    _check_voxel_size,
    _check_weight_parameters,
    _grow,
    _keep_two_smallest,
    _weights_formula,
    _world,
    instance_distances,
    unet_weights,
    weights_context,
    weights_saturation_distance,
)


# --------------------------------------------------------------------------
# torch


def __getattr__(name: str):
    # PEP 562: `workers.weights.LogConv` imports torch only when asked for,
    # so the rest of this module works without torch installed.
    if name == "LogConv":
        return _torch_logconv()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
