"""Synthetic images of ground-truth labels: affinities and an EM-like raw image.

:func:`affinities_from_labels` computes nearest-neighbour affinities with
noise and blur; :func:`raw_from_labels` draws bright cytoplasm, dark
membranes and texture noise. Both are deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


# --------------------------------------------------------------------------
# affinities
# --------------------------------------------------------------------------


def affinities_from_labels(
    labels: np.ndarray,
    noise: float = 0.1,
    smoothing_sigma: float | tuple[float, ...] = 1.0,
    seed: int = 0,
    membrane_width: int = 0,
) -> np.ndarray:
    """Compute noisy nearest-neighbour affinities from labels.

    Channel ``c`` uses offset ``-e_c`` (``(-1,0,0)``, ``(0,-1,0)``,
    ``(0,0,-1)``): it is 1 where ``labels[p] == labels[p - e_c]`` and
    ``labels[p] != 0``, else 0. The first slice along ``c`` has no
    neighbour; it copies the slice after it so the volume border does not
    look like a boundary.

    Parameters
    ----------
    labels : numpy.ndarray
        3-d integer labels; 0 is background.
    noise : float, optional
        Standard deviation of additive Gaussian noise.
    smoothing_sigma : float or sequence of float, optional
        Gaussian blur in voxels applied per channel after the noise; one per
        axis for anisotropic data (e.g. ``(0.2, 0.8, 0.8)``: sharp across
        sections, as a network predicts serial sections).
    seed : int, optional
        Seed of the noise generator.
    membrane_width : int, optional
        If positive, every channel is 0 on a band this many voxels thick
        around each boundary, as a network trained on EM predicts it (a
        membrane is several voxels thick, and the prediction is low on all of
        it, in every direction). 2 marks the voxels on both sides of a
        boundary; each 2 more grow the band by one voxel on either side.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(3, *labels.shape)`` in ``[0, 1]``.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-d, got {labels.ndim}-d")
    rng = np.random.default_rng(seed)
    band = None
    if membrane_width > 0:
        band = _boundary_mask(labels)
        if membrane_width > 2:
            band = ndimage.binary_dilation(band, iterations=(membrane_width - 2) // 2)
    out = np.empty((3,) + labels.shape, dtype=np.float32)
    for c in range(3):
        out[c] = _clean_affinity(labels, c)
        if band is not None:
            # An edge is low when either of its voxels is membrane. Channel c
            # at p is the edge (p - e_c, p): zero where p or p - e_c is in the
            # band, so the low edges lie symmetrically about the boundary and
            # the lowest one (after the blur) is the edge between the labels.
            out[c][band] = 0.0
            here = [slice(None)] * 3
            before = [slice(None)] * 3
            here[c], before[c] = slice(1, None), slice(None, -1)
            out[c][tuple(here)][band[tuple(before)]] = 0.0
        # Noise is drawn per channel so memory stays at one float32 volume.
        if noise > 0:
            out[c] += noise * rng.standard_normal(labels.shape, dtype=np.float32)
        if np.any(np.asarray(smoothing_sigma) > 0):
            out[c] = ndimage.gaussian_filter(
                out[c], sigma=smoothing_sigma, mode="nearest"
            )
    np.clip(out, 0.0, 1.0, out=out)
    return out


# Serial-section affinities as a network predicts them: sharp across the
# sections (a fifth of a voxel of blur), a little blur in them, noise 0.15.
SECTION_BLUR = (0.2, 0.8, 0.8)
SECTION_NOISE = 0.15


def serial_section_affinities(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Affinities of serial-section EM from labels: label equality with the -z/-y/-x neighbour, sharp across sections.

    :func:`affinities_from_labels` with noise :data:`SECTION_NOISE` and blur
    :data:`SECTION_BLUR` voxels (z, y, x), no membrane band: the low
    affinities sit on the one edge between two labels, as on ssTEM, where the
    blur across 40 nm sections is a fraction of a voxel.
    """
    return affinities_from_labels(labels, noise=SECTION_NOISE, smoothing_sigma=SECTION_BLUR, seed=seed)


def per_section_instances(membrane: np.ndarray) -> np.ndarray:
    """Instances of a membrane stack (ISBI 2012): connected components of ``membrane == 0`` in each section.

    Ids are unique across sections (uint64); membrane voxels are 0.
    """
    labels = np.zeros(membrane.shape, np.uint64)
    next_id = 0
    for z in range(membrane.shape[0]):
        section, count = ndimage.label(membrane[z] == 0)
        labels[z] = np.where(section > 0, section.astype(np.uint64) + np.uint64(next_id), np.uint64(0))
        next_id += count
    return labels


def _clean_affinity(labels: np.ndarray, axis: int) -> np.ndarray:
    """Return the noise-free affinity for offset ``-e_axis`` as a bool array."""
    affinity = np.empty(labels.shape, dtype=bool)
    n = labels.shape[axis]
    here = [slice(None)] * 3
    before = [slice(None)] * 3
    here[axis], before[axis] = slice(1, n), slice(0, n - 1)
    h, b = tuple(here), tuple(before)
    np.equal(labels[h], labels[b], out=affinity[h])
    affinity[h] &= labels[h] != 0
    first = [slice(None)] * 3
    first[axis] = slice(0, 1)
    if n > 1:
        second = list(first)
        second[axis] = slice(1, 2)
        affinity[tuple(first)] = affinity[tuple(second)]
    else:
        # No neighbour anywhere along this axis: objects are connected.
        affinity[tuple(first)] = labels[tuple(first)] != 0
    return affinity


# --------------------------------------------------------------------------
# raw
# --------------------------------------------------------------------------


def raw_from_labels(
    labels: np.ndarray,
    seed: int = 0,
    cytoplasm: float = 150.0,
    membrane: float = 60.0,
) -> np.ndarray:
    """Render an EM-like raw image from labels.

    Parameters
    ----------
    labels : numpy.ndarray
        3-d integer labels; 0 is treated as extracellular space.
    seed : int, optional
        Seed of the texture generator.
    cytoplasm : float, optional
        Mean intensity inside objects.
    membrane : float, optional
        Mean intensity on object boundaries.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of ``labels.shape``.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-d, got {labels.ndim}-d")
    rng = np.random.default_rng(seed)
    # Soft membrane profile: a blurred boundary mask, rescaled so boundary
    # voxels stay close to the membrane intensity.
    boundary = ndimage.gaussian_filter(
        _boundary_mask(labels).astype(np.float32), sigma=0.7, mode="nearest"
    )
    np.clip(boundary * 1.6, 0.0, 1.0, out=boundary)
    raw = cytoplasm + (membrane - cytoplasm) * boundary
    del boundary
    raw += _object_offsets(labels, seed, amplitude=12.0)
    raw += _texture(labels.shape, rng, sigma=2.0, amplitude=8.0)
    raw += 6.0 * rng.standard_normal(labels.shape, dtype=np.float32)
    raw = ndimage.gaussian_filter(raw, sigma=0.5, mode="nearest")
    np.clip(np.rint(raw, out=raw), 0, 255, out=raw)
    return raw.astype(np.uint8)


def _boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Mark voxels whose 6-neighbour has a different label (both sides)."""
    mask = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        n = labels.shape[axis]
        if n < 2:
            continue
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        differ = labels[tuple(lo)] != labels[tuple(hi)]
        mask[tuple(lo)] |= differ
        mask[tuple(hi)] |= differ
    return mask


def _object_offsets(labels: np.ndarray, seed: int, amplitude: float) -> np.ndarray:
    """Per-object intensity offset in ``[-amplitude, amplitude]``.

    Ids are hashed instead of looked up in a table so arbitrary (large,
    sparse) ids from real data cost no ``np.unique`` over the volume.
    """
    mixed = labels.astype(np.uint64) + np.uint64(seed % (1 << 32) + 1)
    with np.errstate(over="ignore"):
        mixed *= np.uint64(0x9E3779B97F4A7C15)
        mixed ^= mixed >> np.uint64(29)
        mixed *= np.uint64(0xBF58476D1CE4E5B9)
        mixed >>= np.uint64(40)
    unit = mixed.astype(np.float32) / np.float32(1 << 24)
    return (2.0 * unit - 1.0) * np.float32(amplitude)


def _texture(
    shape: tuple[int, ...], rng: np.random.Generator, sigma: float, amplitude: float
) -> np.ndarray:
    """Smooth cytoplasm texture with standard deviation ``amplitude``."""
    texture = ndimage.gaussian_filter(
        rng.standard_normal(shape, dtype=np.float32), sigma=sigma, mode="nearest"
    )
    texture *= amplitude / max(float(texture.std()), 1e-6)
    return texture
