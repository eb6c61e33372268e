"""The argument checks of the local shape descriptors, and their channel count.

:func:`num_channels` says how many LSD channels labels of a dimension get;
the private checks validate the labels, sigmas, voxel sizes, downsampling and
channel selection given to :func:`workers.lsds.local_shape_descriptors`.

Examples
--------
>>> num_channels(3), num_channels(2)
(10, 6)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Union

import numpy as np


SigmaLike = Union[float, Sequence[float]]
ComponentsLike = Union[str, Sequence[int], None]


def num_channels(ndim: int) -> int:
    """Number of LSD channels for ``ndim``-dimensional labels (2D: 6, 3D: 10).

    Examples
    --------
    >>> num_channels(3), num_channels(2)
    (10, 6)
    """
    _check_ndim(ndim)
    # offsets (n) + variances (n) + pearsons (n choose 2) + size (1)
    return 2 * ndim + ndim * (ndim - 1) // 2 + 1


def _check_ndim(ndim: int) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got {ndim}D")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    _check_ndim(labels.ndim)
    if labels.dtype == np.bool_:
        return labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative, got minimum {labels.min()}")
    return labels


def _is_sequence(value: object) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str)


def _per_axis(value: SigmaLike, ndim: int, name: str) -> tuple[float, ...]:
    """``value`` as one positive finite float per axis."""
    if _is_sequence(value):
        values = tuple(np.asarray(value, dtype=object).ravel())
        if len(values) != ndim:
            raise ValueError(f"{name} must have {ndim} values (one per axis), got {len(values)}")
    else:
        values = (value,) * ndim
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name} must be a number or one number per axis, got {value!r}")
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return tuple(float(v) for v in values)


def _check_downsample(downsample: int, shape: tuple[int, ...]) -> int:
    if isinstance(downsample, (bool, np.bool_)) or not isinstance(downsample, numbers.Integral) or downsample < 1:
        raise ValueError(f"downsample must be a positive integer, got {downsample!r}")
    if any(s % downsample for s in shape):
        raise ValueError(f"labels shape {tuple(shape)} must be divisible by downsample {downsample} on every axis")
    return int(downsample)


def _parse_components(components: ComponentsLike, ndim: int) -> list[int]:
    """Channel indices from ``"0129"`` or ``[0, 1, 2, 9]``; all when None."""
    count = num_channels(ndim)
    if components is None:
        return list(range(count))
    if isinstance(components, str):
        if not components or not components.isdigit():
            raise ValueError(f"components must be a string of channel digits such as '012', got {components!r}")
        indices = [int(c) for c in components]
    else:
        items = list(components) if _is_sequence(components) else []
        if not items or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in items):
            raise ValueError(f"components must be channel indices such as [0, 1, 2], got {components!r}")
        indices = [int(c) for c in items]
    unknown = [c for c in indices if not 0 <= c < count]
    if unknown:
        raise ValueError(f"unknown component {unknown[0]}: {ndim}D labels have channels 0..{count - 1}")
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise ValueError(f"components must be in ascending order without repeats, got {components!r}")
    return indices
