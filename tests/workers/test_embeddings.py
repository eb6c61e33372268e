"""workers.embeddings against elf's embedding functions, scikit-learn, hand-computed cases and ground truth."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from helpers import SHARED_DATA
from scipy import ndimage as ndi

from workers import embeddings as emb

elf_embeddings = pytest.importorskip("elf.segmentation.embeddings")


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the label images induce the same partition (a bijection between their labels)."""
    assert a.shape == b.shape
    pairs = np.unique(np.stack([a.ravel().astype(np.int64), b.ravel().astype(np.int64)]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def clustered_embeddings(labels: np.ndarray, dim: int, noise: float, min_distance: float, seed: int) -> np.ndarray:
    """A random centre per label (pairwise at least ``min_distance`` apart) plus Gaussian noise per pixel."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < labels.max() + 1:
        candidate = rng.uniform(-3, 3, size=dim)
        if all(np.linalg.norm(candidate - c) >= min_distance for c in centres):
            centres.append(candidate)
    table = np.array(centres)
    values = np.moveaxis(table[labels], -1, 0)
    return (values + rng.normal(scale=noise, size=values.shape)).astype(np.float32)


def valid_region(offsets, shape) -> np.ndarray:
    """Where ``p + offset`` lies inside ``shape``, per offset (independent of workers.mutex)."""
    grids = np.indices(shape)
    out = []
    for offset in offsets:
        inside = np.ones(shape, bool)
        for axis, o in enumerate(offset):
            inside &= (grids[axis] + o >= 0) & (grids[axis] + o < shape[axis])
        out.append(inside)
    return np.stack(out)


OFFSETS_2D = [[-1, 0], [0, -1], [-3, 0], [0, -3], [-4, 4]]
OFFSETS_3D = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-2, 0, 0], [0, -3, 0], [0, 0, -3]]


# ----------------------------------------------------------------------------
# PCA
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(20, 24), (6, 10, 12)])
def test_embedding_pca_equals_elf_up_to_sign(shape):
    rng = np.random.default_rng(0)
    embeddings = (rng.normal(size=(6,) + shape) * np.arange(1, 7).reshape((6,) + (1,) * len(shape))).astype(np.float32)
    expected = elf_embeddings.embedding_pca(embeddings, n_components=3, as_rgb=False)
    mine = emb.embedding_pca(embeddings, n_components=3)
    assert mine.shape == (3,) + shape and mine.dtype == np.float32
    for component in range(3):
        error = min(np.abs(mine[component] - expected[component]).max(), np.abs(mine[component] + expected[component]).max())
        assert error < 1e-4
    rgb = emb.embedding_pca(embeddings, n_components=3, as_rgb=True)
    flat = rgb.reshape(3, -1)
    assert np.allclose(flat.min(axis=1), 0) and np.allclose(flat.max(axis=1), 1)


def test_fit_embedding_pca_matches_sklearn_and_fixes_the_sign():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    samples = rng.normal(size=(2000, 5)) @ rng.normal(size=(5, 5)) + rng.normal(size=5)
    model = emb.fit_embedding_pca(samples, n_components=3)
    reference = PCA(n_components=3).fit(samples)
    assert np.allclose(model.mean, samples.mean(axis=0))
    for mine, theirs in zip(model.components, reference.components_):
        assert min(np.abs(mine - theirs).max(), np.abs(mine + theirs).max()) < 1e-8
        assert mine[np.argmax(np.abs(mine))] > 0  # the documented sign rule
    projected = (samples - model.mean) @ model.components.T
    assert np.allclose(model.low, np.percentile(projected, 1, axis=0))
    assert np.allclose(model.high, np.percentile(projected, 99, axis=0))
    # another sample of the same data gives the same axes, same signs
    other = emb.fit_embedding_pca(samples[rng.permutation(len(samples))[:1500]], n_components=3)
    assert np.all(np.sum(other.components * model.components, axis=1) > 0.99)


def test_apply_embedding_pca_scales_and_clips():
    model = emb.EmbeddingPca(
        mean=np.array([1.0, 0.0]), components=np.array([[1.0, 0.0], [0.0, 1.0]]), low=np.array([0.0, -1.0]), high=np.array([2.0, 1.0])
    )
    embeddings = np.array([[[1.0, 2.0, 5.0]], [[0.0, 0.5, -3.0]]])
    view = emb.apply_embedding_pca(embeddings, model)
    assert view.dtype == np.float32 and view.shape == (2, 1, 3)
    # component 0: (x - 1 - 0) / 2 -> 0, 0.5, clipped 1; component 1: (y + 1) / 2 -> 0.5, 0.75, clipped 0
    assert np.allclose(view[0, 0], [0.0, 0.5, 1.0]) and np.allclose(view[1, 0], [0.5, 0.75, 0.0])
    # fitted on a sample, applied per block: the blocks' colours are the whole's
    rng = np.random.default_rng(2)
    volume = rng.normal(size=(4, 6, 8, 8)).astype(np.float32)
    fitted = emb.fit_embedding_pca(volume.reshape(4, -1).T[rng.choice(6 * 64, 200)], n_components=3)
    whole = emb.apply_embedding_pca(volume, fitted)
    assert np.array_equal(np.concatenate([emb.apply_embedding_pca(volume[:, :3], fitted), emb.apply_embedding_pca(volume[:, 3:], fitted)], axis=1), whole)


# ----------------------------------------------------------------------------
# micro_sam views
# ----------------------------------------------------------------------------


def test_image_view_crops_padding_before_pca_hand_computed():
    # a tall 4 x 2 image fills the left column of a 2 x 2 grid; the right column is padding
    grid = np.array([[[0.0, 9.0], [1.0, 9.0]]])
    view = emb.image_embedding_view(grid, (4, 2), n_components=1, order=0)
    assert view.tolist() == [[[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]]
    # a square image uses the whole grid
    view = emb.image_embedding_view(np.array([[[0.0, 2.0], [1.0, 2.0]]]), (2, 2), n_components=1, order=0)
    assert np.allclose(view, [[[0.0, 1.0], [0.5, 1.0]]])


def test_stack_view_per_slice_or_joint():
    grids = np.array([[[[0.0, 1.0]], [[0.0, 2.0]]]])  # (E=1, Z=2, 1, 2); the image is 1 x 2 per slice
    per_slice = emb.image_embedding_view(grids, (2, 1, 2), n_components=1, order=0)
    joint = emb.image_embedding_view(grids, (2, 1, 2), n_components=1, order=0, per_slice=False)
    assert per_slice.shape == (1, 2, 1, 2)
    assert per_slice.tolist() == [[[[0.0, 1.0]], [[0.0, 1.0]]]]
    assert np.allclose(joint, [[[[0.0, 0.5]], [[0.0, 1.0]]]])


def test_tiled_view_hand_computed_with_different_cell_sizes():
    # two 2 x 2 tiles side by side, no halo; the left tile's encoder grid is
    # one cell, the right one's 2 x 2: the row is stitched at height 2 (3 cells
    # wide), and 3 cells resized to 4 pixels by nearest neighbour are 0, 1, 1, 2
    left = np.zeros((1, 1, 1))
    right = np.ones((1, 2, 2))
    view = emb.tiled_embedding_view([left, right], (2, 4), (2, 2), (0, 0), n_components=1, order=0)
    assert view.tolist() == [[[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]]]


def _toy_encoder(image: np.ndarray, cell: int, radius: int) -> np.ndarray:
    """A stand-in for an image encoder: local features with a receptive field, one vector per cell, padded square."""
    channels = [image, image**2, np.sin(3 * image), np.cos(5 * image)]
    features = np.stack([ndi.uniform_filter(c, size=2 * radius + 1, mode="constant") for c in channels])
    rows, cols = image.shape[0] // cell, image.shape[1] // cell
    cells = features[:, : rows * cell, : cols * cell].reshape(4, rows, cell, cols, cell).mean(axis=(2, 4))
    side = max(rows, cols)
    grid = np.full((4, side, side), 7.0)  # padding cells, far from any feature value
    grid[:, :rows, :cols] = cells
    return grid


def _tile_grids(image: np.ndarray, tile_shape, halo, cell, radius):
    grids = []
    for i in range(-(-image.shape[0] // tile_shape[0])):
        for j in range(-(-image.shape[1] // tile_shape[1])):
            y0, x0 = max(i * tile_shape[0] - halo[0], 0), max(j * tile_shape[1] - halo[1], 0)
            y1 = min((i + 1) * tile_shape[0] + halo[0], image.shape[0])
            x1 = min((j + 1) * tile_shape[1] + halo[1], image.shape[1])
            grids.append(_toy_encoder(image[y0:y1, x0:x1], cell, radius))
    return grids


def test_tiled_view_with_enough_halo_equals_untiled_view():
    rng = np.random.default_rng(4)
    image = ndi.gaussian_filter(rng.normal(size=(192, 256)), 6) * 5
    cell, radius = 16, 12
    untiled = emb.image_embedding_view(_toy_encoder(image, cell, radius), image.shape)
    tiled = emb.tiled_embedding_view(_tile_grids(image, (128, 128), (32, 32), cell, radius), image.shape, (128, 128), (32, 32))
    assert tiled.shape == untiled.shape == (3, 192, 256)
    assert np.abs(tiled - untiled).max() < 1e-5
    # without halo the tiles' receptive fields are cut at their borders: the views differ
    cut = emb.tiled_embedding_view(_tile_grids(image, (128, 128), (0, 0), cell, radius), image.shape, (128, 128), (0, 0))
    assert np.abs(cut - untiled).max() > 1e-3


# ----------------------------------------------------------------------------
# affinities and edge probabilities
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape, offsets", [((20, 24), OFFSETS_2D + [[2, -2]]), ((6, 10, 12), OFFSETS_3D + [[1, 2, -2]])])
def test_affinities_equal_elf(shape, offsets):
    rng = np.random.default_rng(5)
    # distances around 1: a mix of zero, partial and near-one affinities
    embeddings = (0.3 * rng.normal(size=(5,) + shape)).astype(np.float32)
    for delta in (0.5, 2.0):
        expected = elf_embeddings.embeddings_to_affinities(embeddings, offsets, delta)
        mine = emb.embeddings_to_affinities(embeddings, offsets, delta)
        assert mine.dtype == np.float32 and mine.shape == (len(offsets),) + shape
        inside = valid_region(offsets, shape)
        assert np.abs(mine - expected)[inside].max() < 1e-5
        assert 0.01 < mine[inside].mean() < 0.99  # a non-trivial mix of values
        assert np.all(mine[~inside] == 0)
        inverted = emb.embeddings_to_affinities(embeddings, offsets, delta, invert=True)
        assert np.abs(inverted - (1 - mine)).max() < 1e-6 and np.all(inverted[~inside] == 1)


def test_affinities_hand_computed():
    embeddings = np.array([[[0.0, 1.0, 4.0]], [[0.0, 0.0, 0.0]]])
    # distances 1 and 3 with delta 1: ((2 - 1) / 2) ** 2 = 0.25, and 0 beyond 2 delta
    assert emb.embeddings_to_affinities(embeddings, [[0, 1]], delta=1.0).tolist() == [[[0.25, 0.0, 0.0]]]
    assert emb.embeddings_to_affinities(embeddings, [[0, -1]], delta=1.0).tolist() == [[[0.0, 0.25, 0.0]]]


@pytest.mark.parametrize("shape", [(24, 30), (8, 12, 12)])
def test_edge_probabilities_equal_elf(shape):
    from elf.segmentation.features import compute_rag

    rng = np.random.default_rng(6)
    segmentation = ndi.zoom(rng.integers(1, 40, size=tuple(-(-s // 4) for s in shape)), 4, order=0)[tuple(slice(s) for s in shape)]
    segmentation = segmentation.astype(np.uint32)
    embeddings = rng.normal(size=(4,) + shape).astype(np.float32) + segmentation[None] % 5
    rag = compute_rag(segmentation)
    edges = rag.uv_ids()
    expected = elf_embeddings.edge_probabilities_from_embeddings(embeddings, segmentation, rag, 1.5)
    mine = emb.edge_probabilities_from_embeddings(embeddings, segmentation, edges, 1.5)
    assert np.abs(mine - expected).max() < 1e-5
    assert 0.05 < mine.mean() < 0.95
    assert np.array_equal(emb.segment_adjacency(segmentation), np.unique(np.sort(edges, axis=1), axis=0))


# ----------------------------------------------------------------------------
# clustering
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 20), (5, 10, 10)])
def test_mean_shift_equals_elf(shape):
    rng = np.random.default_rng(7)
    labels = ndi.zoom(rng.integers(0, 6, size=tuple(-(-s // 3) for s in shape)), 3, order=0)[tuple(slice(s) for s in shape)]
    assert labels.shape == shape
    embeddings = clustered_embeddings(labels, 4, 0.2, 3.0, seed=8)
    expected = elf_embeddings.segment_mean_shift(embeddings, bandwidth=1.0)
    mine = emb.segment_mean_shift(embeddings, bandwidth=1.0)
    assert mine.dtype == np.uint64 and mine.min() == 1
    assert same_partition(mine, expected)
    assert same_partition(mine, labels)


def test_mean_shift_with_mask_clusters_only_the_mask():
    from sklearn.cluster import MeanShift

    rng = np.random.default_rng(9)
    labels = rng.integers(0, 4, size=(12, 12))
    embeddings = clustered_embeddings(labels, 3, 0.3, 1.5, seed=10)
    mask = rng.random((12, 12)) > 0.4
    mine = emb.segment_mean_shift(embeddings, 1.0, mask=mask)
    assert np.all(mine[~mask] == 0) and np.all(mine[mask] > 0)
    reference = MeanShift(bandwidth=1.0, bin_seeding=True).fit_predict(embeddings.reshape(3, -1).T[mask.ravel()].astype(np.float64))
    assert same_partition(mine[mask], reference)


def test_hdbscan_finds_separated_clusters_with_mask_and_largest_removed():
    from sklearn.cluster import HDBSCAN

    labels = np.zeros((16, 16), int)
    labels[2:8, 2:8], labels[9:14, 3:7], labels[4:10, 10:15] = 1, 2, 3
    embeddings = clustered_embeddings(labels, 3, 0.05, 2.0, seed=11)
    result = emb.segment_hdbscan(embeddings, min_size=5)
    assert result.dtype == np.uint64 and same_partition(result, labels)
    # the same labels as scikit-learn's estimator, noise (-1) as 0
    reference = HDBSCAN(min_cluster_size=5, copy=True).fit_predict(embeddings.reshape(3, -1).T.astype(np.float64)) + 1
    assert same_partition(result, reference.reshape(16, 16))
    # the background (label 0 of the truth) is the largest cluster
    removed = emb.segment_hdbscan(embeddings, min_size=5, remove_largest=True)
    assert np.all(removed[labels == 0] == 0) and same_partition(removed, labels)
    mask = labels != 2
    masked = emb.segment_hdbscan(embeddings, min_size=5, mask=mask)
    assert np.all(masked[~mask] == 0) and same_partition(masked[mask], labels[mask])


def test_consistency_keeps_what_both_embeddings_agree_on_in_3d():
    labels = np.zeros((4, 10, 10), int)
    labels[:, :, 3:5] = 1
    labels[:, :5, 5:] = 2
    labels[:, 5:, 5:] = 3
    first = clustered_embeddings(labels, 3, 0.05, 3.0, seed=12)
    second = first.copy()
    second[:, labels == 3] = second[:, labels == 2].mean(axis=1, keepdims=True)  # merges objects 2 and 3
    strict = emb.segment_consistency(first, second, bandwidth=1.0, iou_threshold=0.75, n_anchors=5)
    # objects 2 and 3 each cover half of the merged mask (IoU 0.5): removed; 0 and 1 agree
    assert np.all(strict[labels >= 2] == 0)
    assert len(np.unique(strict[labels == 0])) == 1 and len(np.unique(strict[labels == 1])) == 1
    assert strict[labels == 0][0] != strict[labels == 1][0] and strict.max() == 2
    lenient = emb.segment_consistency(first, second, bandwidth=1.0, iou_threshold=0.4, n_anchors=5)
    assert same_partition(lenient, labels)


# ----------------------------------------------------------------------------
# mutex watershed
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape, offsets", [((20, 24), OFFSETS_2D), ((6, 12, 12), OFFSETS_3D)])
@pytest.mark.parametrize("distance_type", ["l2", "cosine"])
def test_mws_equals_elf(shape, offsets, distance_type):
    rng = np.random.default_rng(13)
    for bias in (0.0, 0.4):
        embeddings = rng.normal(size=(4,) + shape).astype(np.float32)
        expected = elf_embeddings.segment_embeddings_mws(embeddings, distance_type, offsets, bias=bias)
        mine = emb.segment_embeddings_mws(embeddings, offsets, distance_type, bias=bias)
        assert mine.dtype == np.uint64 and np.array_equal(np.unique(mine), np.arange(1, mine.max() + 1))
        assert 5 < mine.max() < mine.size / 4  # neither one object nor mostly singletons
        assert same_partition(mine, expected)


@pytest.mark.parametrize("shape, offsets", [((24, 24), OFFSETS_2D), ((6, 12, 12), OFFSETS_3D)])
def test_mws_with_weight_function_strides_and_mask_equals_elf_building_blocks(shape, offsets):
    """elf's embedding MWS is its distance kernel plus its mutex watershed; with
    a weight function, strides and a mask elf's wrapper subsamples edges at
    random and lets masked pixels join objects, so the check composes elf's
    pieces instead: attractive priority max(w) - w, repulsive w + bias."""
    bic = pytest.importorskip("bioimage_cpp")
    elf_mws = pytest.importorskip("elf.segmentation.mutex_watershed").mutex_watershed
    rng = np.random.default_rng(14)
    ndim = len(shape)
    unit = (-np.eye(ndim, dtype=int)).tolist()
    long_range = [o for o in offsets if np.abs(o).sum() > 1]
    # delta large enough that no distance saturates the weight: ties at w = 1
    # would leave the order of equal-priority edges to each implementation
    weight = functools.partial(emb.push_dissimilarity, delta=4.0)
    for strides, use_mask, bias in [([2] * ndim, False, 0.0), (None, True, 0.2), ([1] * (ndim - 1) + [3], True, 0.0)]:
        embeddings = rng.normal(scale=0.6, size=(4,) + shape).astype(np.float32)
        mask = rng.random(shape) > 0.25 if use_mask else None
        distances = bic.affinities.compute_embedding_distances(embeddings, unit + long_range, norm="l2")
        w = weight(distances)
        inside = valid_region(unit + long_range, shape)
        highest = w[:ndim][inside[:ndim]].max()
        # elf's input convention: attractive priority 1 - a, repulsive a
        elf_input = np.concatenate([1 - (highest - w[:ndim]), w[ndim:] + bias]).astype(np.float32)
        expected = elf_mws(elf_input, unit + long_range, strides=strides or [1] * ndim, mask=mask)
        mine = emb.segment_embeddings_mws(embeddings, offsets, "l2", bias=bias, strides=strides, weight_function=weight, mask=mask)
        assert 5 < mine.max() < mine.size / 4
        if mask is None:
            assert same_partition(mine, expected)
        else:
            assert np.all(mine[~mask] == 0)
            assert same_partition(mine[mask], expected[mask])


def _matching_f1(truth: np.ndarray, prediction: np.ndarray) -> float:
    matching = pytest.importorskip("stardist.matching").matching
    return matching(truth, prediction, thresh=0.5).f1


def test_round_trip_isbi_slice_with_membrane_mask():
    path = SHARED_DATA / "isbi2012_train.npz"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    membrane = np.load(path)["membrane"][3, :160, :160]
    truth, count = ndi.label(membrane == 0)
    assert count >= 15
    embeddings = clustered_embeddings(truth, 4, 0.1, 1.5, seed=15)
    offsets = [[-1, 0], [0, -1], [-3, 0], [0, -3], [-9, 0], [0, -9], [-9, -9], [9, -9]]
    foreground = truth > 0
    mws = emb.segment_embeddings_mws(embeddings, offsets, mask=foreground)
    assert _matching_f1(truth, mws) >= 0.9
    cosine = emb.segment_embeddings_mws(embeddings, offsets, "cosine", mask=foreground, strides=[2, 2])
    assert _matching_f1(truth, cosine) >= 0.9
    shifted = emb.segment_mean_shift(embeddings, bandwidth=0.6, mask=foreground)
    assert _matching_f1(truth, shifted) >= 0.9


def test_round_trip_flyem_volume():
    path = SHARED_DATA / "flyem_medulla_250.npz"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    labels = np.load(path)["labels"][100:116, 100:148, 100:148]
    # instances are the connected pieces of each body inside the crop
    truth = np.zeros(labels.shape, np.int64)
    for body in np.unique(labels[labels > 0]):
        pieces, count = ndi.label(labels == body)
        truth[pieces > 0] = pieces[pieces > 0] + truth.max()
    assert truth.max() >= 20
    embeddings = clustered_embeddings(truth, 8, 0.1, 2.5, seed=16)
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3], [0, -9, 0], [0, 0, -9]]
    weight = functools.partial(emb.push_dissimilarity, delta=1.25)
    mws = emb.segment_embeddings_mws(embeddings, offsets, weight_function=weight)
    assert _matching_f1(truth, mws) >= 0.9
    shifted = emb.segment_mean_shift(embeddings, bandwidth=1.0)
    assert _matching_f1(truth, shifted) >= 0.9


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------


def _with_nan() -> np.ndarray:
    values = np.zeros((3, 8, 8), np.float32)
    values[1, 2, 3] = np.nan
    return values


GOOD = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: emb.embeddings_to_affinities(_with_nan(), [[0, 1]], 1.0), "NaN"),
        (lambda: emb.segment_embeddings_mws(_with_nan(), [[0, -3]]), "NaN"),
        (lambda: emb.segment_mean_shift(_with_nan(), 1.0), "NaN"),
        (lambda: emb.embedding_pca(_with_nan()), "NaN"),
        (lambda: emb.fit_embedding_pca(np.full((4, 3), np.nan)), "NaN"),
        (lambda: emb.embeddings_to_affinities(GOOD, [[0, 1, 0]], 1.0), "2-element"),
        (lambda: emb.segment_embeddings_mws(GOOD, [[-1, 0, 0], [0, -3, 0]]), "2-element"),
        (lambda: emb.segment_embeddings_mws(GOOD, [[-1, 0], [0, -1]]), "long-range"),
        (lambda: emb.segment_embeddings_mws(GOOD, [[0, -3]], "manhattan"), "unknown distance_type 'manhattan'; allowed: l2, cosine"),
        (lambda: emb.embedding_distances(GOOD, [[0, -3]], "dot"), "unknown distance_type"),
        (lambda: emb.embeddings_to_affinities(GOOD, [[0, 1]], 0.0), "delta must be a positive"),
        (lambda: emb.embeddings_to_affinities(GOOD, [[0, 1]], -1.0), "delta must be a positive"),
        (lambda: emb.edge_probabilities_from_embeddings(GOOD, np.ones((8, 8), int), np.array([[1, 1]]), 0), "delta"),
        (lambda: emb.edge_probabilities_from_embeddings(GOOD, np.ones((8, 8), int), np.array([[1, 2]]), 1.0), "not in the segmentation"),
        (lambda: emb.edge_probabilities_from_embeddings(GOOD, np.ones((8, 9), int), np.array([[1, 1]]), 1.0), "spatial shape"),
        (lambda: emb.segment_mean_shift(GOOD, 0.0), "bandwidth"),
        (lambda: emb.segment_mean_shift(GOOD, 1.0, mask=np.ones((8, 9), bool)), "mask must have the spatial shape"),
        (lambda: emb.segment_hdbscan(GOOD, 1), "min_size"),
        (lambda: emb.segment_hdbscan(GOOD, 5, eps=-1), "eps"),
        (lambda: emb.segment_consistency(GOOD, GOOD, 1.0, 1.5, 3), r"iou_threshold must lie in \[0, 1\]"),
        (lambda: emb.segment_consistency(GOOD, GOOD, 1.0, -0.1, 3), r"iou_threshold must lie in \[0, 1\]"),
        (lambda: emb.segment_consistency(GOOD, GOOD[:, :4], 1.0, 0.5, 3), "spatial shape"),
        (lambda: emb.segment_consistency(GOOD, GOOD, 1.0, 0.5, 0), "n_anchors"),
        (lambda: emb.embedding_pca(GOOD, n_components=4), "cannot exceed"),
        (lambda: emb.embedding_pca(GOOD[0]), "shaped \\(E, \\*spatial\\)"),
        (lambda: emb.apply_embedding_pca(GOOD[:2], emb.fit_embedding_pca(GOOD.reshape(3, -1).T)), "fitted on 3"),
        (lambda: emb.fit_embedding_pca(GOOD), "shaped \\(N, E\\)"),
        (lambda: emb.image_embedding_view(GOOD, (16, 16, 16)), "one entry per spatial axis"),
        (lambda: emb.tiled_embedding_view([GOOD], (16, 16), (8, 8), (2, 2)), "needs 4 tiles"),
        (lambda: emb.tiled_embedding_view([GOOD] * 4, (16, 16), (8, 8), (-1, 2)), "halo"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
