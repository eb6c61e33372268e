"""The channel sets of the BiaPy channel targets, and the checks of their inputs.

:data:`CHANNEL_SETS` lists the channels of each set in output order;
:func:`channel_names`, :func:`check_labels` and :func:`check_voxel_size`
(with the private checks of thickness and distance clip) validate what
:mod:`workers.channels` and its users are given.

Examples
--------
>>> channel_names("BCDv2")
('B', 'C', 'Dv2')
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


#: The channel sets, each the tuple of its channels in output order.
CHANNEL_SETS: dict[str, tuple[str, ...]] = {
    "BC": ("B", "C"),
    "BP": ("B", "P"),
    "BCM": ("B", "C", "M"),
    "BCD": ("B", "C", "D"),
    "BCDv2": ("B", "C", "Dv2"),
    "Dv2": ("Dv2",),
    "BDv2": ("B", "Dv2"),
}


def channel_names(channel_set: str) -> tuple[str, ...]:
    """Return the channels of ``channel_set`` in output order.

    Raises
    ------
    ValueError
        If ``channel_set`` is not one of :data:`CHANNEL_SETS`.

    Examples
    --------
    >>> channel_names("BCDv2")
    ('B', 'C', 'Dv2')
    """
    if not isinstance(channel_set, str) or channel_set not in CHANNEL_SETS:
        known = ", ".join(CHANNEL_SETS)
        raise ValueError(f"unknown channel set {channel_set!r}; expected one of {known}")
    return CHANNEL_SETS[channel_set]


def check_labels(labels: np.ndarray) -> np.ndarray:
    """Check that ``labels`` are 2D or 3D non-negative integer instance labels.

    Boolean masks count as labels with the single instance 1.

    Returns
    -------
    ndarray
        ``labels`` as an integer array (no copy unless it was boolean).

    Raises
    ------
    ValueError
        For a float (or other non-integer) dtype, negative labels, or an
        array that is not 2D or 3D.

    Examples
    --------
    >>> check_labels(np.array([[0, 1], [2, 2]])).shape
    (2, 2)
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"instance labels must have an integer dtype, got {labels.dtype}; "
            "round or cast float labels explicitly"
        )
    if labels.ndim not in (2, 3):
        raise ValueError(f"instance labels must be 2D or 3D, got {labels.ndim}D of shape {labels.shape}")
    # Unsigned dtypes cannot hold negatives, and min() of a big block is a full pass.
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"instance labels must be >= 0 (0 is background), got minimum {labels.min()}")
    return labels


def _check_thickness(thickness: int) -> int:
    # bool is an int subclass, but True as a thickness is surely a mistake.
    if isinstance(thickness, (bool, np.bool_)) or not isinstance(thickness, (int, np.integer)) or thickness < 1:
        raise ValueError(f"contour_thickness must be an integer >= 1 (voxels), got {thickness!r}")
    return int(thickness)


def check_voxel_size(voxel_size: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """``voxel_size`` as ``ndim`` positive floats (ones when None), or a ValueError."""
    if voxel_size is None:
        return (1.0,) * ndim
    spacing = tuple(float(v) for v in voxel_size)
    if len(spacing) != ndim or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"voxel_size must be {ndim} positive numbers, got {tuple(voxel_size)!r}")
    return spacing


def _check_distance_clip(distance_clip: float | None, needed_by: str | None) -> float | None:
    if distance_clip is None:
        if needed_by is not None:
            raise ValueError(f"{needed_by} needs distance_clip (world units): the distance has no natural bound")
        return None
    clip = float(distance_clip)
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"distance_clip must be a positive number of world units, got {distance_clip!r}")
    return clip
