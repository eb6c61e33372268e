"""Colour views of pixel embeddings: PCA (whole, or fitted on a sample and applied per block) and micro_sam's image-encoder grid views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from skimage.transform import resize

from workers.embedding_checks import _check_embeddings, _check_n_components

# Percentiles of the sample projections that map to 0 and 1 in
# fit_embedding_pca: a few outlier pixels must not wash out the colours of a
# whole volume, which plain min/max would let them do.
_PREVIEW_PERCENTILES = (1.0, 99.0)

# Rows per chunk when accumulating the covariance, so a block of millions of
# pixels never needs a centred float64 copy of itself.
_COVARIANCE_CHUNK = 1 << 20

# ----------------------------------------------------------------------------
# PCA views
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingPca:
    """A PCA of embedding vectors plus the range that maps each component to [0, 1].

    Attributes
    ----------
    mean : ndarray, shape (E,)
        Mean of the fitted samples.
    components : ndarray, shape (n, E)
        Unit principal axes, strongest first, each signed so that its
        largest-magnitude loading is positive (two fits of the same data
        agree, whatever the solver's sign).
    low, high : ndarray, shape (n,)
        Projections at or below ``low`` map to 0, at or above ``high`` to 1.
    """

    mean: np.ndarray
    components: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _principal_axes(samples: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sign-fixed principal axes of ``samples`` (N, E), in float64."""
    n_samples, n_features = samples.shape
    mean = np.zeros(n_features, dtype=np.float64)
    for start in range(0, n_samples, _COVARIANCE_CHUNK):
        mean += samples[start : start + _COVARIANCE_CHUNK].sum(axis=0, dtype=np.float64)
    mean /= n_samples
    scatter = np.zeros((n_features, n_features), dtype=np.float64)
    for start in range(0, n_samples, _COVARIANCE_CHUNK):
        centred = samples[start : start + _COVARIANCE_CHUNK].astype(np.float64) - mean
        scatter += centred.T @ centred
    # E is small (tens of channels), so an eigendecomposition of the E x E
    # scatter matrix is exact and cheaper than an SVD of the N x E data.
    eigenvalues, eigenvectors = np.linalg.eigh(scatter)
    order = np.argsort(eigenvalues)[::-1][:n_components]
    components = eigenvectors[:, order].T
    strongest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), strongest])
    signs[signs == 0] = 1.0
    return mean, components * signs[:, None]


def _project(embeddings: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """(n, *spatial) projections of (E, *spatial) embeddings onto ``components``."""
    n_features = embeddings.shape[0]
    flat = embeddings.reshape(n_features, -1)
    # float32 embeddings are projected in float32: a preview block of 4
    # Mvoxel x 16 channels would otherwise need a 0.5 GB float64 copy, for
    # colours that end up as 8-bit values.
    dtype = np.float32 if flat.dtype == np.float32 else np.float64
    projected = components.astype(dtype) @ flat.astype(dtype, copy=False)
    projected -= (components @ mean).astype(dtype)[:, None]
    return projected.reshape((len(components),) + embeddings.shape[1:])


def _scale(projected: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map each component from [low, high] to [0, 1], clipped; a constant component maps to 0."""
    shape = (-1,) + (1,) * (projected.ndim - 1)
    span = (high - low).reshape(shape)
    safe = np.where(span > 0, span, 1.0)
    scaled = np.where(span > 0, (projected - low.reshape(shape)) / safe, 0.0)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def fit_embedding_pca(samples: np.ndarray, n_components: int = 3) -> EmbeddingPca:
    """Fit a PCA on sampled embedding vectors, for views that agree across blocks.

    ``low`` and ``high`` are the 1st and 99th percentiles of the samples'
    projections on each component (robust to a few outlier pixels).

    Parameters
    ----------
    samples : ndarray, shape (N, E)
        Embedding vectors, e.g. pixels drawn at random from a whole volume.
        At least 2, all finite.
    n_components : int
        Number of components to keep (at most E).

    Returns
    -------
    EmbeddingPca

    Examples
    --------
    >>> import numpy as np
    >>> samples = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    >>> model = fit_embedding_pca(samples, n_components=1)
    >>> model.components.tolist(), model.mean.tolist()
    ([[1.0, 0.0]], [1.5, 0.0])
    """
    samples = np.asarray(samples)
    if samples.ndim != 2:
        raise ValueError(f"samples must be shaped (N, E), one embedding vector per row; got shape {samples.shape}")
    if samples.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to fit a PCA; got {samples.shape[0]}")
    if not np.issubdtype(samples.dtype, np.number) or not np.all(np.isfinite(samples)):
        raise ValueError("samples contain NaN or infinite values (or are not numbers); only finite values are allowed")
    n_components = _check_n_components(n_components, samples.shape[1])
    mean, components = _principal_axes(samples, n_components)
    projected = (samples.astype(np.float64) - mean) @ components.T
    low, high = np.percentile(projected, _PREVIEW_PERCENTILES, axis=0)
    return EmbeddingPca(mean=mean, components=components, low=low, high=high)


def apply_embedding_pca(embeddings: np.ndarray, model: EmbeddingPca) -> np.ndarray:
    """Project embeddings with a fitted PCA and scale each component to [0, 1].

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
        2D or 3D; E must match the model.
    model : EmbeddingPca
        From :func:`fit_embedding_pca`.

    Returns
    -------
    ndarray of float32, shape (n, *spatial)
        ``(projection - low) / (high - low)`` clipped to [0, 1]; 0 for a
        component with ``high == low``.

    Examples
    --------
    >>> import numpy as np
    >>> model = fit_embedding_pca(np.array([[0.0, 0.0], [4.0, 0.0]]), n_components=1)
    >>> apply_embedding_pca(np.array([[[0.0, 2.0, 4.0]], [[0.0, 0.0, 0.0]]]), model).round(3).tolist()
    [[[0.0, 0.5, 1.0]]]
    """
    embeddings = _check_embeddings(embeddings)
    if embeddings.shape[0] != model.mean.shape[0]:
        raise ValueError(
            f"embeddings have {embeddings.shape[0]} channels but the PCA was fitted on {model.mean.shape[0]}"
        )
    projected = _project(embeddings, np.asarray(model.mean), np.asarray(model.components))
    return _scale(projected, np.asarray(model.low, np.float64), np.asarray(model.high, np.float64))


def embedding_pca(embeddings: np.ndarray, n_components: int = 3, as_rgb: bool = False) -> np.ndarray:
    """PCA of the pixel embeddings of one image or volume.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
        2D or 3D.
    n_components : int
        Number of components (at most E).
    as_rgb : bool
        Scale each component by its own min and max to [0, 1] (e.g. three
        components as an RGB image). Otherwise return the raw projections
        (centred; components signed as in :class:`EmbeddingPca`).

    Returns
    -------
    ndarray of float32, shape (n_components, *spatial)

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0]]])
    >>> embedding_pca(embeddings, n_components=1, as_rgb=True).tolist()
    [[[0.0, 0.5, 1.0]]]
    """
    embeddings = _check_embeddings(embeddings)
    n_components = _check_n_components(n_components, embeddings.shape[0])
    if embeddings[0].size < 2:
        raise ValueError("need at least 2 pixels to compute a PCA")
    samples = embeddings.reshape(embeddings.shape[0], -1).T
    mean, components = _principal_axes(samples, n_components)
    projected = _project(embeddings, mean, components)
    if not as_rgb:
        return projected.astype(np.float32)
    flat = projected.reshape(n_components, -1)
    return _scale(projected, flat.min(axis=1), flat.max(axis=1))


def _aspect_crop(grid_shape: Sequence[int], image_shape: Sequence[int]) -> tuple[int, int]:
    """Rows and columns of an encoder grid that cover an image (micro_sam's crop).

    Encoders such as SAM's resize an image so its longer side fills the input
    and pad the shorter side at the end; the grid's leading cells along the
    shorter side, ``floor(aspect * cells)``, hold the image.
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    height, width = int(image_shape[0]), int(image_shape[1])
    if height > width:
        cols = max(1, int(width / height * cols))
    elif width > height:
        rows = max(1, int(height / width * rows))
    return rows, cols


def _resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resize the trailing axes of ``array`` to ``shape`` (skimage, edge mode, no anti-aliasing)."""
    target = tuple(array.shape[: array.ndim - len(shape)]) + tuple(int(s) for s in shape)
    if target == array.shape:
        return array
    return resize(array, target, order=order, mode="edge", anti_aliasing=False, preserve_range=True)


def _check_grid_args(image_shape: Sequence[int], n_components: int, order: int) -> tuple[int, ...]:
    try:
        image_shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError) as error:
        raise ValueError(f"image_shape must be a tuple of positive integers; got {image_shape!r}") from error
    if any(s < 1 for s in image_shape):
        raise ValueError(f"image_shape must be positive; got {image_shape}")
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0 (nearest), 1 (linear) or 3 (cubic); got {order!r}")
    return image_shape


def _grid_view(grid: np.ndarray, image_shape: tuple[int, int], n_components: int, as_rgb: bool, order: int) -> np.ndarray:
    """PCA of an already cropped (E, h, w) grid, resized to the image."""
    vis = embedding_pca(grid, n_components=n_components, as_rgb=as_rgb)
    return _resize(vis, image_shape, order).astype(np.float32)


def image_embedding_view(
    embeddings: np.ndarray,
    image_shape: Sequence[int],
    *,
    n_components: int = 3,
    as_rgb: bool = True,
    per_slice: bool = True,
    order: int = 1,
) -> np.ndarray:
    """micro_sam's PCA view of an image encoder's embedding grid, at image size.

    The grid of an encoder that fits the image's longer side and pads the
    shorter one is cropped to the image's aspect ratio, projected by PCA and
    resized to the image. Unlike micro_sam the crop comes before the PCA, so
    padding cells do not shape the colours (and the view of a tiled embedding
    can equal the untiled one, see :func:`tiled_embedding_view`).

    Parameters
    ----------
    embeddings : ndarray
        ``(E, h, w)`` for one image, or ``(E, Z, h, w)`` for a stack (one
        grid per slice).
    image_shape : tuple of int
        ``(H, W)`` for one image, ``(Z, H, W)`` for a stack.
    n_components : int
        Components of the PCA (3 for an RGB view).
    as_rgb : bool
        Scale each component to [0, 1] by its min and max.
    per_slice : bool
        For a stack: one PCA per slice, as micro_sam does (True), or one PCA
        over all slices so that colours compare between slices (False).
    order : int
        Spline order of the resize: 0 nearest, 1 linear, 3 cubic.

    Returns
    -------
    ndarray of float32
        ``(n_components, H, W)`` or ``(n_components, Z, H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> grid = np.zeros((1, 2, 2))
    >>> grid[0, :, 1] = 1.0   # right column differs; bottom row is padding for a 2:1 image
    >>> image_embedding_view(grid, (2, 4), n_components=1, order=0).tolist()
    [[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]]
    """
    embeddings = _check_embeddings(embeddings, spatial_dims=(2, 3))
    image_shape = _check_grid_args(image_shape, n_components, order)
    if len(image_shape) != embeddings.ndim - 1:
        raise ValueError(
            f"image_shape {image_shape} must have one entry per spatial axis of the embeddings {embeddings.shape[1:]}"
        )
    if embeddings.ndim == 3:
        rows, cols = _aspect_crop(embeddings.shape[1:], image_shape)
        return _grid_view(embeddings[:, :rows, :cols], image_shape, n_components, as_rgb, order)
    if embeddings.shape[1] != image_shape[0]:
        raise ValueError(f"the stack has {image_shape[0]} slices but the embeddings {embeddings.shape[1]}")
    rows, cols = _aspect_crop(embeddings.shape[2:], image_shape[1:])
    cropped = embeddings[:, :, :rows, :cols]
    if per_slice:
        views = [_grid_view(cropped[:, z], image_shape[1:], n_components, as_rgb, order) for z in range(image_shape[0])]
        return np.stack(views, axis=1)
    vis = embedding_pca(cropped, n_components=n_components, as_rgb=as_rgb)
    return _resize(vis, image_shape[1:], order).astype(np.float32)


def _tiles(image_shape: tuple[int, int], tile_shape: tuple[int, int], halo: tuple[int, int]):
    """Inner and outer (halo-grown, clipped) boxes of a C-order tiling, as ((begin, end) per axis) pairs."""
    counts = [-(-n // t) for n, t in zip(image_shape, tile_shape)]
    for index in np.ndindex(*counts):
        inner = [(i * t, min((i + 1) * t, n)) for i, t, n in zip(index, tile_shape, image_shape)]
        outer = [(max(b - h, 0), min(e + h, n)) for (b, e), h, n in zip(inner, halo, image_shape)]
        yield index, inner, outer


def tiled_embedding_view(
    tiles: Sequence[np.ndarray],
    image_shape: Sequence[int],
    tile_shape: Sequence[int],
    halo: Sequence[int],
    *,
    n_components: int = 3,
    as_rgb: bool = True,
    order: int = 1,
) -> np.ndarray:
    """micro_sam's PCA view of an image embedded tile by tile (tiles with halo).

    The image is cut into ``tile_shape`` tiles in C order; tile ``k`` was
    embedded from its tile grown by ``halo`` on every side (clipped to the
    image), as an encoder grid that fits that region's longer side. From
    each grid the cells of the inner tile are kept (after the aspect crop,
    boxes scaled and rounded to cells); the pieces are stitched in grid space
    (pieces of one tile row resized to a common height, rows to a common
    width when their cell sizes differ), and one PCA of the stitched grid,
    resized to the image, gives colours that agree across tiles. With enough
    halo the inner cells are what an untiled encoder would have produced, and
    the view equals :func:`image_embedding_view` of the untiled grid.

    Parameters
    ----------
    tiles : sequence of ndarray, each (E, h, w)
        Encoder grid of each tile, in C order of the tile grid.
    image_shape, tile_shape, halo : (int, int)
        Image size, inner tile size and halo, in pixels.
    n_components, as_rgb, order
        As in :func:`image_embedding_view`.

    Returns
    -------
    ndarray of float32, shape (n_components, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> left, right = np.zeros((1, 1, 1)), np.ones((1, 1, 1))
    >>> tiled_embedding_view([left, right], (2, 4), (2, 2), (0, 0), n_components=1, order=0).tolist()
    [[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]]
    """
    image_shape = _check_grid_args(image_shape, n_components, order)
    if len(image_shape) != 2:
        raise ValueError(f"tiled views are 2D: image_shape must be (H, W); got {image_shape}")
    try:
        tile_shape = tuple(int(t) for t in tile_shape)
        halo = tuple(int(h) for h in halo)
    except (TypeError, ValueError) as error:
        raise ValueError(f"tile_shape and halo must be two integers each; got {tile_shape!r}, {halo!r}") from error
    if len(tile_shape) != 2 or any(t < 1 for t in tile_shape):
        raise ValueError(f"tile_shape must be two positive integers; got {tile_shape}")
    if len(halo) != 2 or any(h < 0 for h in halo):
        raise ValueError(f"halo must be two non-negative integers; got {halo}")
    layout = list(_tiles(image_shape, tile_shape, halo))
    if len(tiles) != len(layout):
        raise ValueError(f"an image of {image_shape} in tiles of {tile_shape} needs {len(layout)} tiles; got {len(tiles)}")

    pieces: dict[tuple[int, ...], np.ndarray] = {}
    n_features = None
    for (index, inner, outer), grid in zip(layout, tiles):
        grid = _check_embeddings(grid, name=f"tile {index}", spatial_dims=(2,))
        if n_features is None:
            n_features = grid.shape[0]
        elif grid.shape[0] != n_features:
            raise ValueError(f"all tiles need the same number of channels; tile {index} has {grid.shape[0]}, not {n_features}")
        outer_shape = [e - b for b, e in outer]
        rows, cols = _aspect_crop(grid.shape[1:], outer_shape)
        cells = (rows, cols)
        box = []
        for (inner_begin, inner_end), (outer_begin, _), count, length in zip(inner, outer, cells, outer_shape):
            scale = count / length
            begin = int(np.round((inner_begin - outer_begin) * scale))
            end = max(int(np.round((inner_end - outer_begin) * scale)), begin + 1)
            box.append(slice(begin, min(end, count)))
        pieces[index] = grid[:, : rows, : cols][(slice(None),) + tuple(box)]

    counts = [-(-n // t) for n, t in zip(image_shape, tile_shape)]
    strips = []
    for i in range(counts[0]):
        row = [pieces[(i, j)] for j in range(counts[1])]
        height = max(p.shape[1] for p in row)
        strips.append(np.concatenate([_resize(p, (height, p.shape[2]), order) for p in row], axis=2))
    width = max(s.shape[2] for s in strips)
    stitched = np.concatenate([_resize(s, (s.shape[1], width), order) for s in strips], axis=1)
    return _grid_view(stitched, image_shape, n_components, as_rgb, order)
