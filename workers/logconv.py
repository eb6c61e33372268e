"""LogConv, the fast convolutional distance transform that deepflash2 uses.

LogConv (Karam, Sugimoto and Hirakawa, IEEE SPL 26(6), 2019) approximates
distances with 1D convolutions of an exponential kernel: :func:`logconv_distance`,
:func:`logconv_instance_distances` and :func:`logconv_weights` in numpy, and
the ``torch.nn.Module`` that :func:`_torch_logconv` defines on first use (as
``workers.weights.LogConv``), so that importing this module never imports
torch.

Examples
--------
>>> float(lambda_kernel(3, 0.35)[1])
1.0
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from workers.ridges import _check_labels, _remove_ridges
from workers.unet_weights import _check_weight_parameters, _keep_two_smallest, _weights_formula


#: LogConv defaults from deepflash2: ``exp(-36 / 0.35)`` is about 2e-45, the
#: smallest float32, so a 73-tap kernel is all that float32 can resolve.
LOGCONV_LAMBDA = 0.35
LOGCONV_KERNEL_SIZE = 73


def lambda_kernel(ks: int = LOGCONV_KERNEL_SIZE, lmbda: float = LOGCONV_LAMBDA) -> np.ndarray:
    """The 1D LogConv kernel ``exp(-|x| / lmbda)`` for ``x`` in ``-ks//2 .. ks//2``.

    Examples
    --------
    >>> k = lambda_kernel(3, 0.35)
    >>> float(k[1]), bool(np.isclose(k[0], np.exp(-1 / 0.35)))
    (1.0, True)
    """
    if isinstance(ks, bool) or not isinstance(ks, (int, np.integer)) or ks < 1 or ks % 2 == 0:
        raise ValueError(f"ks must be an odd positive integer, got {ks!r}")
    if not lmbda > 0:
        raise ValueError(f"lmbda must be > 0, got {lmbda!r}")
    offsets = np.arange(ks) - ks // 2
    return np.exp(-np.abs(offsets) / lmbda)


def logconv_distance(
    mask: np.ndarray,
    lmbda: float = LOGCONV_LAMBDA,
    ks: int = LOGCONV_KERNEL_SIZE,
    axes: Sequence[int] | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """Approximate distance to the nearest ``True`` voxel of ``mask`` (LogConv).

    ``d(x) = max(0, -lmbda * log(sum_y mask(y) exp(-|x - y|_1 / lmbda)))``,
    the sum taken by separable 1D convolutions with :func:`lambda_kernel`
    along ``axes`` (zero padding). The separable kernel is the product of
    1D exponentials, so the norm is the city-block one: as ``lmbda -> 0`` the
    log-sum-exp tends to the city-block distance ``t(x)``. For any ``lmbda``

        t(x) - lmbda * ln N(x) <= d(x) <= t(x)

    where ``N(x) = sum_k n(t + k) q**k`` (``q = exp(-1/lmbda)``, ``n(k)``
    lattice points at city-block norm ``k``) bounds the other mask voxels'
    share: the nearest voxel contributes ``exp(-t/lmbda)`` and every voxel
    at norm ``t + k`` at most ``q**k`` times that. Since the Euclidean
    distance ``e`` obeys ``e <= t <= sqrt(ndim) e``, LogConv lies within
    ``[e - lmbda ln N, sqrt(ndim) e]``. Voxels with no mask voxel within
    ``ks // 2`` along every axis get ``inf``.

    Parameters
    ----------
    mask : ndarray of bool
    lmbda : float
        Kernel decay; 0.35 in deepflash2.
    ks : int
        Kernel size (odd); 73 in deepflash2.
    axes : sequence of int, optional
        Spatial axes to convolve along (all by default); other axes are a batch.
    dtype : numpy dtype
        Precision of the convolution.

    Examples
    --------
    >>> mask = np.zeros((5, 5), bool)
    >>> mask[2, 2] = True
    >>> logconv_distance(mask)[0].round(6).tolist()    # one voxel: exactly city block
    [4.0, 3.0, 2.0, 3.0, 4.0]
    """
    mask = np.asarray(mask)
    kernel = lambda_kernel(ks, lmbda).astype(dtype)
    axes = range(mask.ndim) if axes is None else axes
    total = mask.astype(dtype)
    for axis in axes:
        total = ndi.convolve1d(total, kernel, axis=axis, mode="constant", cval=0.0)
    with np.errstate(divide="ignore"):
        distance = -lmbda * np.log(total)
    # The mask voxel itself contributes exp(0) = 1 and its neighbours a
    # little more, so the raw value dips below 0 on the mask: a distance
    # cannot, and 0 is the exact value there (+ 0.0 turns -0.0 into 0.0).
    return (np.maximum(distance, 0.0) + 0.0).astype(dtype)


def logconv_instance_distances(
    labels: np.ndarray, lmbda: float = LOGCONV_LAMBDA, ks: int = LOGCONV_KERNEL_SIZE, dtype: type = np.float64
) -> np.ndarray:
    """LogConv distances to the nearest and second-nearest instance, for a batch.

    Parameters
    ----------
    labels : ndarray of int, shape ``(batch, *spatial)``
        One label image per batch entry (2 or 3 spatial dimensions).

    Returns
    -------
    ndarray, shape ``(batch, 2, *spatial)``
        ``d1`` then ``d2``, each computed as :func:`logconv_distance` to the
        instance's voxels; ``inf`` where fewer than two instances are in reach.

    Examples
    --------
    >>> d = logconv_instance_distances(np.array([[[1, 0, 0, 2]]]))
    >>> d.shape
    (1, 2, 1, 4)
    >>> d[0, :, 0].round(6).tolist()
    [[0.0, 1.0, 1.0, 0.0], [3.0, 2.0, 2.0, 3.0]]
    """
    labels = _check_labels(labels, ndims=(3, 4))
    out = np.full((labels.shape[0], 2) + labels.shape[1:], np.inf, dtype=dtype)
    for item, image in enumerate(labels):
        nearest, second = out[item]
        for label in np.unique(image[image != 0]):
            _keep_two_smallest(nearest, second, logconv_distance(image == label, lmbda, ks, dtype=dtype))
    return out


def logconv_weights(
    labels: np.ndarray,
    bws: float = 10.0,
    fds: float = 10.0,
    bwf: float = 10.0,
    fbr: float = 0.1,
    lmbda: float = LOGCONV_LAMBDA,
    ks: int = LOGCONV_KERNEL_SIZE,
) -> np.ndarray:
    """U-Net weights for a batch of label images, with LogConv distances.

    The real-time variant of :func:`unet_weights` (deepflash2's
    ``WeightTransform``): same ridges (full connectivity) and formula, but
    ``d1`` and ``d2`` come from :func:`logconv_instance_distances`, in
    voxels, so ``bws`` and ``fds`` are in voxels. LogConv cannot see past
    ``ks // 2`` voxels, where the weight terms of the default sigmas are
    already small; use :func:`unet_weights` for exact targets.

    Returns
    -------
    ndarray of float32, shape ``labels.shape``

    Examples
    --------
    >>> labels = np.zeros((1, 1, 9), np.uint8)
    >>> labels[0, 0, 0], labels[0, 0, 4] = 1, 2
    >>> w = logconv_weights(labels, bws=2, fds=2)
    >>> float(w[0, 0, 0]), round(float(w[0, 0, 2]), 3)
    (1.0, 1.999)
    """
    _check_weight_parameters(bws, fds, bwf, fbr, 1.0)
    labels = _check_labels(labels, ndims=(3, 4))
    instances = np.stack([_remove_ridges(image, None) for image in labels])
    d1, d2 = np.moveaxis(logconv_instance_distances(instances, lmbda, ks), 1, 0)
    foreground = (instances != 0).astype(np.float64)
    return _weights_formula(foreground, d1, d2, bws, fds, bwf, fbr, np.exp).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _torch_logconv() -> type:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as error:
        raise ImportError("workers.weights.LogConv needs torch: pip install 'blockseg[torch]'") from error

    class LogConv(torch.nn.Module):
        """LogConv distances to the nearest two instances of a batch of label images.

        ``forward(labels)`` takes integer labels of shape ``(batch, *spatial)``
        (2 or 3 spatial dimensions) and returns ``(batch, 2, *spatial)``: the
        LogConv distances ``d1`` and ``d2`` of :func:`logconv_instance_distances`,
        computed with 1D convolutions on the labels' device. ``distance(masks)``
        is :func:`logconv_distance` for a float tensor ``(n, *spatial)``, and
        ``weights(labels, ...)`` is :func:`logconv_weights`.

        Examples
        --------
        >>> import torch
        >>> module = LogConv(dtype=torch.float64)
        >>> module(torch.tensor([[[1, 0, 0, 2]]]))[0, :, 0].round(decimals=6).tolist()
        [[0.0, 1.0, 1.0, 0.0], [3.0, 2.0, 2.0, 3.0]]
        """

        def __init__(self, lmbda: float = LOGCONV_LAMBDA, ks: int = LOGCONV_KERNEL_SIZE, dtype=torch.float32):
            super().__init__()
            self.lmbda = float(lmbda)
            self.ks = int(ks)
            self.dtype = dtype
            kernel = torch.as_tensor(lambda_kernel(ks, lmbda), dtype=dtype)
            self.register_buffer("kernel", kernel.view(1, 1, -1))

        def distance(self, masks: "torch.Tensor") -> "torch.Tensor":
            total = masks.to(self.dtype)
            for axis in range(1, total.dim()):
                total = self._convolve_along(total, axis)
            distance = -self.lmbda * torch.log(total)
            return torch.clamp(distance, min=0.0) + 0.0  # as logconv_distance, no -0.0

        def _convolve_along(self, values: "torch.Tensor", axis: int) -> "torch.Tensor":
            moved = values.movedim(axis, -1)
            rows = moved.reshape(-1, 1, moved.shape[-1])
            # conv1d correlates; the kernel is symmetric, so that is convolution.
            rows = F.conv1d(rows, self.kernel, padding=self.ks // 2)
            return rows.reshape(moved.shape).movedim(-1, axis)

        def forward(self, labels: "torch.Tensor") -> "torch.Tensor":
            if labels.dim() not in (3, 4) or labels.is_floating_point():
                raise ValueError(
                    "labels must be integer (batch, *spatial) with 2 or 3 spatial dims, "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            # Dense ids 1..K (0 stays 0) so the one-hot stack has K channels
            # however large the ids are.
            labels = labels.to(torch.int64)
            ids = torch.unique(torch.cat([labels.new_zeros(1), labels.flatten()]))
            compact = torch.searchsorted(ids, labels.contiguous())
            count = ids.numel() - 1
            batch, spatial = labels.shape[0], labels.shape[1:]
            if count == 0:
                return torch.full((batch, 2, *spatial), float("inf"), dtype=self.dtype, device=labels.device)
            channels = torch.arange(1, count + 1, device=labels.device).view(1, count, *([1] * len(spatial)))
            one_hot = (compact.unsqueeze(1) == channels).flatten(0, 1)
            distances = self.distance(one_hot).view(batch, count, *spatial)
            if count == 1:
                distances = torch.cat([distances, torch.full_like(distances, float("inf"))], dim=1)
            return torch.topk(distances, 2, dim=1, largest=False, sorted=True).values

        def weights(
            self, labels: "torch.Tensor", bws: float = 10.0, fds: float = 10.0, bwf: float = 10.0, fbr: float = 0.1
        ) -> "torch.Tensor":
            _check_weight_parameters(bws, fds, bwf, fbr, 1.0)
            instances = torch.where(self._ridges(labels), torch.zeros_like(labels), labels)
            d1, d2 = self.forward(instances).unbind(1)
            foreground = (instances != 0).to(self.dtype)
            return _weights_formula(foreground, d1, d2, bws, fds, bwf, fbr, torch.exp)

        @staticmethod
        def _ridges(labels: "torch.Tensor") -> "torch.Tensor":
            # Full-connectivity neighbourhood max and (background lifted) min,
            # as ridge_mask; pooling pads with -inf, so edges make no ridge.
            pool = F.max_pool2d if labels.dim() == 3 else F.max_pool3d
            values = labels.to(torch.float64).unsqueeze(1)
            highest = pool(values, 3, stride=1, padding=1)
            lifted = torch.where(values == 0, torch.full_like(values, float("inf")), values)
            lowest = -pool(-lifted, 3, stride=1, padding=1)
            return ((values != 0) & ((highest != values) | (lowest != values))).squeeze(1)

    return LogConv
