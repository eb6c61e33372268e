"""Pixel embeddings to colour views, affinities and instances, on one block.

A network trained with a discriminative (push/pull) loss maps every pixel to
a vector so that pixels of one object lie close together and pixels of
different objects at least ``2 * delta`` apart. Embeddings here are arrays
shaped ``(E, *spatial)`` with 2D or 3D spatial axes. This module turns them
into

- colour views: PCA to ``n`` components (:func:`embedding_pca`), a PCA fitted
  on a sample and applied block by block (:func:`fit_embedding_pca`,
  :func:`apply_embedding_pca`), and micro_sam's view of image-encoder grids
  (:func:`image_embedding_view`, :func:`tiled_embedding_view`);
- affinities for a list of offsets (:func:`embeddings_to_affinities`) and
  boundary probabilities of RAG edges from segment means
  (:func:`edge_probabilities_from_embeddings`);
- instances: mean shift, HDBSCAN and consistency clustering (scikit-learn's
  estimators), and the mutex watershed on embedding distances
  (:func:`segment_embeddings_mws`, over :func:`workers.mutex.mutex_watershed`).

Every function checks its input (NaN, shapes, parameter ranges) and raises
``ValueError`` saying what is wrong. Instance labels are uint64, ``1..n``
numbered by first pixel in C order, 0 for background.

The functions live in four modules, all importable from here:
:mod:`workers.embedding_views` (PCA, grid views),
:mod:`workers.embedding_distances` (distances, affinities, edge
probabilities), :mod:`workers.embedding_clustering` (instances) and
:mod:`workers.embedding_checks` (the input checks).

Examples
--------
>>> import numpy as np
>>> embeddings = np.zeros((2, 1, 4), np.float32)
>>> embeddings[0, 0, 2:] = 5.0          # two objects: x < 2 and x >= 2
>>> embeddings_to_affinities(embeddings, [[0, 1]], delta=1.0).round(3).tolist()
[[[1.0, 0.0, 1.0, 0.0]]]
"""

from workers.embedding_clustering import (
    segment_consistency, segment_embeddings_mws, segment_hdbscan, segment_mean_shift,
)
from workers.embedding_distances import (
    DISTANCE_TYPES, edge_probabilities_from_embeddings, embedding_distances, embeddings_to_affinities,
    push_dissimilarity, segment_adjacency, segment_mean_embeddings,
)
from workers.embedding_views import (
    EmbeddingPca, apply_embedding_pca, embedding_pca, fit_embedding_pca, image_embedding_view, tiled_embedding_view,
)

__all__ = [
    "DISTANCE_TYPES",
    "EmbeddingPca",
    "fit_embedding_pca",
    "apply_embedding_pca",
    "embedding_pca",
    "image_embedding_view",
    "tiled_embedding_view",
    "embedding_distances",
    "push_dissimilarity",
    "embeddings_to_affinities",
    "segment_adjacency",
    "segment_mean_embeddings",
    "edge_probabilities_from_embeddings",
    "segment_mean_shift",
    "segment_hdbscan",
    "segment_consistency",
    "segment_embeddings_mws",
]

