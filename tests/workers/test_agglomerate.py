"""Tests of workers.agglomerate: RAG, merge levels, silencing, epsilon merges."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import waterz
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from workers import agglomerate as agg
from workers.agglomerate import (
    SCORING_FUNCTIONS,
    agglomerate_block,
    epsilon_agglomerate,
    prebuilt_scoring_functions,
    rag_edges,
    scoring_function,
    silence_stdout,
)

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


def cube_grid(shape: tuple[int, int, int], cube: int) -> np.ndarray:
    """Fragments tiling ``shape`` with cubes of side ``cube``, ids 1..n."""
    counts = [s // cube for s in shape]
    z, y, x = np.meshgrid(*(np.arange(s) // cube for s in shape), indexing="ij")
    return (z * counts[1] * counts[2] + y * counts[2] + x + 1).astype(np.uint64)


def smooth_affinities(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Random affinities in [0, 1], smoothed so that boundaries differ."""
    rng = np.random.default_rng(seed)
    affs = rng.random((3, *shape)).astype(np.float32)
    affs = ndimage.gaussian_filter(affs, (0, 1.5, 1.5, 1.5))
    affs -= affs.min()
    affs /= affs.max()
    return affs.astype(np.float32)


@pytest.fixture(scope="module")
def grid_case() -> tuple[np.ndarray, np.ndarray]:
    """A 6x8x8 grid of 2-voxel cubes (3*4*4 = 48 fragments) and affinities."""
    shape = (6, 8, 8)
    return smooth_affinities(shape, seed=1), cube_grid(shape, 2)


# ---------------------------------------------------------------------------
# rag_edges
# ---------------------------------------------------------------------------

# z=0 and z=1 of a (2, 2, 3) volume; the pairs were worked out by hand
HAND_LABELS = np.array(
    [
        [[1, 1, 2], [3, 0, 2]],
        [[4, 4, 2], [3, 3, 5]],
    ],
    dtype=np.uint64,
)
HAND_PAIRS = [(1, 2), (1, 3), (1, 4), (2, 4), (2, 5), (3, 4), (3, 5)]


def test_rag_edges_hand_made() -> None:
    u, v = rag_edges(HAND_LABELS)
    assert u.dtype == np.uint64 and v.dtype == np.uint64
    assert list(zip(u.tolist(), v.tolist())) == HAND_PAIRS


def test_rag_edges_large_ids_keep_order_and_values() -> None:
    big = {0: 0, 1: 2**63 + 5, 2: 10**12 + 3, 3: 10**12, 4: 7, 5: 2**64 - 1}
    table = np.array([big[k] for k in range(6)], dtype=np.uint64)
    u, v = rag_edges(table[HAND_LABELS])
    expected = sorted(
        tuple(sorted((big[a], big[b]))) for a, b in HAND_PAIRS
    )
    assert list(zip(u.tolist(), v.tolist())) == expected


@pytest.mark.parametrize(
    "labels",
    [
        np.zeros((2, 3, 4), np.uint64),
        np.full((2, 3, 4), 9, np.uint64),
        np.zeros((0, 3, 4), np.uint64),
        np.array([[[1, 0, 2]]], np.uint64),  # separated by background
    ],
)
def test_rag_edges_without_edges(labels: np.ndarray) -> None:
    u, v = rag_edges(labels)
    assert u.size == v.size == 0
    assert u.dtype == v.dtype == np.uint64


def brute_force_pairs(labels: np.ndarray) -> np.ndarray:
    """The distinct (smaller, larger) label pairs on face-adjacent voxels.

    Rows of an ``(n, 2)`` uint64 array, sorted; background (0) left out.
    Written independently of the module: one numpy comparison per axis.
    """
    pairs = [np.zeros((0, 2), np.uint64)]
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)[1:].reshape(-1)
        b = np.moveaxis(labels, axis, 0)[:-1].reshape(-1)
        keep = (a != b) & (a != 0) & (b != 0)
        pairs.append(np.stack([np.minimum(a, b)[keep], np.maximum(a, b)[keep]], 1))
    return np.unique(np.concatenate(pairs), axis=0)


def random_labels(
    shape: tuple[int, int, int], num_ids: int, seed: int, runs: int = 3
) -> np.ndarray:
    """Labels with runs along x (as fragments have), large ids, some zeros.

    The ids are spread over the whole uint64 range, in random order (so not
    in order of first appearance), some above 2**32 and next to 2**64.
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 2**64 - 1, size=num_ids, dtype=np.uint64)
    small = slice(num_ids // 4)
    ids[small] = (ids[small] >> np.uint64(40)) | np.uint64(1)  # some small ones too
    ids[-1] = np.uint64(2**64 - 1)
    ids = np.unique(ids)
    rng.shuffle(ids)
    count = int(np.prod(shape)) // runs + 1
    labels = np.repeat(rng.choice(ids, size=count), runs)[: int(np.prod(shape))]
    labels[rng.random(labels.size) < 0.05] = 0
    return labels.reshape(shape)


@pytest.mark.parametrize(
    ("shape", "num_ids", "runs"),
    [
        ((5, 7, 9), 12, 3),
        ((1, 1, 40), 5, 2),
        ((40, 1, 1), 5, 1),
        ((1, 30, 1), 5, 1),
        # more ids and pairs than the kernels' first hash tables hold
        ((12, 40, 50), 9000, 1),
        ((6, 30, 40), 20000, 2),
        # a row too long for the first table of pairs
        ((2, 2, 12000), 3000, 2),
    ],
)
def test_rag_edges_match_brute_force(
    shape: tuple[int, int, int], num_ids: int, runs: int
) -> None:
    labels = random_labels(shape, num_ids, seed=num_ids, runs=runs)
    expected = brute_force_pairs(labels)
    assert expected.shape[0] > 0
    u, v = rag_edges(labels)
    assert u.dtype == v.dtype == np.uint64
    np.testing.assert_array_equal(np.stack([u, v], 1), expected)


def test_rag_edges_of_a_strided_view() -> None:
    labels = random_labels((8, 20, 30), 50, seed=3)
    view = labels[::2, 3:17, ::-3]
    u, v = rag_edges(view)
    np.testing.assert_array_equal(np.stack([u, v], 1), brute_force_pairs(view))


@pytest.mark.parametrize("seed", [0, 1])
def test_relabel_ranks_the_ids(seed: int) -> None:
    """Consecutive ids in the order of the original ones, 0 kept as 0."""
    labels = random_labels((10, 30, 40), 7000, seed=seed)
    relabeled, original = agg._relabel(labels)
    present = np.unique(labels)
    np.testing.assert_array_equal(original, np.union1d(np.zeros(1, np.uint64), present))
    np.testing.assert_array_equal(relabeled, np.searchsorted(original, labels))
    assert relabeled.dtype == np.uint64 and relabeled.flags.c_contiguous
    # without background, 0 is still original[0] and no voxel gets it
    filled = np.where(labels == 0, original[1], labels)
    relabeled, original = agg._relabel(filled)
    assert original[0] == 0 and relabeled.min() == 1
    np.testing.assert_array_equal(original[relabeled], filled)


# ---------------------------------------------------------------------------
# scoring functions
# ---------------------------------------------------------------------------


def test_scoring_function_names() -> None:
    assert scoring_function("mean") == (
        "OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>"
    )
    assert scoring_function("hist_quant_75") == (
        "OneMinus<HistogramQuantileAffinity<RegionGraphType,75,ScoreValue,256,false>>"
    )
    assert {"max", "min"} <= set(SCORING_FUNCTIONS)
    with pytest.raises(ValueError, match="hist_quant_50"):
        scoring_function("median")
    with pytest.raises(ValueError):
        scoring_function("hist_quant_12")


@pytest.mark.parametrize("queue", [0, 256])
def test_prebuilt_scoring_functions(queue: int) -> None:
    prebuilt = prebuilt_scoring_functions(queue)
    expected_quantiles = {f"hist_quant_{q}" for q in range(10, 100, 5)}
    assert set(prebuilt) == {"mean"} | expected_quantiles


def test_failed_compilation_is_a_clear_error(
    grid_case: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scoring function that is not prebuilt needs a compiler; say so."""
    affs, fragments = grid_case

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise ImportError("no witty here")

    monkeypatch.setattr(agg.waterz, "agglomerate", no_compiler)
    with pytest.raises(RuntimeError, match="prebuilt.*mean"):
        agglomerate_block(affs, fragments, scoring="max")


# ---------------------------------------------------------------------------
# agglomerate_block
# ---------------------------------------------------------------------------


def test_edges_are_exactly_the_rag(grid_case: tuple[np.ndarray, np.ndarray]) -> None:
    affs, fragments = grid_case
    u, v, score = agglomerate_block(affs, fragments)
    ru, rv = rag_edges(fragments)
    assert u.dtype == v.dtype == np.uint64 and score.dtype == np.float32
    np.testing.assert_array_equal(u, ru)
    np.testing.assert_array_equal(v, rv)
    assert np.all(np.isfinite(score))
    assert np.all((score >= 0) & (score <= 1))


def components(
    num_nodes: int, u: np.ndarray, v: np.ndarray, keep: np.ndarray
) -> np.ndarray:
    """Connected component of each node, over the edges where ``keep``."""
    graph = sparse.coo_matrix(
        (np.ones(int(keep.sum())), (u[keep], v[keep])), shape=(num_nodes, num_nodes)
    )
    return csgraph.connected_components(graph, directed=False)[1]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings of the same items group them identically."""
    pairs = np.unique(np.stack([a, b]), axis=1).shape[1]
    return pairs == np.unique(a).size == np.unique(b).size


@pytest.mark.parametrize("queue", [0, 256])
@pytest.mark.parametrize("scoring", ["mean", "hist_quant_50"])
def test_thresholded_scores_reproduce_waterz(
    grid_case: tuple[np.ndarray, np.ndarray], scoring: str, queue: int
) -> None:
    """Components of edges scoring below t are waterz's segmentation at t."""
    affs, fragments = grid_case
    u, v, score = agglomerate_block(affs, fragments, scoring, discretize_queue=queue)
    # thresholds on bin boundaries, where a bin queue stops exactly
    thresholds = sorted(
        {float(np.floor(np.quantile(score, q) * 256) / 256) for q in (0.2, 0.5, 0.8)}
    )
    assert not np.isin(score, np.float32(thresholds)).any()

    with silence_stdout():
        segmentations = [
            seg.copy()
            for seg in waterz.agglomerate(
                affs,
                thresholds=thresholds,
                fragments=fragments.copy(),
                scoring_function=scoring_function(scoring),
                discretize_queue=queue,
            )
        ]

    num_fragments = int(fragments.max())
    ids = np.arange(1, num_fragments + 1)
    # the region waterz put each fragment in (fragments are whole cubes)
    first_voxel = ndimage.find_objects(fragments.astype(np.intp))
    for threshold, segmentation in zip(thresholds, segmentations):
        ours = components(num_fragments + 1, u, v, score < threshold)[ids]
        theirs = np.array([segmentation[sl].flat[0] for sl in first_voxel])
        assert 1 < np.unique(theirs).size < num_fragments  # not trivial
        assert same_partition(ours, theirs), threshold


def test_deterministic(grid_case: tuple[np.ndarray, np.ndarray]) -> None:
    affs, fragments = grid_case
    first = agglomerate_block(affs, fragments, "mean")
    second = agglomerate_block(affs, fragments, "mean")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_ids_are_mapped_back(grid_case: tuple[np.ndarray, np.ndarray]) -> None:
    """Large, sparse ids give the same graph as their ranks, under their ids."""
    affs, fragments = grid_case
    table = 10**12 + 7 * np.arange(int(fragments.max()) + 1, dtype=np.uint64)
    table[0] = 0
    u, v, score = agglomerate_block(affs, fragments)
    bu, bv, bscore = agglomerate_block(affs, table[fragments])
    np.testing.assert_array_equal(bu, table[u])
    np.testing.assert_array_equal(bv, table[v])
    np.testing.assert_array_equal(bscore, score)


def test_inputs_untouched_and_uint8(grid_case: tuple[np.ndarray, np.ndarray]) -> None:
    affs, fragments = grid_case
    affs8 = np.round(affs * 255).astype(np.uint8)
    fragments_before = fragments.copy()
    affs8_before = affs8.copy()
    u, v, score = agglomerate_block(affs8, fragments, "mean", discretize_queue=0)
    np.testing.assert_array_equal(fragments, fragments_before)
    np.testing.assert_array_equal(affs8, affs8_before)
    fu, fv, fscore = agglomerate_block(
        affs8.astype(np.float32) / 255, fragments, "mean", discretize_queue=0
    )
    np.testing.assert_array_equal(u, fu)
    np.testing.assert_allclose(score, fscore, atol=1e-6)


@pytest.mark.parametrize(
    "fragments",
    [np.zeros((2, 3, 4), np.uint64), np.full((2, 3, 4), 10**12, np.uint64)],
)
def test_block_without_edges(fragments: np.ndarray) -> None:
    affs = np.ones((3, *fragments.shape), np.float32)
    u, v, score = agglomerate_block(affs, fragments)
    assert u.size == v.size == score.size == 0
    assert u.dtype == np.uint64 and score.dtype == np.float32


def test_scores_follow_boundary_affinities() -> None:
    """Three fragments in a row: the strong boundary merges first."""
    fragments = np.array([[[1, 1, 2, 2, 3, 3]]], dtype=np.uint64)
    affs = np.ones((3, 1, 1, 6), np.float32)
    affs[2, 0, 0, 2] = 0.9  # between 1 and 2
    affs[2, 0, 0, 4] = 0.2  # between 2 and 3
    u, v, score = agglomerate_block(affs, fragments, "mean", discretize_queue=0)
    assert list(zip(u.tolist(), v.tolist())) == [(1, 2), (2, 3)]
    np.testing.assert_allclose(score, [0.1, 0.8], atol=1e-6)


# ---------------------------------------------------------------------------
# merge history -> edge scores
# ---------------------------------------------------------------------------


def random_history(
    num_fragments: int, num_nodes: int, num_merges: int, seed: int
) -> list[dict[str, object]]:
    """A merge history of regions 1..num_fragments-1, shaped like waterz's.

    Two live regions merge into a region named by one of their ids or by a
    new id (from num_fragments..num_nodes-1), with scores in random order (as
    a bin queue gives); now and then a region "merges" with itself, which
    must be skipped.
    """
    rng = np.random.default_rng(seed)
    live = list(range(1, num_fragments))
    fresh = list(range(num_fragments, num_nodes))
    history: list[dict[str, object]] = []
    while len(history) < num_merges and len(live) > 1:
        if rng.random() < 0.05:
            a = b = c = int(rng.choice(live))
        else:
            i, j = rng.choice(len(live), size=2, replace=False)
            a, b = live[i], live[j]
            live.remove(a)
            live.remove(b)
            if fresh and rng.random() < 0.3:
                c = fresh.pop()
            else:
                c = a if rng.random() < 0.5 else b
            live.append(c)
        history.append({"a": a, "b": b, "c": c, "score": float(rng.random())})
    return history


def replayed_scores(
    num_nodes: int, u: np.ndarray, v: np.ndarray, history: list[dict[str, object]]
) -> np.ndarray:
    """The oracle: a plain union-find, and after every merge a look at every edge."""
    parent = list(range(num_nodes))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    region = list(range(num_nodes))  # waterz's region id -> a node in it
    scores = np.full(u.size, np.inf, np.float32)
    done = np.zeros(u.size, bool)
    for merge in history:
        first, second = find(region[merge["a"]]), find(region[merge["b"]])
        if first == second:
            continue
        parent[second] = first
        region[merge["c"]] = first
        for k in np.flatnonzero(~done):
            if find(int(u[k])) == find(int(v[k])):
                scores[k] = np.float32(merge["score"])
                done[k] = True
    return scores


@pytest.mark.parametrize(
    ("num_nodes", "num_edges", "num_merges", "seed"),
    [(15, 30, 7, 0), (60, 120, 25, 1), (90, 300, 59, 2), (240, 600, 200, 3)],
)
def test_merge_scores_match_a_replayed_history(
    num_nodes: int, num_edges: int, num_merges: int, seed: int
) -> None:
    rng = np.random.default_rng(100 + seed)
    num_fragments = 2 * num_nodes // 3  # the other ids name merged regions
    pairs = np.sort(rng.integers(1, num_fragments, (num_edges, 2)), 1)
    pairs = np.unique(pairs[pairs[:, 0] < pairs[:, 1]], axis=0).astype(np.uint64)
    u, v = pairs[:, 0], pairs[:, 1]
    history = random_history(num_fragments, num_nodes, num_merges, seed)
    expected = replayed_scores(num_nodes, u, v, history)
    scores = agg._merge_scores(num_nodes, u, v, history)
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, expected)
    # not trivially equal: edges join at many different merges
    assert np.unique(expected[np.isfinite(expected)]).size >= 3
    if num_merges < num_fragments - 2:
        assert np.isinf(expected).any()


def test_merge_scores_by_hand() -> None:
    """A chain 1-2-3-4 and an edge 1-4 that closes it; 5 is never merged."""
    u = np.array([1, 1, 2, 3, 4], np.uint64)
    v = np.array([2, 4, 3, 4, 5], np.uint64)
    history = [
        {"a": 3, "b": 4, "c": 3, "score": 0.1},  # {3, 4} is region 3
        {"a": 1, "b": 1, "c": 1, "score": 0.9},  # skipped
        {"a": 1, "b": 2, "c": 2, "score": 0.3},  # {1, 2} is region 2
        {"a": 2, "b": 3, "c": 2, "score": 0.2},  # all of 1..4
    ]
    scores = agg._merge_scores(6, u, v, history)
    np.testing.assert_array_equal(
        scores, np.float32([0.3, 0.2, 0.2, 0.1, np.inf])
    )


def test_merge_scores_reject_unknown_regions() -> None:
    u, v = np.array([1], np.uint64), np.array([2], np.uint64)
    with pytest.raises(IndexError):
        agg._merge_scores(3, u, v, [{"a": 1, "b": 7, "c": 1, "score": 0.5}])
    assert np.isinf(agg._merge_scores(3, u, v, [])).all()


# ---------------------------------------------------------------------------
# silence_stdout
# ---------------------------------------------------------------------------

SILENCE_SCRIPT = textwrap.dedent(
    """
    import ctypes, os, sys
    from workers.agglomerate import silence_stdout

    libc = ctypes.CDLL(None)
    os.write(1, b"before\\n")
    libc.printf(b"c-before\\n")  # buffered by libc: must come out first
    with silence_stdout():
        os.write(1, b"hidden-fd\\n")
        libc.printf(b"hidden-c\\n")
        print("hidden-py")
        os.write(2, b"visible-err\\n")
    try:
        with silence_stdout():
            raise KeyError("boom")
    except KeyError:
        pass
    os.write(1, b"after\\n")
    print("after-py", flush=True)
    """
)


def test_silence_stdout_in_a_subprocess() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SILENCE_SCRIPT],
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    assert done.stdout.decode().split() == ["before", "c-before", "after", "after-py"]
    assert "visible-err" in done.stderr.decode()


def test_silence_stdout_nested_and_threaded(capfd: pytest.CaptureFixture) -> None:
    """Overlapping uses restore the descriptor once, after the last one."""
    barrier = threading.Barrier(4)

    def use() -> None:
        with silence_stdout():
            barrier.wait()
            with silence_stdout():
                os.write(1, b"hidden\n")

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.write(1, b"shown\n")
    assert capfd.readouterr().out == "shown\n"


def test_silence_stdout_can_silence_stderr(capfd: pytest.CaptureFixture) -> None:
    with silence_stdout(stderr=True):
        os.write(2, b"hidden\n")
    os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"


# ---------------------------------------------------------------------------
# epsilon_agglomerate
# ---------------------------------------------------------------------------


def line_case() -> tuple[np.ndarray, np.ndarray]:
    """Fragments 7 | 5 | 9 | 0 in a row; 7-5 strong boundary, 5-9 weak."""
    fragments = np.array([[[7, 7, 5, 5, 9, 9, 0]]], dtype=np.uint64)
    affs = np.ones((3, 1, 1, 7), np.float32)
    affs[2, 0, 0, 2] = 0.95  # between 7 and 5: score 0.05
    affs[2, 0, 0, 4] = 0.05  # between 5 and 9: score 0.95
    return affs, fragments


@pytest.mark.parametrize("scoring", ["mean", "hist_quant_50"])
def test_epsilon_agglomerate_merges_strong_boundary(scoring: str) -> None:
    affs, fragments = line_case()
    merged = epsilon_agglomerate(affs, fragments, epsilon=0.5, scoring=scoring)
    assert merged.dtype == np.uint64
    assert merged.tolist() == [[[5, 5, 5, 5, 9, 9, 0]]]
    assert fragments.tolist() == [[[7, 7, 5, 5, 9, 9, 0]]]  # untouched


def test_epsilon_agglomerate_keeps_large_ids() -> None:
    affs, fragments = line_case()
    big = np.where(fragments > 0, fragments + 10**12, 0).astype(np.uint64)
    merged = epsilon_agglomerate(affs, big, epsilon=0.5)
    assert merged.tolist() == [[[10**12 + 5] * 4 + [10**12 + 9] * 2 + [0]]]


def test_epsilon_agglomerate_below_every_score() -> None:
    affs, fragments = line_case()
    merged = epsilon_agglomerate(affs, fragments, epsilon=0.01)
    np.testing.assert_array_equal(merged, fragments)


def test_epsilon_zero_returns_a_copy() -> None:
    affs, fragments = line_case()
    merged = epsilon_agglomerate(affs, fragments, epsilon=0.0)
    np.testing.assert_array_equal(merged, fragments)
    assert merged is not fragments
    merged[...] = 1
    assert fragments[0, 0, 0] == 7
