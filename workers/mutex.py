"""Mutex watershed on an affinity graph with long-range offsets, on one block.

The mutex watershed (Wolf et al., "The Mutex Watershed and its Objective",
arXiv:1904.12654) sorts every edge of a pixel grid by priority and walks them
once, highest first: an *attractive* edge merges its two clusters unless a
mutex (a "must not merge" constraint) already separates them, a *repulsive*
edge records such a mutex unless the two pixels are already in one cluster.
It needs no seeds and no threshold; long-range repulsive edges are what keep
neighbouring objects apart.

The graph work is done by the maintained ``mwatershed`` package (a compiled
wheel); this module fixes the affinity convention, validates input, applies
mask, bias and strides, and numbers the result deterministically.

Examples
--------
>>> import numpy as np
>>> # one row of 6 pixels; channel 0 links x and x + 1, channel 1 links x and x + 3
>>> affinities = np.zeros((2, 1, 6))
>>> affinities[0] = [0.9, 0.9, 0.2, 0.9, 0.9, 0.0]  # weak link between pixels 2 and 3
>>> affinities[1] = 0.0                              # "pixels 3 apart differ"
>>> mutex_watershed(affinities, [[0, 1], [0, 3]], attractive=1).tolist()
[[1, 1, 1, 2, 2, 2]]
"""

from __future__ import annotations

from typing import Sequence

import fastremap
import mwatershed
import numpy as np

__all__ = ["mutex_watershed", "check_offsets"]

# Any positive constant keeps the priority order when classic priorities are
# shifted to be positive for mwatershed (see _classic_to_signed); 1 keeps the
# smallest one far from 0, which mwatershed would treat as "no edge".
_SHIFT_MARGIN = 1.0


def check_offsets(offsets: Sequence[Sequence[int]], ndim: int) -> np.ndarray:
    """Validate pixel offsets and return them as an ``(n, ndim)`` int64 array.

    Parameters
    ----------
    offsets : sequence of sequence of int
        One offset per channel; each must have ``ndim`` integer entries and
        not be all zero.
    ndim : int
        Number of spatial dimensions of the data.

    Raises
    ------
    ValueError
        If there are no offsets, one has the wrong length, is not integral,
        or is all zero.

    Examples
    --------
    >>> check_offsets([[0, -1], [-3, 0]], 2).tolist()
    [[0, -1], [-3, 0]]
    """
    try:
        array = np.asarray(offsets, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"offsets must be a list of {ndim}-element integer lists, one per channel; got {offsets!r}"
        ) from error
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != ndim:
        raise ValueError(
            f"offsets must be a non-empty list of {ndim}-element integer lists (one entry per spatial "
            f"axis of the {ndim}D data); got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise ValueError(f"offsets must be integers; got {offsets!r}")
    integral = array.astype(np.int64)
    if np.any(np.all(integral == 0, axis=1)):
        raise ValueError(f"an offset of all zeros links a pixel to itself; got {integral.tolist()}")
    return integral


def neighbour_slices(offset: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the pixels ``p`` whose neighbour ``p + offset`` lies inside ``shape``, and of those neighbours."""
    source, target = [], []
    for o, n in zip(offset, shape):
        o = int(o)
        if o >= 0:
            source.append(slice(0, max(n - o, 0)))
            target.append(slice(min(o, n), n))
        else:
            source.append(slice(min(-o, n), n))
            target.append(slice(0, max(n + o, 0)))
    return tuple(source), tuple(target)


def _stride_keep(
    shape: Sequence[int], strides: Sequence[int], randomize: bool, rng: np.random.Generator
) -> np.ndarray:
    """Which pixels keep their repulsive edges: a regular lattice, or a random subset of the same density."""
    if randomize:
        return rng.random(tuple(shape)) < 1.0 / float(np.prod(strides))
    keep = np.zeros(tuple(shape), dtype=bool)
    keep[tuple(slice(None, None, int(s)) for s in strides)] = True
    return keep


def _native_strides(offsets: np.ndarray, stride_channels: np.ndarray, strides: list[int]) -> list[list[int]] | None:
    """mwatershed's per-offset ``strides`` when its lattice equals ours, else None.

    mwatershed keeps the entries ``max(0, -o) + k * s`` along each axis
    (counted from the first entry whose neighbour is inside); ours keeps the
    multiples of ``s``. The two agree when every negative offset entry of a
    strided channel is a multiple of the stride on its axis.

    Examples
    --------
    >>> _native_strides(np.array([[0, -1], [0, -4]]), np.array([False, True]), [1, 2])
    [[1, 1], [1, 2]]
    >>> _native_strides(np.array([[0, -1], [0, -3]]), np.array([False, True]), [1, 2]) is None
    True
    """
    ndim = offsets.shape[1]
    per_channel = []
    for offset, strided in zip(offsets, stride_channels):
        if not strided:
            per_channel.append([1] * ndim)
            continue
        if any(o < 0 and (-int(o)) % s for o, s in zip(offset, strides)):
            return None
        per_channel.append(list(strides))
    return per_channel


def _classic_to_signed(weights: np.ndarray, attractive: int, present: np.ndarray) -> None:
    """Turn classic priorities (higher = earlier; the channel decides the kind) into mwatershed weights, in place.

    mwatershed walks edges by decreasing ``|weight|`` and takes the sign as the
    kind. Shifting every present priority by the same amount so the smallest
    becomes ``_SHIFT_MARGIN`` keeps the order and makes all magnitudes
    positive; absent edges become exactly 0, which mwatershed ignores.
    """
    if not present.any():
        weights[:] = 0.0
        return
    lowest = min(float(channel[keep].min()) for channel, keep in zip(weights, present) if keep.any())
    weights -= lowest - _SHIFT_MARGIN
    weights[attractive:] *= -1.0
    weights[~present] = 0.0


def mutex_watershed(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    *,
    bias: float | Sequence[float] = 0.0,
    attractive: int | None = None,
    strides: Sequence[int] | None = None,
    randomize_strides: bool = False,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Segment an affinity map with the mutex watershed.

    Convention: in every channel, an affinity of 1 means "the two pixels are
    the same object" and 0 means "different objects". Channel ``c`` at pixel
    ``p`` is the edge between ``p`` and ``p + offsets[c]``; entries whose
    neighbour falls outside the array are ignored. How a channel's values
    become edges depends on ``attractive``:

    ``attractive=None`` (signed, as volara and ``mwatershed`` use it)
        Every edge gets the weight ``w = affinity + bias[c]``. ``w > 0`` is
        attractive with priority ``w``; ``w < 0`` is repulsive with priority
        ``-w``; ``w == 0`` is no edge. With affinities in [0, 1] a negative
        bias (e.g. -0.5) is what makes repulsion possible at all; a bias of 0
        merges every connected pixel.
    ``attractive=k`` (classic, as in the paper and elf)
        Channels ``0..k-1`` are attractive with priority ``affinity + bias[c]``;
        channels ``k..`` are repulsive with priority ``1 - affinity + bias[c]``.
        Priorities of both kinds are compared directly, so a positive bias on
        a channel makes its edges act earlier.

    Edges are processed by decreasing priority (ties in mwatershed's order).
    Values need not lie in [0, 1]; only their order matters.

    Parameters
    ----------
    affinities : ndarray, shape (C, *spatial)
        Affinities, float; 2D or 3D spatial; must be finite.
    offsets : sequence of C sequences of int
        The offset of each channel, one entry per spatial axis.
    bias : float or sequence of C floats
        Added to each channel's affinities (signed) or priorities (classic).
    attractive : int or None
        Number of leading attractive channels (classic), or None (signed).
    strides : sequence of int, optional
        Keep the long-range edges only at pixels ``p`` (the pixel that holds
        the edge, not its neighbour ``p + offset``) whose coordinates are
        multiples of ``strides`` (one per spatial axis), to curb
        over-segmentation from dense repulsion. This is elf's lattice; for
        offsets with negative entries mwatershed's own ``strides`` anchors
        the lattice at the other end of the edge instead. In classic mode this applies
        to channels ``k..``; in signed mode to channels whose offset is not a
        unit step (L1 norm > 1), whatever the sign of their weights.
    randomize_strides : bool
        Instead of the regular lattice keep each long-range edge with
        probability ``1 / prod(strides)``, drawn from ``seed``.
    mask : ndarray of bool, shape spatial, optional
        Pixels to segment. Edges touching a pixel outside the mask are
        dropped, and those pixels are labelled 0.
    seed : int
        Seed of the random stride selection (the result is deterministic).

    Returns
    -------
    ndarray of uint64, shape spatial
        Labels ``1..n`` numbered in the order of each object's first pixel in
        C order; 0 outside ``mask``. A pixel that no attractive edge joins to
        another is its own object.

    Raises
    ------
    ValueError
        For non-finite affinities, offsets or bias of the wrong length or
        dimensionality, ``attractive`` outside ``[0, C]``, non-positive
        strides, or a mask of another shape.

    Examples
    --------
    Signed mode: a bias of -0.5 makes low affinities repulsive.

    >>> import numpy as np
    >>> affinities = np.array([[[0.9, 0.1, 0.9, 0.0]]])
    >>> mutex_watershed(affinities, [[0, 1]], bias=-0.5).tolist()
    [[1, 1, 2, 2]]
    """
    affinities = np.asarray(affinities)
    if affinities.ndim not in (3, 4):
        raise ValueError(
            f"affinities must have shape (channels, *spatial) with 2D or 3D spatial axes; got shape {affinities.shape}"
        )
    if not np.issubdtype(affinities.dtype, np.number) or np.issubdtype(affinities.dtype, np.complexfloating):
        raise ValueError(f"affinities must be real numbers; got dtype {affinities.dtype}")
    spatial = affinities.shape[1:]
    ndim = len(spatial)
    n_channels = affinities.shape[0]
    offsets_array = check_offsets(offsets, ndim)
    if len(offsets_array) != n_channels:
        raise ValueError(f"need one offset per affinity channel: {n_channels} channels, {len(offsets_array)} offsets")
    if not np.all(np.isfinite(affinities)):
        raise ValueError("affinities contain NaN or infinite values; only finite values are allowed")

    bias_array = np.asarray(bias, dtype=np.float64)
    if bias_array.ndim == 0:
        bias_array = np.full(n_channels, float(bias_array))
    if bias_array.shape != (n_channels,):
        raise ValueError(f"bias must be a number or one number per channel ({n_channels}); got {bias!r}")
    if not np.all(np.isfinite(bias_array)):
        raise ValueError(f"bias must be finite; got {bias!r}")

    if attractive is not None:
        if isinstance(attractive, bool) or not isinstance(attractive, (int, np.integer)):
            raise ValueError(f"attractive must be an integer number of leading channels or None; got {attractive!r}")
        if not 0 <= attractive <= n_channels:
            raise ValueError(f"attractive must lie in [0, {n_channels}] (the channel count); got {attractive}")

    stride_channels = np.zeros(n_channels, dtype=bool)
    if strides is not None:
        strides_array = np.asarray(strides)
        if strides_array.shape != (ndim,) or not np.issubdtype(strides_array.dtype, np.integer) or np.any(strides_array < 1):
            raise ValueError(f"strides must be {ndim} positive integers, one per spatial axis; got {strides!r}")
        if attractive is None:
            stride_channels = np.abs(offsets_array).sum(axis=1) > 1
        else:
            stride_channels[attractive:] = True

    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != spatial:
            raise ValueError(f"mask must have the spatial shape {spatial}; got {mask.shape}")
        mask = mask.astype(bool, copy=False)

    # Strides: when mwatershed's own lattice is ours (see _native_strides), it
    # never builds the dropped edges, which saves their sort and bookkeeping;
    # otherwise they are zeroed below (a zero weight is an edge mwatershed
    # takes last, when it can no longer change a cluster).
    native = None
    if strides is not None and stride_channels.any() and not randomize_strides:
        native = _native_strides(offsets_array, stride_channels, [int(s) for s in strides])

    # Which entries must be zeroed. mwatershed itself skips entries whose
    # neighbour lies outside the array, so signed mode with neither a mask nor
    # strides it cannot do needs no such array (it is a bool per weight).
    # Classic mode needs it to find the lowest priority of the real edges.
    zeroed_strides = strides is not None and stride_channels.any() and native is None
    need_present = mask is not None or attractive is not None or zeroed_strides
    present = None
    if need_present:
        # present[c, p]: channel c has a real edge at p (neighbour inside, both
        # ends in the mask, not dropped by the strides).
        present = np.zeros(affinities.shape, dtype=bool)
        for c, offset in enumerate(offsets_array):
            source, target = neighbour_slices(offset, spatial)
            if mask is None:
                present[(c,) + source] = True
            else:
                present[(c,) + source] = mask[source] & mask[target]
        if strides is not None and stride_channels.any() and (native is None or attractive is not None):
            keep = _stride_keep(spatial, strides, randomize_strides, np.random.default_rng(seed))
            present[stride_channels] &= keep

    # One float64 array (mwatershed's only input type), made by the first
    # operation itself rather than by a copy: a 64 x 256 x 256 block with 9
    # channels is 300 MB per copy. Adding in float64 gives the same bits as
    # converting first and adding after.
    shaped_bias = bias_array.reshape((n_channels,) + (1,) * ndim)
    if attractive is None:
        weights = np.add(affinities, shaped_bias, dtype=np.float64)
        if present is not None:
            np.putmask(weights, ~present, 0.0)
    else:
        weights = np.array(affinities, dtype=np.float64, order="C")
        # repulsive priority 1 - affinity, then each channel's bias
        weights[attractive:] *= -1.0
        weights[attractive:] += 1.0
        weights += shaped_bias
        _classic_to_signed(weights, attractive, present)

    raw = mwatershed.agglom(weights, [list(map(int, o)) for o in offsets_array], strides=native)
    return _number_objects(np.asarray(raw), mask)


def _number_objects(raw: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Labels 1..n by first pixel in C order; mwatershed's 0 (a pixel merged with nothing) becomes its own object."""
    raw = np.ascontiguousarray(raw, dtype=np.uint64)
    alone = raw == 0
    if alone.any():
        # mwatershed labels a cluster by one of its pixels' flat index + 1, so
        # ids above the pixel count are free for the singletons.
        raw[alone] = np.uint64(raw.size + 1) + np.flatnonzero(alone).astype(np.uint64)
    if mask is not None:
        raw[~mask] = 0
    labels, _ = fastremap.renumber(raw, start=1, preserve_zero=True, in_place=True)
    return labels.astype(np.uint64, copy=False)
