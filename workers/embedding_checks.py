"""Input checks shared by the embedding functions: each raises ValueError saying what is wrong."""

from __future__ import annotations

from typing import Sequence

import fastremap
import numpy as np


def _check_embeddings(embeddings: np.ndarray, name: str = "embeddings", spatial_dims: Sequence[int] = (2, 3)) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if not np.issubdtype(embeddings.dtype, np.number) or np.issubdtype(embeddings.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers; got dtype {embeddings.dtype}")
    if embeddings.ndim - 1 not in spatial_dims:
        allowed = " or ".join(f"{d}D" for d in spatial_dims)
        raise ValueError(
            f"{name} must be shaped (E, *spatial) with {allowed} spatial axes; got shape {embeddings.shape}"
        )
    if embeddings.shape[0] < 1 or embeddings.size == 0:
        raise ValueError(f"{name} must have at least one channel and one pixel; got shape {embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError(f"{name} contain NaN or infinite values; only finite values are allowed")
    return embeddings


def _check_positive(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a positive number; got {value!r}") from error
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return number


def _check_probability(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}") from error
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {value!r}")
    return number


def _check_mask(mask: np.ndarray | None, spatial: tuple[int, ...], name: str = "mask") -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != spatial:
        raise ValueError(f"{name} must have the spatial shape {spatial}; got {mask.shape}")
    return mask.astype(bool, copy=False)


def _check_n_components(n_components: int, n_features: int) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer; got {n_components!r}")
    if n_components > n_features:
        raise ValueError(f"n_components ({n_components}) cannot exceed the embedding dimension ({n_features})")
    return int(n_components)


def _number_by_first_pixel(labels: np.ndarray) -> np.ndarray:
    """Renumber to ``1..n`` in order of first pixel (C order), keeping 0."""
    labels = np.ascontiguousarray(labels, dtype=np.uint64)
    renumbered, _ = fastremap.renumber(labels, start=1, preserve_zero=True, in_place=False)
    return renumbered.astype(np.uint64, copy=False)
