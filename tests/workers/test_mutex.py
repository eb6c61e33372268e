"""workers.mutex: hand-computed cases, and the same partition as mwatershed and elf's mutex watershed."""

from __future__ import annotations

import numpy as np
import pytest

from workers.mutex import check_offsets, mutex_watershed

mwatershed = pytest.importorskip("mwatershed")


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the label images induce the same partition (a bijection between their labels)."""
    assert a.shape == b.shape
    pairs = np.unique(np.stack([a.ravel().astype(np.int64), b.ravel().astype(np.int64)]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def singletons_apart(labels: np.ndarray) -> np.ndarray:
    """mwatershed labels a pixel that joined nothing 0: give each such pixel its own label."""
    out = labels.astype(np.int64)
    alone = out == 0
    out[alone] = -1 - np.flatnonzero(alone)
    return out


def test_same_partition_helper_detects_a_merge():
    assert same_partition(np.array([1, 1, 2]), np.array([7, 7, 3]))
    assert not same_partition(np.array([1, 1, 2]), np.array([7, 7, 7]))
    assert not same_partition(np.array([1, 1, 1]), np.array([7, 7, 3]))


def test_hand_computed_classic_row():
    # Pixels 0..5 in a row; neighbours attract with 0.9 except 2-3 (0.2);
    # every pair 3 apart is repulsive with priority 1 - 0 = 1, which beats
    # all attractive priorities, so 0|3, 1|4, 2|5 are mutex before merging.
    affinities = np.zeros((2, 1, 6))
    affinities[0] = [0.9, 0.9, 0.2, 0.9, 0.9, 0.0]
    labels = mutex_watershed(affinities, [[0, 1], [0, 3]], attractive=1)
    assert labels.dtype == np.uint64
    assert labels.tolist() == [[1, 1, 1, 2, 2, 2]]
    # Repulsion weaker than every attraction: everything merges first.
    affinities[1] = 0.95
    assert mutex_watershed(affinities, [[0, 1], [0, 3]], attractive=1).tolist() == [[1] * 6]
    # A bias on the repulsive channel brings the repulsion forward again.
    assert mutex_watershed(affinities, [[0, 1], [0, 3]], attractive=1, bias=[0.0, 0.9]).tolist() == [[1, 1, 1, 2, 2, 2]]


def test_hand_computed_signed_row_and_singletons():
    # Signed: weight = affinity + bias; 0.9 - 0.5 > 0 merges, 0.1 - 0.5 < 0 separates.
    affinities = np.array([[[0.9, 0.1, 0.9, 0.1, 0.1, 0.0]]])
    labels = mutex_watershed(affinities, [[0, 1]], bias=-0.5)
    # pixels 4 and 5 join nothing: each is its own object, numbered in C order
    assert labels.tolist() == [[1, 1, 2, 2, 3, 4]]


def test_numbering_follows_first_pixel_and_mask_is_zero():
    affinities = np.zeros((2, 3, 3))
    affinities[0] = 1.0  # vertical links
    mask = np.ones((3, 3), bool)
    mask[:, 1] = False
    labels = mutex_watershed(affinities, [[1, 0], [0, 1]], bias=-0.5, mask=mask)
    # columns 0 and 2 are objects 1 and 2 (first pixels (0,0) and (0,2)); column 1 is masked
    assert labels.tolist() == [[1, 0, 2], [1, 0, 2], [1, 0, 2]]


def test_strides_keep_the_lattice_of_the_storing_pixel():
    # one attractive chain; a single repulsive edge at x, offset +2: it only
    # counts when x is a multiple of the stride 3
    for x in range(4):
        affinities = np.zeros((2, 1, 6))
        affinities[0] = 0.5
        affinities[1, 0, x] = -0.9
        labels = mutex_watershed(affinities, [[0, 1], [0, 2]], strides=[1, 3])
        assert (labels.max() > 1) == (x % 3 == 0), x


@pytest.mark.parametrize("shape", [(24, 28), (8, 14, 14)])
def test_signed_mode_equals_mwatershed(shape):
    rng = np.random.default_rng(len(shape))
    ndim = len(shape)
    unit = np.eye(ndim, dtype=int).tolist()
    long_range = [[2] + [0] * (ndim - 1), [0] * (ndim - 1) + [3], [0, 4] + [0] * (ndim - 2)]
    offsets = unit + long_range
    bias = np.array([-0.3] * ndim + [-0.6] * 3)
    for trial in range(2):
        affinities = rng.random((len(offsets),) + shape)
        expected = mwatershed.agglom(affinities + bias.reshape((-1,) + (1,) * ndim), offsets)
        assert same_partition(mutex_watershed(affinities, offsets, bias=bias), singletons_apart(expected))
        strided = mwatershed.agglom(
            affinities + bias.reshape((-1,) + (1,) * ndim), offsets, strides=[[1] * ndim] * ndim + [[2] * ndim] * 3
        )
        mine = mutex_watershed(affinities, offsets, bias=bias, strides=[2] * ndim)
        assert same_partition(mine, singletons_apart(strided))
        # the strides matter here: without them the partition differs
        assert not same_partition(mine, singletons_apart(expected))


@pytest.mark.parametrize("shape", [(20, 24), (8, 12, 12)])
def test_classic_mode_equals_elf_mutex_watershed(shape):
    elf_mws = pytest.importorskip("elf.segmentation.mutex_watershed").mutex_watershed
    rng = np.random.default_rng(10 + len(shape))
    ndim = len(shape)
    unit = (-np.eye(ndim, dtype=int)).tolist()
    long_range = [[-3] + [0] * (ndim - 1), [0] * (ndim - 1) + [-3], [0] * (ndim - 2) + [-4, 4]]
    offsets = unit + long_range
    for strides, use_mask in [(None, False), ([2] * ndim, False), ([1] * (ndim - 1) + [3], False), (None, True)]:
        affinities = rng.random((len(offsets),) + shape).astype(np.float32)
        mask = rng.random(shape) > 0.3 if use_mask else None
        mine = mutex_watershed(affinities, offsets, attractive=ndim, strides=strides, mask=mask)
        # elf's input is 1 - affinity in every channel (it inverts the attractive ones itself)
        reference = elf_mws((1 - affinities).copy(), offsets, strides=strides or [1] * ndim, mask=mask)
        if mask is None:
            assert same_partition(mine, reference)
        else:
            assert np.all(mine[~mask] == 0) and np.all(mine[mask] > 0)
            assert same_partition(mine[mask], reference[mask])
        assert mine.min() >= 0 and np.array_equal(np.unique(mine[mine > 0]), np.arange(1, mine.max() + 1))


def test_randomized_strides_are_seeded():
    rng = np.random.default_rng(3)
    affinities = rng.random((4, 30, 30))
    offsets = [[1, 0], [0, 1], [4, 0], [0, 4]]
    kwargs = dict(attractive=2, strides=[2, 2], randomize_strides=True)
    first = mutex_watershed(affinities, offsets, seed=1, **kwargs)
    assert np.array_equal(first, mutex_watershed(affinities, offsets, seed=1, **kwargs))
    assert not np.array_equal(first, mutex_watershed(affinities, offsets, seed=2, **kwargs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(offsets=[[1, 0, 0], [0, 1, 0]]), "2-element"),
        (dict(offsets=[[1, 0]]), "one offset per affinity channel"),
        (dict(offsets=[[0, 0], [0, 1]]), "all zeros"),
        (dict(offsets=[[1.5, 0], [0, 1]]), "integers"),
        (dict(bias=[0.1, 0.2, 0.3]), "bias"),
        (dict(attractive=3), r"\[0, 2\]"),
        (dict(strides=[0, 1]), "positive integers"),
        (dict(strides=[1, 1, 1]), "positive integers"),
        (dict(mask=np.ones((4, 4), bool)), "spatial shape"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    arguments = dict(affinities=np.full((2, 5, 6), 0.5), offsets=[[1, 0], [0, 1]])
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        mutex_watershed(arguments.pop("affinities"), arguments.pop("offsets"), **arguments)


def test_nan_affinities_and_wrong_rank_are_refused():
    affinities = np.full((2, 5, 6), 0.5)
    affinities[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mutex_watershed(affinities, [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="2D or 3D"):
        mutex_watershed(np.zeros((2, 5)), [[1], [1]])
    assert check_offsets([[0, -1], [-3, 0]], 2).tolist() == [[0, -1], [-3, 0]]


def _lattice_reference(affinities, offsets, bias, strides, stride_channels, mask=None):
    """Signed mwatershed with every dropped edge zeroed by hand (no native strides): the slow, obvious way."""
    ndim = affinities.ndim - 1
    weights = affinities + np.asarray(bias, float).reshape((-1,) + (1,) * ndim)
    on_lattice = np.zeros(affinities.shape[1:], bool)
    on_lattice[tuple(slice(None, None, s) for s in strides)] = True
    for c in np.flatnonzero(stride_channels):
        weights[c][~on_lattice] = 0.0
    if mask is not None:
        for c, offset in enumerate(offsets):
            # the neighbour's mask value, False where it falls outside
            neighbour = np.zeros_like(mask)
            src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, mask.shape))
            dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, mask.shape))
            neighbour[src] = mask[dst]
            weights[c][~(mask & neighbour)] = 0.0
    labels = singletons_apart(mwatershed.agglom(weights, offsets))
    if mask is not None:
        labels[~mask] = 0
    return labels


@pytest.mark.parametrize("shape", [(30, 34), (10, 16, 18)])
def test_strides_native_or_not_equal_zeroed_edges(shape):
    # Negative offsets that are multiples of the stride let mwatershed build
    # only the kept edges itself; -3 with stride 2 does not (zeroed instead).
    # Both must give what zeroing the dropped edges by hand gives.
    rng = np.random.default_rng(7 + len(shape))
    ndim = len(shape)
    unit = (-np.eye(ndim, dtype=int)).tolist()
    cases = {
        "native": [[-4] + [0] * (ndim - 1), [0] * (ndim - 1) + [-2], [0] * (ndim - 2) + [-2, 4]],
        "zeroed": [[-3] + [0] * (ndim - 1), [0] * (ndim - 1) + [-2], [0] * (ndim - 2) + [2, -4]],
    }
    for name, long_range in cases.items():
        offsets = unit + long_range
        bias = [-0.35] * ndim + [-0.55] * 3
        stride_channels = np.array([False] * ndim + [True] * 3)
        for use_mask in (False, True):
            affinities = rng.random((len(offsets),) + shape).astype(np.float32)
            mask = rng.random(shape) > 0.2 if use_mask else None
            mine = mutex_watershed(affinities, offsets, bias=bias, strides=[2] * ndim, mask=mask)
            reference = _lattice_reference(affinities.astype(np.float64), offsets, bias, [2] * ndim, stride_channels, mask)
            assert same_partition(mine, reference), (name, use_mask)
            assert np.array_equal(mine == 0, reference == 0)


def test_entries_whose_neighbour_is_outside_do_not_matter():
    # Signed mode without mask or strides hands mwatershed the weights as they
    # are: entries linking to a pixel outside the array must be ignored, so
    # wild values there cannot change the result.
    rng = np.random.default_rng(11)
    offsets = [[-1, 0], [0, -1], [-3, 0], [0, 3]]
    affinities = rng.random((4, 20, 22))
    first = mutex_watershed(affinities, offsets, bias=-0.5)
    wild = affinities.copy()
    wild[0, 0, :] = 50.0
    wild[1, :, 0] = -50.0
    wild[2, :3, :] = 50.0
    wild[3, :, -3:] = -50.0
    assert np.array_equal(first, mutex_watershed(wild, offsets, bias=-0.5))
